"""Full-size ResNet-50, DenseNet-121 and MobileNetV3-Large (torchvision's shapes, random weights): every
node of the relevance path covered, relevance equal to input × gradient with gates detached and kinks
aligned, no division — for both exporters, BatchNorm folded and kept. Opt-in: ``pytest --run-slow``
(about 5 minutes on 2 cores); the same checks as ``tools/coverage_fullsize.py``."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))

from coverage_fullsize import EXPORTERS, MODELS, build, check  # noqa: E402


@pytest.fixture(scope="module")
def network():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build(name)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("fold", [True, False], ids=["fold", "keep"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_full_size_network(network, tmp_path, name, exporter, fold):
    row = check(name, exporter, fold, tmp_path, batch=2, model=network(name))
    print(row)
    assert row["coverage"] == 100.0
    assert not row["divisions"]
    assert max(row["error_aligned"]) < 1e-4, row
    assert max(row["error_plain"]) < 0.05, row  # only kink flips separate the two

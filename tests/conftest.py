"""Shared pytest setup: slow-test opt-in, deterministic torch, cached ONNX exports.

Options / markers
-----------------
``--run-slow``: run tests marked ``@pytest.mark.slow`` (skipped otherwise).

Fixtures
--------
``reference_model(name, seed=0) -> nn.Module`` (session)
    Builds each reference model (see ``reference_models.REFERENCE_MODELS``)
    once per session and returns the cached eval-mode instance.  Do not mutate
    it.

``exported_model(name, exporter="torchscript", fold_batchnorm=True, seed=0) -> ExportedModel`` (session)
    Exports each (name, exporter, fold_batchnorm, seed) once per test run into a
    ``tmp_path_factory`` directory (verified against torch in ONNX Runtime for
    batch 1 and 3 by ``exporting.export_onnx``) and returns an
    ``ExportedModel`` with ``.path`` (pathlib.Path of the ``.onnx``), ``.model``
    (the torch module), ``.name``, ``.exporter``, ``.fold_batchnorm``,
    ``.input_shape`` (C, H, W) and ``.example(batch, seed)`` (float32 input).

Determinism: ``torch.set_num_threads(2)`` for the session, and
``torch.manual_seed(0)`` / ``np.random.seed(0)`` before every test.
"""

from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="run tests marked @pytest.mark.slow",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests, opt-in with --run-slow")
    try:
        import torch
    except ImportError:  # torch is a dev extra; tests that need it import it themselves
        return
    torch.set_num_threads(2)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: use --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_seeds():
    np.random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield


@dataclass(frozen=True)
class ExportedModel:
    name: str
    exporter: str
    fold_batchnorm: bool
    seed: int
    path: pathlib.Path
    model: object  # torch.nn.Module, eval mode
    input_shape: tuple[int, int, int]

    def example(self, batch: int = 2, seed: int = 0) -> np.ndarray:
        from reference_models import example_input

        return example_input(self.name, batch, seed)


@pytest.fixture(scope="session")
def reference_model():
    from reference_models import make_model

    cache: dict[tuple[str, int], object] = {}

    def get(name: str, seed: int = 0):
        key = (name, seed)
        if key not in cache:
            cache[key] = make_model(name, seed=seed)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, reference_model):
    from exporting import export_onnx
    from reference_models import REFERENCE_MODELS, example_input

    root = tmp_path_factory.mktemp("onnx_exports")
    cache: dict[tuple[str, str, bool, int], ExportedModel] = {}

    def get(name: str, exporter: str = "torchscript", fold_batchnorm: bool = True,
            seed: int = 0) -> ExportedModel:
        key = (name, exporter, bool(fold_batchnorm), seed)
        if key not in cache:
            model = reference_model(name, seed)
            fold = "fold" if fold_batchnorm else "keep"
            path = root / f"{name}-s{seed}-{exporter}-{fold}.onnx"
            export_onnx(model, example_input(name, 2, seed=1234), path, exporter,
                        fold_batchnorm=bool(fold_batchnorm))
            cache[key] = ExportedModel(name, exporter, bool(fold_batchnorm), seed, path, model,
                                       REFERENCE_MODELS[name].input_shape)
        return cache[key]

    return get

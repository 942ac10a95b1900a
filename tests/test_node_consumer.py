"""A compiled model consumed from JavaScript: ``examples/node/explain.mjs`` on onnxruntime-node, checked
against the Python runner on the shipped model and photos.

Opt-in (``--run-slow``): it needs Node.js and npm, and installs the example's locked dependencies from
the npm registry (``npm ci``, about 300 MB) into a temporary copy of ``examples/node``.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from rlrp_onnx import compile_model
from rlrp_onnx.cli import DEMO_IMAGES, DEMO_MODEL
from rlrp_onnx.loading import save_model
from rlrp_onnx.preprocess import get_preset, prepare
from rlrp_onnx.runtime import create_session, run_explainer
from rlrp_onnx.visualize import heatmap_rgb

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "node"
EGYPTIAN_CAT, ESPRESSO, DRILLING_PLATFORM = 285, 967, 540

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def explain_mjs(tmp_path_factory) -> pathlib.Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("needs Node.js and npm")
    folder = tmp_path_factory.mktemp("node-example")
    for name in ("package.json", "package-lock.json", "explain.mjs"):
        shutil.copy(EXAMPLE / name, folder / name)
    install = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=folder,
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.fail(f"npm ci in {folder} failed:\n{install.stderr[-2000:]}")
    return folder / "explain.mjs"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The shipped model compiled with either form of ``rlrp_target``."""
    folder = tmp_path_factory.mktemp("compiled")
    paths = {}
    for form in ("optional", "required"):
        paths[form] = folder / f"lite0.{form}.onnx"
        save_model(compile_model(DEMO_MODEL, target_input=form), paths[form], source=DEMO_MODEL)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[np.ndarray, pathlib.Path]:
    batch, _ = prepare(sorted(DEMO_IMAGES.iterdir()), get_preset("efficientnet-lite0"))
    path = tmp_path_factory.mktemp("input") / "photos.npy"
    np.save(path, batch)
    return batch, path


def node(script: pathlib.Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["node", script, *map(str, args)], capture_output=True, text=True, timeout=300)


def printed_classes(stdout: str) -> list[int]:
    return [int(line.split()[3]) for line in stdout.splitlines() if line.startswith("sample ")]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("form", ["optional", "required"])
def test_node_explains_the_photos_as_the_python_runner_does(explain_mjs, compiled, photos, tmp_path, form):
    batch, path = photos
    result = node(explain_mjs, compiled[form], path, "--relevance", tmp_path / "relevance.npy",
                  "--heatmaps", tmp_path / "photo")
    assert result.returncode == 0, result.stderr

    expected = run_explainer(create_session(compiled[form], device="cpu"), batch)
    assert printed_classes(result.stdout) == expected.classes.tolist() == [EGYPTIAN_CAT, ESPRESSO, DRILLING_PLATFORM]
    relevance = np.load(tmp_path / "relevance.npy")
    assert relevance.shape == batch.shape
    assert relative_difference(relevance, expected.relevance) < 1e-5
    for index, sample in enumerate(expected.relevance):
        drawn = np.asarray(Image.open(tmp_path / f"photo_{index}.png"), dtype=int)
        assert np.abs(drawn - heatmap_rgb(sample)).max() <= 1


def test_node_explains_a_chosen_class_with_a_required_target_input(explain_mjs, compiled, photos, tmp_path):
    batch, path = photos
    result = node(explain_mjs, compiled["required"], path, "--target", 5, "--relevance", tmp_path / "r.npy")
    assert result.returncode == 0, result.stderr
    assert printed_classes(result.stdout) == [5, 5, 5]
    expected = run_explainer(create_session(compiled["required"], device="cpu"), batch, targets=5)
    assert relative_difference(np.load(tmp_path / "r.npy"), expected.relevance) < 1e-5


def assert_one_line_failure(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def test_node_refuses_a_target_that_onnxruntime_node_would_ignore(explain_mjs, compiled, photos):
    # onnxruntime-node feeds only the inputs without a default value: a feed of the optional
    # rlrp_target would be dropped silently and the arg-max explained instead.
    result = node(explain_mjs, compiled["optional"], photos[1], "--target", 5)
    assert_one_line_failure(result, str(compiled["optional"]), "--target-input required")


def test_node_bad_inputs_get_one_line_errors(explain_mjs, compiled, photos, tmp_path):
    doubles = tmp_path / "doubles.npy"
    np.save(doubles, photos[0].astype(np.float64))
    assert_one_line_failure(node(explain_mjs, compiled["required"], doubles), str(doubles), "float32")
    assert_one_line_failure(node(explain_mjs, DEMO_MODEL, photos[1]), str(DEMO_MODEL), "not a compiled")
    assert_one_line_failure(node(explain_mjs, compiled["required"], DEMO_MODEL), str(DEMO_MODEL), "not a .npy")
    assert_one_line_failure(node(explain_mjs, compiled["required"], photos[1], "--target", "cat"), "--target")

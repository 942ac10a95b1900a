"""The compiled R-LRP relevance equals torch input × gradient of the chosen logit (RLRP.md, "An exact oracle").

Every reference network is exported by both torch exporters, with BatchNorm folded and kept, compiled,
run by ONNX Runtime, and compared with torch autograd on the source network.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rlrp_onnx import compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT

from oracle import branch_decisions, input_times_gradient, relative_l2_error
from reference_models import SMALL_MODELS

TOLERANCE = 1e-4
VARIANTS = [(e, f) for e in ("torchscript", "dynamo") for f in (True, False)]


def run(model: onnx.ModelProto | str, feed: dict, fuse: bool = True) -> dict:
    """All outputs of ``model`` on CPU; ``fuse=False``: ONNX Runtime's basic optimisations only."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def check_compiled(exported, x, targets):
    """Compile ``exported``, run it on ``x`` and compare everything the contract promises."""
    compiled = compile_model(exported.path)
    feed = {"image": x}
    if targets is not None:
        feed[TARGET_INPUT] = np.asarray(targets, dtype=np.int64)
    out = run(compiled, feed)
    source = run(exported.path, {"image": x})
    assert np.array_equal(out["logits"], source["logits"]), "the model's own output changed"
    relevance, classes, scores = input_times_gradient(exported.model, x, targets)
    np.testing.assert_array_equal(out[CLASS_OUTPUT], classes)
    np.testing.assert_allclose(out[SCORE_OUTPUT], scores, rtol=1e-4, atol=1e-5)
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    assert np.all(errors < TOLERANCE), f"relative L2 errors {errors}"
    ops = {n.op_type for n in compiled.graph.node}
    assert not ops & {"Div", "Reciprocal"}, ops
    return compiled, errors


@pytest.mark.parametrize("exporter,fold", VARIANTS, ids=[f"{e}-{'fold' if f else 'keep'}" for e, f in VARIANTS])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_reference_networks_match_autograd(exported_model, name, exporter, fold):
    exported = exported_model(name, exporter, fold)
    x = exported.example(batch=3, seed=7)
    check_compiled(exported, x, targets=None)
    check_compiled(exported, x, targets=[3, -1, 9])


PHOTOS = ("chelsea.png", "coffee.jpg")
MODELS_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def photos():
    from rlrp_onnx.preprocess import PRESETS, prepare

    batch, _ = prepare([MODELS_DIR / "images" / name for name in PHOTOS], PRESETS["efficientnet-lite0"])
    return batch


def check_efficientnet(path, model, x, targets):
    kinks = branch_decisions(path, x)
    relevance, classes, _ = input_times_gradient(model, x, targets, kinks=kinks)
    compiled = compile_model(path)
    out = run(compiled, {"image": x, **({TARGET_INPUT: np.asarray(targets)} if targets is not None else {})})
    np.testing.assert_array_equal(out[CLASS_OUTPUT], classes)
    assert np.array_equal(out["logits"], run(path, {"image": x})["logits"])
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    plain = relative_l2_error(out[RELEVANCE_OUTPUT], input_times_gradient(model, x, targets)[0])
    print(f"{os.path.basename(path)}: error vs kink-aligned autograd {errors}, vs plain autograd {plain}")
    assert np.all(errors < TOLERANCE), errors
    assert np.all(plain < 0.05), plain  # only kink flips separate the two (see oracle.py)
    assert not {n.op_type for n in compiled.graph.node} & {"Div", "Reciprocal"}
    return out


def test_shipped_efficientnet_on_real_photos(reference_model, photos):
    out = check_efficientnet(MODELS_DIR / "efficientnet_lite0.onnx", reference_model("efficientnet_lite0"),
                             photos, targets=None)
    assert list(out[CLASS_OUTPUT]) == [285, 967]  # Egyptian cat, espresso


@pytest.mark.parametrize("exporter,fold", VARIANTS, ids=[f"{e}-{'fold' if f else 'keep'}" for e, f in VARIANTS])
def test_efficientnet_exports_on_real_photos(exported_model, photos, exporter, fold):
    exported = exported_model("efficientnet_lite0", exporter, fold)
    check_efficientnet(exported.path, exported.model, photos, targets=[281, -1])


@pytest.mark.parametrize("exporter,fold", VARIANTS, ids=[f"{e}-{'fold' if f else 'keep'}" for e, f in VARIANTS])
@pytest.mark.parametrize("name", SMALL_MODELS + ("efficientnet_lite0",))
def test_compiled_file_shares_weights(exported_model, name, exporter, fold, tmp_path):
    """No weight copies: the compiled file is within 2% of the source file's size."""
    from rlrp_onnx import save_model

    exported = exported_model(name, exporter, fold)
    out = tmp_path / "compiled.onnx"
    save_model(compile_model(exported.path), out)
    ratio = out.stat().st_size / exported.path.stat().st_size
    print(f"{name} {exporter} fold={fold}: {exported.path.stat().st_size} → {out.stat().st_size} bytes ({ratio:.4f})")
    assert ratio < 1.02

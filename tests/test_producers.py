"""Models from other producers than torch: scikit-learn through skl2onnx, Keras through tf2onnx.

scikit-learn's MLPClassifier converts to MatMul/Add layers, then Softmax → Identity (``probabilities``)
→ ArgMax → ArrayFeatureExtractor → Reshape → Cast (``label``); with skl2onnx's default ZipMap the
probabilities output is a sequence of {class: probability} maps instead. The explained quantity is the logit before
the Softmax; both outputs must stay as they were. The reference is a plain numpy re-implementation from
the fitted coefficients: input × gradient for ReLU hidden layers, the identity rule (rho·f(z)/z) for tanh
and logistic ones (shared/RLRP.md).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest

from rlrp_onnx import compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT

from oracle import relative_l2_error
from test_oracle import run

TOLERANCE = 1e-4
TINY = 1e-4  # rules/smooth.py: below it, the limit (tanh: 1) or zero (logistic: pole)
HIDDEN = {
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(np.float64)),
    "tanh": (np.tanh, lambda z: np.where(np.abs(z) < TINY, 1.0, np.tanh(z) / np.where(np.abs(z) < TINY, 1, z))),
    "logistic": (lambda z: 1 / (1 + np.exp(-z)),
                 lambda z: np.where(np.abs(z) < TINY, 0.0, 1 / (1 + np.exp(-z)) / np.where(np.abs(z) < TINY, 1, z))),
}


def numpy_rlrp(clf, x, classes):
    """(relevance, logits): rho through each layer, the hidden activation's rule as its ratio s(z)."""
    f, s = HIDDEN[clf.activation]
    a, ratios = x.astype(np.float64), []
    for w, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        z = a @ w + b
        ratios.append(s(z))
        a = f(z)
    logits = a @ clf.coefs_[-1] + clf.intercepts_[-1]
    rho = clf.coefs_[-1][:, classes].T  # [N, hidden]
    for w, ratio in zip(reversed(clf.coefs_[:-1]), reversed(ratios)):
        rho = (rho * ratio) @ w.T
    return x * rho, logits


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


@pytest.mark.parametrize("activation,zipmap", [(a, False) for a in HIDDEN] + [("relu", True)],
                         ids=list(HIDDEN) + ["relu-zipmap"])
def test_sklearn_mlp_classifier(digits, tmp_path, capsys, activation, zipmap):
    """With ``zipmap`` (skl2onnx's default) the probabilities output is a sequence of maps, and the scores
    explained are the tensor the ZipMap reads."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    from test_families import coverage

    x, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence
        clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation=activation, max_iter=150,
                            random_state=0).fit(x, y)
    assert clf.score(x, y) > 0.9
    path = tmp_path / "mlp.onnx"
    onnx.save(to_onnx(clf, x[:1], options={"zipmap": zipmap}, target_opset=17), path)
    assert coverage(capsys, path) == 100.0

    batch = x[:6]
    compiled = compile_model(path)
    targets = np.array([0, -1, 3, -1, 9, 5])
    out = run(compiled, {"X": batch, TARGET_INPUT: targets})
    source = run(path, {"X": batch})
    label, probabilities = ("output_label", "output_probability") if zipmap else ("label", "probabilities")
    assert np.array_equal(out[label], source[label]) and out[probabilities] is not None
    if not zipmap:
        assert np.array_equal(out[probabilities], source[probabilities])
    np.testing.assert_array_equal(out[label], clf.predict(batch))
    classes = np.where(targets >= 0, targets, clf.predict(batch))
    np.testing.assert_array_equal(out[CLASS_OUTPUT], classes)
    relevance, logits = numpy_rlrp(clf, batch, classes)
    np.testing.assert_allclose(out[SCORE_OUTPUT], logits[np.arange(6), classes], rtol=1e-4, atol=1e-4)
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    assert np.all(errors < TOLERANCE), errors


KERAS_SCRIPTS = {name: os.path.join(os.path.dirname(__file__), f"{name}.py") for name in ("keras_model", "keras_vit")}


def keras_exports(tmp_path, script: str):
    """Run ``tests/<script>.py`` (TensorFlow, in its own process) into ``tmp_path``."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None:
        pytest.skip("TensorFlow and tf2onnx are not installed (pip install tensorflow-cpu tf2onnx)")
    result = subprocess.run([sys.executable, KERAS_SCRIPTS[script], str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def check_keras(capsys, path, reference):
    from test_families import added_ops, coverage

    assert coverage(capsys, path) == 100.0
    compiled = compile_model(path)
    out = run(compiled, {"image": reference["x"]})
    np.testing.assert_array_equal(out["softmax"], run(path, {"image": reference["x"]})["softmax"])
    np.testing.assert_array_equal(out[CLASS_OUTPUT], reference["classes"])
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], reference["relevance"])
    assert np.all(errors < TOLERANCE), (path.name, errors)
    assert not added_ops(compiled, path) & {"Div", "Reciprocal"}


def test_keras_through_tf2onnx(tmp_path, capsys):
    """tf2onnx output: NHWC input behind a Transpose, Flatten as Shape arithmetic, swish as x·Sigmoid(x),
    hard_swish as x·Clip(x+3, 0, 6)·(1/6) (passes/hard_sigmoid.py), GELU tanh form, sigmoid SE; at
    opsets 17 and 13 (there the Flatten's Reshape is one ONNX shape inference does not follow)."""
    keras_exports(tmp_path, "keras_model")
    reference = np.load(tmp_path / "reference.npz")
    for path in (tmp_path / "keras.onnx", tmp_path / "keras_opset13.onnx"):
        check_keras(capsys, path, reference)


def test_keras_vision_transformer_through_tf2onnx(tmp_path, capsys):
    """keras.layers.MultiHeadAttention (MatMuls around a Softmax held as a gate) and LayerNormalization
    (written out by tf2onnx with Reciprocal of Sqrt, recognised by passes/layer_norm.py), at tf2onnx's
    default opset 15, at 17, and at 13 (Reshape targets that are multiples of the batch size, pinned by
    passes/reshape_targets.py)."""
    keras_exports(tmp_path, "keras_vit")
    reference = np.load(tmp_path / "vit_reference.npz")
    for opset in (13, 15, 17):
        check_keras(capsys, tmp_path / f"vit_opset{opset}.onnx", reference)

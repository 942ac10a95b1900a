"""Compiled graphs mean what the ONNX specification says: two other runtimes compute the relevance
ONNX Runtime computes.

- ``onnx.reference.ReferenceEvaluator`` runs a model with the ONNX project's NumPy implementations of the
  operator specifications: no one on this project wrote it and it shares no kernel with ONNX Runtime.
- OpenVINO (Intel's inference runtime, CPU plugin, in float32: ``INFERENCE_PRECISION_HINT`` f32, since
  on CPUs with bfloat16 units it otherwise runs models in bfloat16).

Where they agree with ONNX Runtime on a compiled model, its relevance pass relies on the ops' specified
semantics rather than on one runtime's behaviour, which is what a deployment on another runtime needs.

Models: the four small reference networks with BatchNorm kept, under R-LRP with both mask forms;
SimpleCNN under every rule and composite; every architecture family under R-LRP; and the CUDA kernel
check's small Conv/pool/Gemm classifier at opsets 11-23 in float32 and float16 under R-LRP and
epsilon_gamma_box, which covers each of the opset-dependent forms of max-pool routing; uint8 pixels cast
inside a float32 and a float16 model; scores [N, K, 1, 1].

Tolerances, relative to the largest |relevance|: 1e-5 for R-LRP in float32 (measured up to 1e-6);
1e-3 for the classical rules, whose stabilized divisions amplify the runtimes' different summation
orders (measured up to 6e-5, z^B); 1e-2 in float16, where ONNX Runtime's CPU provider computes most
float16 ops in float32 and the others in float16. A graph that relied on an op meaning something else
than its specification differs by the order of the relevance itself.

What these runtimes showed, and what changed for them:

- The reference evaluator rejected ``OneHot``'s depth as a one-element vector (under NumPy 2); it is a
  scalar now.
- OpenVINO 2026.4 reads an explicit HardSigmoid ``beta`` of 0 as the default 0.5, which made every mask
  step 1/2 at its bound (relevance off by up to 10^11); the steps use a small negative beta instead
  (``ir.STEP_BETA``). It also computes a product wrongly when a square weight is the second operand of two
  products with different transposition; the dense adjoints put the weight first
  (``rules.linear._weight_times_rho_transposed``). And it gives a ConvTranspose the wrong weights when a Conv
  reads a tensor of the same shape and values (a strided Conv with as many outputs as inputs, and its
  adjoint); such adjoints take doubled weights and halve the result (``rules.linear._transposed``).
  ``square_weights_classifier`` has all three.
- The reference evaluator's own MaxPool ``Indices`` are wrong for stride-1 pools (onnx 1.23.2 and
  1.19.0: on a 4x4 or 8x8 input, with or without pads, indices that do not point at the pooled values,
  some negative; strided pools are right). Here both outputs of its MaxPool come from
  ``max_pool_with_indices``, a plain implementation of the specification checked below against the
  pooled values and ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from rlrp_onnx import compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT

from exporting import export_onnx
from family_models import FAMILIES, family_input, make_family
from onnx_builders import make_model
from reference_models import SMALL_MODELS, example_input
from test_cuda_kernels import METHODS, _compile, _method_id, conv_classifier
from test_oracle import run

openvino = pytest.importorskip("openvino")  # a [dev] dependency

# Mask steps are HardSigmoids of slope 2**127: the product overflows to ±inf by design (tests/test_step.py),
# which numpy reports.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")


def max_pool_with_indices(x: np.ndarray, kernel_shape, strides=None, pads=None, dilations=None,
                          ceil_mode=0) -> tuple[np.ndarray, np.ndarray]:
    """2-D MaxPool as the ONNX specification defines it, with ``Indices`` into the flattened input
    (N·C·H·W, padding not counted); the first maximum in row-major window order wins."""
    (kh, kw), (sh, sw) = kernel_shape, strides or (1, 1)
    top, left, bottom, right = pads or (0, 0, 0, 0)
    dh, dw = dilations or (1, 1)
    n, c, h, w = x.shape
    rounding = np.ceil if ceil_mode else np.floor
    out_h = int(rounding((h + top + bottom - dh * (kh - 1) - 1) / sh)) + 1
    out_w = int(rounding((w + left + right - dw * (kw - 1) - 1) / sw)) + 1
    best = np.full((n, c, out_h, out_w), -np.inf, dtype=x.dtype)
    index = np.zeros(best.shape, dtype=np.int64)
    planes = (np.arange(n * c) * h * w).reshape(n, c, 1, 1)
    for i in range(kh):
        for j in range(kw):
            rows = np.arange(out_h) * sh - top + i * dh
            cols = np.arange(out_w) * sw - left + j * dw
            inside = (rows[:, None] >= 0) & (rows[:, None] < h) & (cols[None] >= 0) & (cols[None] < w)
            r, q = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
            values = np.where(inside, x[:, :, r[:, None], q[None]], -np.inf)
            wins = values > best
            best = np.where(wins, values, best)
            index = np.where(wins, planes + r[:, None] * w + q[None], index)
    return best, index


class MaxPool(OpRun):
    """The reference MaxPool, with ``max_pool_with_indices`` for both outputs."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        assert auto_pad in (None, "NOTSET", b"NOTSET") and not storage_order and x.ndim == 4
        return max_pool_with_indices(x, kernel_shape, strides, pads, dilations, ceil_mode)


OUTPUTS = [RELEVANCE_OUTPUT, CLASS_OUTPUT, SCORE_OUTPUT]


def by_reference_evaluator(compiled: onnx.ModelProto, feed: dict) -> list:
    return ReferenceEvaluator(compiled, new_ops=[MaxPool]).run(OUTPUTS, feed)


def by_openvino(compiled: onnx.ModelProto, feed: dict) -> list:
    core = openvino.Core()
    model = core.read_model(compiled.SerializeToString(), b"")
    results = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feed)
    by_name = {name: value for port, value in results.items() for name in port.get_names()}
    return [by_name[name] for name in OUTPUTS]


OTHER_RUNTIMES = {"the ONNX reference evaluator": by_reference_evaluator, "OpenVINO": by_openvino}


def assert_agree(compiled: onnx.ModelProto, feed: dict, tolerance: float) -> None:
    """Each other runtime gives ONNX Runtime's classes, and its relevance and scores within ``tolerance``
    of the largest |relevance| and |score|."""
    by_onnx_runtime = run(compiled, feed)
    relevance, classes, scores = (by_onnx_runtime[name] for name in OUTPUTS)
    assert relevance.dtype == np.float32 and np.isfinite(relevance).all()
    for runtime, run_other in OTHER_RUNTIMES.items():
        their_relevance, their_classes, their_scores = map(np.asarray, run_other(compiled, feed))
        assert np.array_equal(their_classes, classes), runtime
        assert their_relevance.shape == relevance.shape and their_relevance.dtype == np.float32, runtime
        difference = np.abs(their_relevance - relevance).max() / np.abs(relevance).max()
        assert difference <= tolerance, f"{runtime}: relevance differs by {difference:.1e} of the largest"
        assert np.abs(their_scores - scores).max() <= tolerance * np.abs(scores).max(), runtime


@pytest.mark.parametrize("name", SMALL_MODELS)
@pytest.mark.parametrize("masks", ["steps", "comparisons"])
def test_reference_networks(exported_model, name, masks):
    path = exported_model(name, "torchscript", fold_batchnorm=False).path
    assert_agree(compile_model(path, masks=masks), {"image": example_input(name, 2, seed=7)}, 1e-5)


@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_every_rule_on_simple_cnn(exported_model, method):
    path = exported_model("simple_cnn", "torchscript", fold_batchnorm=False).path
    tolerance = 1e-5 if method == ("rlrp", None) else 1e-3
    assert_agree(_compile(onnx.load(str(path)), method), {"image": example_input("simple_cnn", 2, seed=7)},
                 tolerance)


@pytest.mark.parametrize("name", FAMILIES)
def test_families(tmp_path, name):
    x = family_input(name, 2, seed=7)
    path = export_onnx(make_family(name), x, tmp_path / f"{name}.onnx", "torchscript", fold_batchnorm=False)
    assert_agree(compile_model(path), {"image": x}, 1e-5)


def square_weights_classifier() -> onnx.ModelProto:
    """x [N, 8, 8, 8] → Conv 8→8 3x3 stride 2 → Relu → Conv 8→8 3x3 → Relu → GlobalAveragePool →
    Flatten → Gemm 8→8 → Relu → Gemm → logits [N, 5]: square weights read by strided and stride-1 Convs
    and by a Gemm, whose adjoints read them too (the two OpenVINO bugs above)."""
    rng = np.random.default_rng(0)
    return make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r3"]),
         helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        {"w1": rng.normal(size=(8, 8, 3, 3)).astype(np.float32), "b1": rng.normal(size=8).astype(np.float32),
         "w2": rng.normal(size=(8, 8, 3, 3)).astype(np.float32), "b2": rng.normal(size=8).astype(np.float32),
         "w3": rng.normal(size=(8, 8)).astype(np.float32), "b3": rng.normal(size=8).astype(np.float32),
         "w4": rng.normal(size=(5, 8)).astype(np.float32), "b4": rng.normal(size=5).astype(np.float32)})


@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_square_weights(method):
    feed = {"x": np.random.default_rng(1).normal(size=(2, 8, 8, 8)).astype(np.float32)}
    tolerance = 1e-5 if method == ("rlrp", None) else 1e-3
    assert_agree(_compile(square_weights_classifier(), method), feed, tolerance)


@pytest.mark.parametrize("opset", range(11, 24))
def test_opsets_and_float16(opset):
    rng = np.random.default_rng(opset)
    for dtype, rlrp_tolerance, classical_tolerance in ((np.float32, 1e-5, 1e-3), (np.float16, 1e-2, 1e-2)):
        source = conv_classifier(opset, dtype)
        feed = {"x": rng.normal(size=(2, 3, 8, 8)).astype(dtype)}
        assert_agree(_compile(source, ("rlrp", None)), feed, rlrp_tolerance)
        assert_agree(_compile(source, (None, "epsilon_gamma_box")), feed, classical_tolerance)


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 8, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ((1, 2, 9, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 1, 7, 7), dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 1, 0], ceil_mode=1)),
    ((1, 1, 9, 9), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])),
])
def test_max_pool_with_indices_follows_the_specification(shape, attrs):
    """The replacement MaxPool: every index points at its pooled value in the flattened input, and
    values and indices equal ONNX Runtime's (ties included: the input has repeated values)."""
    x = np.random.default_rng(0).integers(0, 5, size=shape).astype(np.float32)
    pooled, indices = max_pool_with_indices(x, **attrs)
    model = make_model([helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, pooled.shape),
                        helper.make_tensor_value_info("i", TensorProto.INT64, pooled.shape)], opset=18)
    assert np.array_equal(x.reshape(-1)[indices], pooled)
    expected = run(model, {"x": x})
    assert np.array_equal(pooled, expected["y"]) and np.array_equal(indices, expected["i"])


@pytest.mark.parametrize("body_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32", "float16"])
def test_integer_pixels(body_type):
    """uint8 NHWC pixels cast inside the model: the relevance pass reads them through a Cast of its own."""
    from test_integer_inputs import cast_model

    feed = {"pixels": np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)}
    assert_agree(compile_model(cast_model(TensorProto.UINT8, body_type)), feed,
                 1e-5 if body_type == TensorProto.FLOAT else 1e-2)


def test_scores_with_unit_axes():
    """Scores [N, K, 1, 1] from a 1x1 Conv: the seed is reshaped to them, the class read from them flattened."""
    rng = np.random.default_rng(3)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Conv", ["g", "k", "b"], ["logits"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5, 1, 1])],
        {"w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "k": rng.normal(size=(5, 6, 1, 1)).astype(np.float32),
         "b": rng.normal(size=5).astype(np.float32)})
    feed = {"x": rng.normal(size=(2, 3, 8, 8)).astype(np.float32)}
    assert_agree(compile_model(model), feed, 1e-5)
    assert_agree(compile_model(model, composite="epsilon_plus"), feed, 1e-3)

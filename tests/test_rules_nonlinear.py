"""Rules with no autograd oracle, against plain numpy re-implementations of their formulas (RLRP.md):

* other elementwise activations, identity rule: R_x = R_y = y·rho_y, and near x = 0 (|x| < 1e-4) the
  one-sided limit f'(0±) times x·rho_y where f(0) = 0, zero relevance at a pole (rules/smooth.py);
* gated activations y = x·g(x) as ops (HardSwish, Gelu, Mish, Swish) and as arithmetic (x·Sigmoid(x),
  x·HardSigmoid(x), GELU in its Erf and Tanh forms, recognised by passes/gelu.py): R_x = x·g(x)·rho_y;
* InstanceNormalization / LayerNormalization / GroupNormalization with the statistics held constant:
  R_x = x·scale/σ·rho_y;
* LRN with the denominator held constant: R_x = x·(bias + α/size·Σ_window x²)^(−β)·rho_y;
* Max and Min of x and constants, a Clip with one bound: R_x = x·[y > max c]·rho_y, or [y < min c]; of
  several tensors, rho_y to the first that attains y (broadcast operands sum it);
* LpNormalization, and L2 normalization written out as torch exports ``F.normalize`` (recognised by
  passes/l2_norm.py), with the norm held constant: R_x = x·rho_y / max(‖x‖_p, ε).

rho_y is what the dense head hands the op (``rule_harness.head_rho``).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from rlrp_onnx import Explainer, RlrpError, compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, TARGET_INPUT
from rlrp_onnx.passes import canonicalize

from exporting import EXPORTERS, export_onnx
from oracle import input_times_gradient, relative_l2_error
from rule_harness import added_ops, compiled, head_model, head_rho, output_shape

X_SHAPE = (3, 4, 5)
erf = np.vectorize(math.erf)
TOLERANCE = 1e-5
node = helper.make_node


def sample(batch=2, seed=3) -> np.ndarray:
    """N(0, 1) with planted zeros and values inside and just outside the |x| < 1e-4 band."""
    x = np.random.default_rng(seed).standard_normal((batch, *X_SHAPE)).astype(np.float32)
    flat = x.reshape(-1)
    flat[:10] = [0.0, -0.0, 3e-5, -3e-5, 1e-8, -1e-8, 2e-4, -2e-4, 1e-3, -1e-3]
    return x


def check(model, x, reference_of_rho, targets=(0, -1), h_shape=None):
    """Compile, run, and compare with ``reference_of_rho(rho_h)`` (numpy, the op's output-shaped rho; ``h``
    shaped like a sample of ``x`` unless ``h_shape`` says otherwise)."""
    out, compiled_model = compiled(model, x, list(targets))
    rho = head_rho(model, out[CLASS_OUTPUT], h_shape or x.shape[1:])
    reference = reference_of_rho(rho.astype(np.float64))
    assert np.all(np.isfinite(out[RELEVANCE_OUTPUT]))
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], reference)
    assert np.all(errors < TOLERANCE), errors
    return out, compiled_model


# ---- identity rule -------------------------------------------------------------------------------

def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805

# op, attrs, opset, f (numpy, float64), one-sided limits (f'(0-), f'(0+)) or None for a pole
IDENTITY = {
    "Tanh": ({}, 13, np.tanh, (1.0, 1.0)),
    "Softsign": ({}, 13, lambda x: x / (1 + np.abs(x)), (1.0, 1.0)),
    "Elu": ({"alpha": 0.5}, 13, lambda x: elu(x, 0.5), (0.5, 1.0)),
    "Selu": ({}, 13, lambda x: SELU_GAMMA * elu(x, SELU_ALPHA), (SELU_GAMMA * SELU_ALPHA, SELU_GAMMA)),
    "Celu": ({"alpha": 2.0}, 13, lambda x: np.maximum(x, 0) + np.minimum(0, 2.0 * np.expm1(x / 2.0)), (1.0, 1.0)),
    "HardSigmoid_beta0": ({"alpha": 0.3, "beta": 0.0}, 13, lambda x: np.clip(0.3 * x, 0, 1), (0.0, 0.3)),
    "Sigmoid": ({}, 13, lambda x: 1 / (1 + np.exp(-x)), None),
    "Softplus": ({}, 13, lambda x: np.logaddexp(0, x), None),
    "HardSigmoid": ({}, 13, lambda x: np.clip(0.2 * x + 0.5, 0, 1), None),
}


def identity_reference(x, f, limits):
    x = x.astype(np.float64)
    small = np.abs(x) < 1e-4
    limit = np.zeros_like(x) if limits is None else np.where(x < 0, limits[0], limits[1])
    ratio = np.where(small, limit, f(x) / np.where(small, 1.0, x))
    return lambda rho: x * ratio * rho


@pytest.mark.parametrize("case", list(IDENTITY))
def test_identity_rule(case):
    attrs, opset, f, limits = IDENTITY[case]
    x = sample()
    model = head_model([node(case.split("_")[0], ["x"], ["h"], **attrs)], X_SHAPE, X_SHAPE, opset=opset)
    _, compiled_model = check(model, x, identity_reference(x, f, limits))
    assert "Div" in added_ops(compiled_model, model)  # the one documented division
    assert selections(compiled_model, model) == []


@pytest.mark.parametrize("exponent", [2.0, 3.0, 1.0, 0.5])
def test_identity_rule_of_a_power(exponent):
    """x^p for a constant p > 0 (squared ReLU, StarReLU, GeM pooling): y/x = x^(p − 1), its limit below
    1e-4 (0, or 1 for p = 1), a pole for p < 1 (positive inputs there: x^0.5 of a negative x is NaN)."""
    x = sample() if exponent >= 1 else np.abs(sample())
    model = head_model([node("Pow", ["x", "p"], ["h"])], X_SHAPE, X_SHAPE, initializers={"p": np.float32(exponent)})
    limits = None if exponent < 1 else (1.0, 1.0) if exponent == 1 else (0.0, 0.0)
    check(model, x, identity_reference(x, lambda v: v**exponent, limits))


@pytest.mark.parametrize("exponent", [-0.5, 0.0, None])
def test_a_power_not_a_constant_positive_exponent_is_refused(exponent):
    nodes = [node("Pow", ["x", "p"], ["h"])] if exponent is not None else [
        node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3]), node("Pow", ["x", "m"], ["h"])]
    inits = {"p": np.float32(exponent)} if exponent is not None else {}
    with pytest.raises(RlrpError, match="Pow is supported with a constant positive exponent only"):
        compile_model(head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=13))


def test_identity_rule_conserves_relevance_away_from_zero():
    """Σ R_x = Σ y·rho_y exactly (the rule is R_x = R_y) when no |x| is below the threshold."""
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, *X_SHAPE)).astype(np.float32)
    x *= np.sign(np.random.default_rng(1).standard_normal(x.shape)).astype(np.float32)
    model = head_model([node("Tanh", ["x"], ["h"])], X_SHAPE, X_SHAPE)
    out, _ = compiled(model, x)
    y = np.tanh(x.astype(np.float64))
    rho = head_rho(model, out[CLASS_OUTPUT], X_SHAPE)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT].reshape(2, -1).sum(1), (y * rho).reshape(2, -1).sum(1),
                               rtol=1e-5)


# ---- two slopes: LeakyRelu, PRelu, Abs -----------------------------------------------------------

SLOPE = np.array([0.25, -0.5, 0.0], np.float32).reshape(3, 1, 1)  # per channel; PRelu's may be ≤ 0
TWO_SLOPES = {
    "LeakyRelu": ([node("LeakyRelu", ["x"], ["h"], alpha=0.1)], {}, 0.1),
    "LeakyRelu_negative_alpha": ([node("LeakyRelu", ["x"], ["h"], alpha=-0.3)], {}, -0.3),
    "PRelu": ([node("PRelu", ["x", "slope"], ["h"])], {"slope": SLOPE}, SLOPE),
    "PRelu_positive_slopes": ([node("PRelu", ["x", "slope"], ["h"])], {"slope": np.abs(SLOPE) + 0.1},
                              np.abs(SLOPE) + 0.1),
    "Abs": ([node("Abs", ["x"], ["h"])], {}, -1.0),  # |x| = sign(x)·x: the slopes 1 and −1
}


@pytest.mark.parametrize("case", list(TWO_SLOPES))
def test_two_slopes(case):
    """rho_x = rho_y where x > 0, slope·rho_y elsewhere (so R_x = x·rho_x), computed without Where."""
    nodes, initializers, slope = TWO_SLOPES[case]
    x = sample()
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=initializers)
    x64 = x.astype(np.float64)
    _, compiled_model = check(model, x, lambda rho: x64 * np.where(x64 > 0, 1.0, slope) * rho)
    assert selections(compiled_model, model) == []


def selections(compiled_model, source) -> list[str]:
    """The relevance pass's Where nodes on activations (ONNX Runtime's Where is four times slower than
    the arithmetic selection, ``Emitter.choose``); the target's Where, on one index per sample, aside."""
    names = {n.name for n in source.graph.node}
    return [n.name for n in compiled_model.graph.node
            if n.name not in names and n.op_type == "Where" and TARGET_INPUT not in n.input]


# ---- gated activations ---------------------------------------------------------------------------

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def phi(x):
    return 0.5 * (1 + erf(x / math.sqrt(2)))


def phi_tanh(x):
    return 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def const(name, value):
    return node("Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value]))


def vector(name, values, element=onnx.TensorProto.INT64):
    return node("Constant", [], [name], value=helper.make_tensor(name, element, [len(values)], values))


SOFTSIGN_WRITTEN = {  # F.softsign is x / (|x| + 1): both torch exporters write it out (and the Add's order)
    "abs_plus_one": [const("one", 1.0), node("Abs", ["x"], ["a"]), node("Add", ["a", "one"], ["d"]),
                     node("Div", ["x", "d"], ["h"])],
    "one_plus_abs": [const("one", 1.0), node("Abs", ["x"], ["a"]), node("Add", ["one", "a"], ["d"]),
                     node("Div", ["x", "d"], ["h"])],
}


@pytest.mark.parametrize("case", list(SOFTSIGN_WRITTEN))
def test_softsign_written_out_takes_the_identity_rule(case):
    """Planned as one Softsign node, so it takes the op's identity rule; read node by node it was refused
    (a Div by a run-time tensor)."""
    attrs, opset, f, limits = IDENTITY["Softsign"]
    model = head_model(SOFTSIGN_WRITTEN[case], X_SHAPE, X_SHAPE, opset=opset)
    assert [n.op for n in canonicalize(model, case).nodes if n.op not in ("Flatten", "Gemm")] == ["Softsign"]
    x = sample()
    check(model, x, identity_reference(x, f, limits))


class _SoftsignNet(nn.Module):
    """Conv → ``nn.Softsign`` → Linear; ``held``: the softsign as z·(f(z)/z) with the ratio detached (its
    limit 1 for |z| < 1e-4), whose input × gradient is the identity rule's relevance."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act, self.head = nn.Conv2d(3, 4, 3), nn.Softsign(), nn.Linear(4 * 6 * 6, 5)
        self.held = False

    def forward(self, x):
        z = self.conv(x)
        if self.held:
            small = z.abs() < 1e-4
            z = z * torch.where(small, torch.ones_like(z), self.act(z) / torch.where(small, 1.0, z)).detach()
        else:
            z = self.act(z)
        return self.head(z.flatten(1))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_softsign_is_recognised(exporter, tmp_path):
    """Both torch exporters write ``nn.Softsign`` as x / (|x| + 1); the compiled model matches input ×
    gradient with the identity rule's ratio held."""
    net, x = _SoftsignNet().eval(), np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = export_onnx(net, x, tmp_path / "softsign.onnx", exporter)
    assert "Softsign" in {n.op for n in canonicalize(onnx.load(str(path)), "m").nodes}
    out = Explainer(str(path)).explain(x)
    net.held = True
    relevance, _, _ = input_times_gradient(net, x, None)
    assert np.all(relative_l2_error(out.relevance, relevance) < TOLERANCE)


def test_almost_softsign_is_not_recognised():
    """x / (|x| + 2) is not Softsign: it stays a Div by a run-time tensor, which is refused by name."""
    nodes = [const("one", 2.0)] + SOFTSIGN_WRITTEN["abs_plus_one"][1:]
    with pytest.raises(RlrpError, match="Div by a tensor computed at run time"):
        compile_model(head_model(nodes, X_SHAPE, X_SHAPE, opset=13))


GATED = {
    "HardSwish_op": ([node("HardSwish", ["x"], ["h"])], 14, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "Gelu_op": ([node("Gelu", ["x"], ["h"])], 20, phi),
    "Gelu_op_tanh": ([node("Gelu", ["x"], ["h"], approximate="tanh")], 20, phi_tanh),
    "Mish_op": ([node("Mish", ["x"], ["h"])], 18, lambda x: np.tanh(np.logaddexp(0, x))),
    "Mish_op_opset22": ([node("Mish", ["x"], ["h"])], 22, lambda x: np.tanh(np.logaddexp(0, x))),  # no Softplus
    "Swish_op": ([node("Swish", ["x"], ["h"], alpha=1.5)], 24, lambda x: sigmoid(1.5 * x)),
    "silu_x_times_sigmoid": ([node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"], ["h"])], 13, sigmoid),
    "silu_sigmoid_times_x": ([node("Sigmoid", ["x"], ["s"]), node("Mul", ["s", "x"], ["h"])], 13, sigmoid),
    "hardswish_x_times_hardsigmoid": (
        [node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5), node("Mul", ["x", "s"], ["h"])], 13,
        lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "silu_over_one_plus_exp": (  # x / (1 + exp(−x)), as code writes SiLU by hand (both exporters alike)
        [const("one", 1.0), node("Neg", ["x"], ["n"]), node("Exp", ["n"], ["e"]), node("Add", ["one", "e"], ["d"]),
         node("Div", ["x", "d"], ["h"])], 13, sigmoid),
    "swish_over_one_plus_exp": (  # x / (1 + exp(−1.5·x))
        [const("one", 1.0), const("k", -1.5), node("Mul", ["x", "k"], ["n"]), node("Exp", ["n"], ["e"]),
         node("Add", ["e", "one"], ["d"]), node("Div", ["x", "d"], ["h"])], 13, lambda x: sigmoid(1.5 * x)),
    "mish_written_out": (  # torch.onnx (TorchScript) at every opset
        [node("Softplus", ["x"], ["sp"]), node("Tanh", ["sp"], ["t"]), node("Mul", ["x", "t"], ["h"])], 13,
        lambda x: np.tanh(np.logaddexp(0, x))),
    "mish_written_out_with_softplus_threshold": (  # x·tanh(F.softplus(x)) from the dynamo exporter
        [node("Softplus", ["x"], ["sp"]), const("twenty", 20.0), node("Greater", ["x", "twenty"], ["above"]),
         node("Where", ["above", "x", "sp"], ["spt"]), node("Tanh", ["spt"], ["t"]), node("Mul", ["x", "t"], ["h"])],
        13, lambda x: np.tanh(np.logaddexp(0, x))),
    "mish_written_out_with_unoptimized_softplus": (  # the same, dynamo unoptimized: softplus's β = 1 applied
        [const("one", 1.0), const("twenty", 20.0), node("Mul", ["x", "one"], ["bx"]),
         node("Greater", ["bx", "twenty"], ["above"]), node("Softplus", ["bx"], ["sp"]), node("Div", ["sp", "one"], ["spb"]),
         node("Where", ["above", "x", "spb"], ["spt"]), node("Tanh", ["spt"], ["t"]), node("Mul", ["x", "t"], ["h"])],
        13, lambda x: np.tanh(np.logaddexp(0, x))),
    "hardswish_relu6_product_then_sixth": (  # x·relu6(x + 3)/6, bracketed as (x·relu6(x + 3))/6
        [const("three", 3.0), const("zero", 0.0), const("six", 6.0), node("Add", ["x", "three"], ["a"]),
         node("Clip", ["a", "zero", "six"], ["c"]), node("Mul", ["x", "c"], ["m"]), node("Div", ["m", "six"], ["h"])],
        13, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "x_times_hard_sigmoid_by_torch_formula": (  # x·clamp(x/6 + 1/2, 0, 1), torch's documented hard sigmoid
        [const("six", 6.0), const("half", 0.5), const("zero", 0.0), const("one", 1.0), node("Div", ["x", "six"], ["d"]),
         node("Add", ["d", "half"], ["a"]), node("Clip", ["a", "zero", "one"], ["g"]), node("Mul", ["x", "g"], ["h"])],
        13, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "x_times_clamp_as_max_and_min": (  # x·clamp(x + 3, 0, 6)/6 from the dynamo exporter, unoptimized
        [const("three", 3.0), const("zero", 0.0), const("six", 6.0), node("Add", ["x", "three"], ["a"]),
         node("Max", ["a", "zero"], ["lo"]), node("Min", ["lo", "six"], ["c"]), node("Div", ["c", "six"], ["g"]),
         node("Mul", ["x", "g"], ["h"])], 13, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "hard_mish": (  # timm: 0.5·x·clamp(x + 2, 0, 2), a gate scaled by 2 after x by 1/2
        [const("two", 2.0), const("zero", 0.0), const("half", 0.5), node("Add", ["x", "two"], ["a"]),
         node("Clip", ["a", "zero", "two"], ["c"]), node("Mul", ["half", "x"], ["xh"]), node("Mul", ["xh", "c"], ["h"])],
        13, lambda x: np.clip(x / 2 + 1, 0, 1)),
    "clip_gate_with_a_negative_floor": (  # x·clamp(x + 1, −1, 1) = x·(2·hard_sigmoid(x/2 + 1) − 1)
        [const("one", 1.0), const("minus_one", -1.0), node("Add", ["x", "one"], ["a"]),
         node("Min", ["a", "one"], ["hi"]), node("Max", ["hi", "minus_one"], ["c"]), node("Mul", ["c", "x"], ["h"])],
        13, lambda x: np.clip(x + 1, -1, 1)),
    "gelu_tanh_fast": (  # Hugging Face's FastGELU: 0.5·x·(1 + tanh(x·√(2/π)·(1 + 0.044715·x·x)))
        [const("c", 0.044715), const("k", math.sqrt(2 / math.pi)), const("one", 1.0), const("half", 0.5),
         node("Mul", ["x", "k"], ["xk"]), node("Mul", ["x", "x"], ["x2"]), node("Mul", ["c", "x2"], ["cx2"]),
         node("Add", ["one", "cx2"], ["p"]), node("Mul", ["xk", "p"], ["u"]), node("Tanh", ["u"], ["t"]),
         node("Add", ["one", "t"], ["a"]), node("Mul", ["half", "x"], ["xh"]), node("Mul", ["xh", "a"], ["h"])],
        13, phi_tanh),
    "squeeze_excitation_gate_times_two": (  # x·(2·sigmoid(mean(x))), explained as 2·(x·sigmoid(mean(x)))
        [const("two", 2.0), node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Sigmoid", ["m"], ["s"]),
         node("Mul", ["s", "two"], ["s2"]), node("Mul", ["x", "s2"], ["h"])], 13,
        lambda x: 2 * sigmoid(x.mean(axis=(2, 3), keepdims=True))),
    "squeeze_excitation_one_plus_gate": (  # x·(1 + sigmoid(mean(x))), explained as x + x·sigmoid(mean(x))
        [const("one", 1.0), node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Sigmoid", ["m"], ["s"]),
         node("Add", ["one", "s"], ["s1"]), node("Mul", ["s1", "x"], ["h"])], 13,
        lambda x: 1 + sigmoid(x.mean(axis=(2, 3), keepdims=True))),
    "gate_concatenated_then_split": (  # ResNeSt's split softmax: the halves of two gates side by side
        [node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Sigmoid", ["m"], ["s"]),
         node("Concat", ["s", "s"], ["both"], axis=1), node("Split", ["both"], ["a", "b"], axis=1),
         node("Mul", ["x", "b"], ["h"])], 13, lambda x: sigmoid(x.mean(axis=(2, 3), keepdims=True))),
    "gate_resized": (  # GhostNetV2: a gate computed on a coarser map, upsampled to the features
        [vector("up", [1.0, 1.0, 1.0, 5.0], onnx.TensorProto.FLOAT), node("ReduceMean", ["x"], ["m"], axes=[3]),
         node("Sigmoid", ["m"], ["s"]),
         node("Resize", ["s", "", "up"], ["r"], mode="nearest"), node("Mul", ["r", "x"], ["h"])], 13,
        lambda x: sigmoid(x.mean(axis=3, keepdims=True))),
    "gate_tiled_and_sliced": (
        [vector("reps", [1, 1, 6, 5]), vector("starts", [1]), vector("ends", [5]), vector("axes", [2]),
         node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Sigmoid", ["m"], ["s"]),
         node("Tile", ["s", "reps"], ["t"]), node("Slice", ["t", "starts", "ends", "axes"], ["c"]),
         node("Mul", ["x", "c"], ["h"])], 13, lambda x: sigmoid(x.mean(axis=(2, 3), keepdims=True))),
    "gelu_erf_div_then_half": (  # torch.onnx (TorchScript) order
        [const("r2", math.sqrt(2)), const("one", 1.0), const("half", 0.5), node("Div", ["x", "r2"], ["d"]),
         node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["a"]), node("Mul", ["x", "a"], ["m"]),
         node("Mul", ["m", "half"], ["h"])], 13, phi),
    "gelu_erf_mul_half_first": (  # x/√2 as a product, the 1/2 applied to x first
        [const("ir2", 1 / math.sqrt(2)), const("one", 1.0), const("half", 0.5), node("Mul", ["ir2", "x"], ["d"]),
         node("Erf", ["d"], ["e"]), node("Add", ["one", "e"], ["a"]), node("Mul", ["half", "x"], ["xh"]),
         node("Mul", ["a", "xh"], ["h"])], 13, phi),
    "gelu_tanh_pow": (  # torch.onnx (dynamo) order
        [const("three", 3.0), const("c", 0.044715), const("k", math.sqrt(2 / math.pi)), const("one", 1.0),
         const("half", 0.5), node("Pow", ["x", "three"], ["x3"]), node("Mul", ["c", "x3"], ["cx3"]),
         node("Add", ["x", "cx3"], ["s"]), node("Mul", ["k", "s"], ["u"]), node("Tanh", ["u"], ["t"]),
         node("Add", ["t", "one"], ["a"]), node("Mul", ["half", "a"], ["g"]), node("Mul", ["x", "g"], ["h"])],
        13, phi_tanh),
    "gelu_tanh_products": (  # x³ as x·(x·x), 0.5 last
        [const("c", 0.044715), const("k", math.sqrt(2 / math.pi)), const("one", 1.0), const("half", 0.5),
         node("Mul", ["x", "x"], ["x2"]), node("Mul", ["x", "x2"], ["x3"]), node("Mul", ["x3", "c"], ["cx3"]),
         node("Add", ["cx3", "x"], ["s"]), node("Mul", ["s", "k"], ["u"]), node("Tanh", ["u"], ["t"]),
         node("Add", ["one", "t"], ["a"]), node("Mul", ["a", "x"], ["m"]), node("Mul", ["half", "m"], ["h"])],
        13, phi_tanh),
}


@pytest.mark.parametrize("case", list(GATED))
def test_gated_activation(case):
    nodes, opset, gate = GATED[case]
    x = sample()
    model = head_model(nodes, X_SHAPE, X_SHAPE, opset=opset)
    _, compiled_model = check(model, x, lambda rho: x.astype(np.float64) * gate(x.astype(np.float64)) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


RECOGNISED = {"gelu": "Gelu", "mish": "Mish", "hardswish": "HardSwish"}


@pytest.mark.parametrize("case", [c for c in GATED if c.split("_")[0] in RECOGNISED and "hardsigmoid" not in c])
def test_written_out_activation_is_planned_as_one_node(case):
    """The gate is held as for the op: read node by node, a written-out Mish took the half rule and
    Softplus's identity rule, which loses half of the relevance where its input is near 0."""
    nodes, opset, _ = GATED[case]
    graph = canonicalize(head_model(nodes, X_SHAPE, X_SHAPE, opset=opset), case)
    assert [n.op for n in graph.nodes if n.op not in ("Flatten", "Gemm")] == [RECOGNISED[case.split("_")[0]]]


@pytest.mark.parametrize("name,nodes", [
    ("relu6_times_data", [const("zero", 0.0), const("six", 6.0), node("Clip", ["x", "zero", "six"], ["c"]),
                          node("Neg", ["x"], ["v"]), node("Mul", ["v", "c"], ["h"])]),
    ("max_above_min", [const("three", 3.0), const("zero", 0.0), const("six", 6.0), node("Add", ["x", "three"], ["a"]),
                       node("Max", ["a", "six"], ["lo"]), node("Min", ["lo", "zero"], ["c"]), node("Mul", ["x", "c"], ["h"])]),
    ("clamp_2x_on_the_path", [const("two", 2.0), const("zero", 0.0), const("one", 1.0), node("Mul", ["x", "two"], ["a"]),
                              node("Clip", ["a", "zero", "one"], ["h"])]),
    ("hardtanh_halved_on_the_path", [const("half", 0.5), const("one", 1.0), const("minus_one", -1.0),
                                     node("Clip", ["x", "minus_one", "one"], ["c"]), node("Mul", ["c", "half"], ["m"]),
                                     node("Add", ["m", "half"], ["h"])]),
])
def test_clips_that_are_no_hard_sigmoid_stay_clips(name, nodes):
    """A plain ReLU6 times data (no affine map: a product of two data tensors, not a gate),
    min(max(x + 3, 6), 0) (a constant 0, not a clip to [0, 6]), and clips on the data path that equal a hard
    sigmoid other than the standard one (clamp(2x, 0, 1), hardtanh(x)/2 + 1/2) are not planned as hard
    sigmoids: they keep the Clip rule (as HardSigmoid they took the identity rule, 0.6-160 off)."""
    graph = canonicalize(head_model(nodes, X_SHAPE, X_SHAPE, opset=13), name)
    assert "HardSigmoid" not in {n.op for n in graph.nodes}


def test_a_clamp_times_a_gate_is_no_planned_gate():
    """x + relu6(x + 3)·σ(x): the clamp multiplies a gate, so it is read as a clip that the gate scales (it
    was planned as a scaled hard sigmoid, then the two gates' product sent relevance into its planned nodes,
    which the source lacks: "internal error")."""
    nodes = [const("three", 3.0), const("zero", 0.0), const("six", 6.0), node("Add", ["x", "three"], ["a"]),
             node("Clip", ["a", "zero", "six"], ["c"]), node("Sigmoid", ["x"], ["s"]), node("Mul", ["c", "s"], ["p"]),
             node("Add", ["x", "p"], ["h"])]
    x = sample()
    passes = (x > -3) & (x < 3)
    check(head_model(nodes, X_SHAPE, X_SHAPE, opset=13), x, lambda rho: x * (1 + passes * sigmoid(x)) * rho)


def test_mish_with_a_softplus_threshold_where_the_branches_differ_is_not_recognised():
    """x·tanh(F.softplus(x, threshold=0.5)): above 0.5 the gate is tanh(x), not tanh(softplus(x))."""
    nodes = [node("Softplus", ["x"], ["sp"]), const("t", 0.5), node("Greater", ["x", "t"], ["above"]),
             node("Where", ["above", "x", "sp"], ["spt"]), node("Tanh", ["spt"], ["g"]), node("Mul", ["x", "g"], ["h"])]
    graph = canonicalize(head_model(nodes, X_SHAPE, X_SHAPE, opset=13), "near_mish")
    assert "Mish" not in [n.op for n in graph.nodes]


def test_almost_gelu_is_not_recognised():
    """A wrong constant (0.6 instead of 1/2) is not GELU: the Erf is left, and reported uncovered."""
    nodes = [const("half", 0.6)] + [n for n in GATED["gelu_erf_div_then_half"][0] if n.output[0] != "half"]
    model = head_model(nodes, X_SHAPE, X_SHAPE, opset=13)
    assert "Gelu" not in {n.op for n in canonicalize(model, "m").nodes}
    with pytest.raises(RlrpError, match="Erf"):
        compile_model(model)


# ---- normalization -------------------------------------------------------------------------------

RNG = np.random.default_rng(11)
SCALE_C, BIAS_C = RNG.uniform(0.5, 1.5, 3).astype(np.float32), RNG.normal(0, 0.2, 3).astype(np.float32)
SCALE_W, BIAS_W = RNG.uniform(0.5, 1.5, 5).astype(np.float32), RNG.normal(0, 0.2, 5).astype(np.float32)
SCALE_CHW = RNG.uniform(0.5, 1.5, X_SHAPE).astype(np.float32)


def inverse_std(x, axes, eps):
    x = x.astype(np.float64)
    return 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


NORMALIZATION = {
    "instance": ([node("InstanceNormalization", ["x", "s", "b"], ["h"], epsilon=1e-3)],
                 {"s": SCALE_C, "b": BIAS_C}, 13,
                 lambda x: SCALE_C.reshape(3, 1, 1) * inverse_std(x, (2, 3), 1e-3)),
    "layer_last_axis": ([node("LayerNormalization", ["x", "s", "b"], ["h"])], {"s": SCALE_W, "b": BIAS_W}, 17,
                        lambda x: SCALE_W * inverse_std(x, (3,), 1e-5)),
    "layer_axis1_no_bias": ([node("LayerNormalization", ["x", "s"], ["h"], axis=1, epsilon=1e-4)],
                            {"s": SCALE_CHW}, 17, lambda x: SCALE_CHW * inverse_std(x, (1, 2, 3), 1e-4)),
    "lp2_axis1": ([node("LpNormalization", ["x"], ["h"], axis=1, p=2)], {}, 13, lambda x: 1 / lp_norm(x, (1,), 2)),
    "lp1_last_axis": ([node("LpNormalization", ["x"], ["h"], p=1)], {}, 13, lambda x: 1 / lp_norm(x, (3,), 1)),
}


GROUPED_SHAPE = (6, 4, 5)


@pytest.mark.parametrize("opset,groups", [(21, 2), (21, 1), (21, 6), (23, 3)])
def test_group_normalization_holds_group_statistics(opset, groups):
    """GroupNormalization: R_x = x·scale_c/σ_g·rho_y, σ_g over each group of channels and the spatial
    axes. ONNX's shape inference gives its output no type (ONNX Runtime's does)."""
    scale = RNG.uniform(0.5, 1.5, 6).astype(np.float32)
    inits = {"s": scale, "b": RNG.normal(0, 0.2, 6).astype(np.float32)}
    model = head_model([node("GroupNormalization", ["x", "s", "b"], ["h"], num_groups=groups, epsilon=1e-3)],
                       GROUPED_SHAPE, GROUPED_SHAPE, initializers=inits, opset=opset)
    x = np.random.default_rng(4).standard_normal((2, *GROUPED_SHAPE)).astype(np.float32)
    per_group = inverse_std(x.reshape(2, groups, -1), (2,), 1e-3).reshape(2, groups)
    factor = np.repeat(per_group, 6 // groups, axis=1) * scale
    check(model, x, lambda rho: x * factor.reshape(2, 6, 1, 1) * rho)


WRITTEN_GROUP_NORMS = {  # torch's form below opset 21, and variations: (x shape, IN scale, after it, recognised)
    "affine": (GROUPED_SHAPE, 1.0, {"Mul": np.linspace(0.5, 1.5, 6).reshape(6, 1, 1), "Add": np.full((6, 1, 1), 0.3)},
               True),
    "no_affine": (GROUPED_SHAPE, 1.0, {}, True),
    "scaled_instance_norm": (GROUPED_SHAPE, 2.0, {}, False),
    "scale_over_positions": (GROUPED_SHAPE, 1.0, {"Mul": np.linspace(0.5, 1.5, 20).reshape(4, 5)}, True),
    "after_a_dense_layer": ((6,), 1.0, {"Mul": np.linspace(0.5, 1.5, 6), "Add": np.full(6, 0.3)}, True),  # [N, C]
}


@pytest.mark.parametrize("form", WRITTEN_GROUP_NORMS)
def test_group_norm_written_out(form):
    """Reshape to [N, 3, −1] → InstanceNormalization (scale 1, bias 0) → Reshape back [· γ] [+ β] is
    planned as one GroupNormalization with γ and β per channel (a scale over positions stays a Mul of
    its own; an instance norm that scales is left as it is); R-LRP holds the group statistics either way."""
    shape, in_scale, after, recognised = WRITTEN_GROUP_NORMS[form]
    nodes = [node("Reshape", ["x", "grouped_shape"], ["g"]),
             node("InstanceNormalization", ["g", "ones", "zeros"], ["n"], epsilon=1e-3),
             node("Reshape", ["n", "shape"], ["h0"])]
    for i, op in enumerate(after):
        nodes.append(node(op, [f"h{i}", op], [f"h{i + 1}"]))
    nodes[-1].output[0] = "h"
    inits = {"grouped_shape": np.array([0, 3, -1]), "shape": np.array([0, *shape]),
             "ones": np.full(3, in_scale, np.float32), "zeros": np.zeros(3, np.float32),
             **{op: v.astype(np.float32) for op, v in after.items()}}
    model = head_model(nodes, shape, shape, initializers=inits, opset=17)
    ops = [n.op for n in canonicalize(model, "gn").nodes]
    assert ("GroupNormalization" in ops) == recognised and ("InstanceNormalization" in ops) != recognised
    assert ("Mul" in ops) == (form == "scale_over_positions")
    x = np.random.default_rng(6).standard_normal((2, *shape)).astype(np.float32)
    per_group = in_scale * inverse_std(x.reshape(2, 3, -1), (2,), 1e-3).reshape(2, 3, 1, -1)
    factor = np.broadcast_to(per_group, (2, 3, 2, x[0].size // 6)).reshape(x.shape) * after.get("Mul", 1.0)
    check(model, x, lambda rho: x * factor * rho)


def test_group_normalization_without_types_from_a_file(tmp_path):
    """The Explainer compiles a source file in place; ONNX Runtime's types still reach the compiled model."""
    inits = {"s": RNG.uniform(0.5, 1.5, 6).astype(np.float32), "b": np.zeros(6, np.float32)}
    model = head_model([node("GroupNormalization", ["x", "s", "b"], ["h"], num_groups=3)], GROUPED_SHAPE,
                       GROUPED_SHAPE, initializers=inits, opset=21)
    onnx.save(model, tmp_path / "gn.onnx")
    x = np.random.default_rng(5).standard_normal((2, *GROUPED_SHAPE)).astype(np.float32)
    explained = Explainer(tmp_path / "gn.onnx", device="cpu").explain(x)
    out, _ = compiled(model, x, [-1, -1])
    np.testing.assert_array_equal(explained.relevance, out[RELEVANCE_OUTPUT])


def test_group_normalization_with_a_scale_per_group_is_refused():
    """Opset 18's GroupNormalization (a scale per group; deprecated, ONNX's checker refuses it, ONNX Runtime
    runs it) is refused by name."""
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"s": np.ones(3, np.float32), "b": np.zeros(3, np.float32), "W": np.ones((4, 120), np.float32)}.items()]
    graph = helper.make_graph(
        [node("GroupNormalization", ["x", "s", "b"], ["h"], num_groups=3), node("Flatten", ["h"], ["flat"]),
         node("Gemm", ["flat", "W"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *GROUPED_SHAPE])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with pytest.raises(RlrpError, match=r"GroupNormalization with a scale per group \(opset 18"):
        compile_model(model)


def lp_norm(x, axes, p, epsilon=0.0):
    """max(‖x‖_p over ``axes``, ε), keepdims, in float64."""
    x = np.abs(x.astype(np.float64))
    return np.maximum(np.sum(x**p, axis=axes, keepdims=True) ** (1 / p), epsilon)


def l2_normalization(form: str, axes=(1,), epsilon=1e-12):
    """x / max(‖x‖₂, ε) over ``axes``: "torch" as TorchScript writes F.normalize at opset 13 (ReduceL2,
    Clip(min=ε), Expand to Shape(x), Div), "torch18" with the axes an input (opset 18), "max" with
    Max(·, ε) and no Expand, "plain" without ε."""
    opset = 18 if form == "torch18" else 13
    reduce = node("ReduceL2", ["x", "axes"], ["n"]) if opset >= 18 else node("ReduceL2", ["x"], ["n"], axes=list(axes))
    nodes, inits = [reduce], {"axes": np.array(axes, np.int64)} if opset >= 18 else {}
    if form in ("torch", "torch18"):
        nodes += [const("eps", epsilon), node("Clip", ["n", "eps"], ["c"]), node("Shape", ["x"], ["shape"]),
                  node("Expand", ["c", "shape"], ["e"]), node("Div", ["x", "e"], ["h"])]
    elif form == "max":
        nodes += [const("eps", epsilon), node("Max", ["n", "eps"], ["c"]), node("Div", ["x", "c"], ["h"])]
    else:
        nodes.append(node("Div", ["x", "n"], ["h"]))
    return nodes, inits, opset


@pytest.mark.parametrize("form,axes", [("torch", (1,)), ("torch18", (1,)), ("max", (2, 3)), ("plain", (3,))])
def test_l2_normalization_in_arithmetic_is_recognised(form, axes):
    """passes/l2_norm.py: one LpNormalization node in the canonical graph, the norm held constant."""
    epsilon = 0.0 if form == "plain" else 1e-12
    nodes, inits, opset = l2_normalization(form, axes, epsilon)
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=opset)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == ["LpNormalization"]
    x = sample() * 3 + 1
    _, compiled_model = check(model, x, lambda rho: x / lp_norm(x, axes, 2, epsilon) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


HELD_STATISTICS = {  # y = x·s or x / s with s a statistic of x: (nodes, s(x) in float64, the op applied)
    "x_over_norm_plus_eps": (  # x / (‖x‖₂ + ε): not F.normalize's max(‖x‖₂, ε)
        [node("ReduceL2", ["x"], ["n"], axes=[1]), const("eps", 1e-6), node("Add", ["n", "eps"], ["s"]),
         node("Div", ["x", "s"], ["h"])],
        lambda x: lp_norm(x, (1,), 2) + 1e-6, np.divide),
    "global_response_norm": (  # ConvNeXt V2: x·(g / (mean of g over the last axis + ε)), g = ‖x‖₂ over 1, 2
        [node("ReduceL2", ["x"], ["g"], axes=[1, 2]), node("ReduceMean", ["g"], ["m"], axes=[3]),
         const("eps", 1e-6), node("Add", ["m", "eps"], ["me"]), node("Div", ["g", "me"], ["s"]),
         node("Mul", ["x", "s"], ["h"])],
        lambda x: lp_norm(x, (1, 2), 2) / (lp_norm(x, (1, 2), 2).mean(axis=3, keepdims=True) + 1e-6), np.multiply),
    "norm_of_the_flattened_sample": (  # x / ‖x.flatten(1)‖₂.reshape(−1, 1, 1, 1): inference makes up N's name
        [node("Flatten", ["x"], ["f"]), node("ReduceL2", ["f"], ["n"], axes=[1], keepdims=0),
         vector("back", [-1, 1, 1, 1]), node("Reshape", ["n", "back"], ["s"]), node("Div", ["x", "s"], ["h"])],
        lambda x: lp_norm(x, (1, 2, 3), 2), np.divide),
    "root_of_the_sum_of_squares_then_scaled": (  # 3·x / √(Σ x²): planned as an RMSNorm (c = n), γ a scalar
        [node("Mul", ["x", "x"], ["xx"]), node("ReduceSum", ["xx", "last"], ["q"]), node("Sqrt", ["q"], ["n"]),
         node("Div", ["x", "n"], ["u"]), const("three", 3.0), node("Mul", ["u", "three"], ["h"])],
        lambda x: lp_norm(x, (3,), 2) / 3, np.divide),
    "root_mean_square_first": (  # s · x, s = Sqrt(ReduceMean(x·x)) over the positions
        [node("Mul", ["x", "x"], ["xx"]), node("ReduceMean", ["xx"], ["q"], axes=[2, 3]), node("Sqrt", ["q"], ["s"]),
         node("Mul", ["s", "x"], ["h"])],
        lambda x: np.sqrt((x.astype(np.float64) ** 2).mean(axis=(2, 3), keepdims=True)), np.multiply),
}


@pytest.mark.parametrize("case", list(HELD_STATISTICS))
def test_statistic_of_the_operand_is_held(case):
    """rules/statistics.py: in x·s or x/s where s is computed from x through a reduction over non-batch
    axes, s is held like a normalization's statistics: R_x = x·rho_y·s (or / s), none through s."""
    nodes, statistic, apply = HELD_STATISTICS[case]
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers={"last": np.array([3], np.int64)}, opset=13)
    x = sample() * 3 + 1
    check(model, x, lambda rho: apply(x.astype(np.float64), statistic(x)) * rho)


NOT_STATISTICS = {  # the divisor is no statistic of the dividend: refused, as any Div by a run-time tensor
    "over_the_batch_axis": [node("ReduceL2", ["x"], ["n"], axes=[0, 1]), const("eps", 1e-6),
                            node("Add", ["n", "eps"], ["s"]), node("Div", ["x", "s"], ["h"])],
    "elementwise_only": [node("Abs", ["x"], ["a"]), const("two", 2.0), node("Add", ["a", "two"], ["s"]),
                         node("Div", ["x", "s"], ["h"])],
    "of_a_tensor_computed_from_the_dividend": [node("Relu", ["x"], ["r"]), node("ReduceL2", ["r"], ["n"], axes=[1]),
                                               node("Div", ["x", "n"], ["h"])],
    "of_a_parallel_branch": [node("Relu", ["x"], ["r"]), node("Neg", ["x"], ["m"]), node("Relu", ["m"], ["q"]),
                             node("ReduceL2", ["q"], ["n"], axes=[1]), node("Div", ["r", "n"], ["h"])],
    "over_the_batch_moved_by_a_transpose": [  # the samples mixed: each one's explanation its batch's
        node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), node("ReduceL2", ["t"], ["n"], axes=[1]),
        node("Transpose", ["n"], ["nt"], perm=[1, 0, 2, 3]), const("eps", 1e-6), node("Add", ["nt", "eps"], ["s"]),
        node("Div", ["x", "s"], ["h"])],
    "centred_by_adding_the_negated_mean": [  # x + (−mean(x)), over σ: a LayerNorm not recognised
        node("ReduceMean", ["x"], ["m"], axes=[3]), node("Neg", ["m"], ["nm"]), node("Add", ["x", "nm"], ["d"]),
        node("Mul", ["d", "d"], ["dd"]), node("ReduceMean", ["dd"], ["v"], axes=[3]), const("eps", 1e-5),
        node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]), node("Div", ["d", "s"], ["h"])],
    "rectified_after_centring": [  # relu(x − mean(x)) / σ(x): centred before the ReLU
        node("ReduceMean", ["x"], ["m"], axes=[3]), node("Sub", ["x", "m"], ["d"]), node("Relu", ["d"], ["r"]),
        node("ReduceL2", ["x"], ["s"], axes=[3]), node("Div", ["r", "s"], ["h"])],
    "over_the_batch_moved_by_a_reshape": [
        vector("row", [1, -1]), node("Reshape", ["x", "row"], ["r"]), node("ReduceL2", ["r"], ["n"], axes=[1]),
        vector("one", [1, 1, 1, 1]), node("Reshape", ["n", "one"], ["n4"]), const("eps", 1e-6),
        node("Add", ["n4", "eps"], ["s"]), node("Div", ["x", "s"], ["h"])],
}


@pytest.mark.parametrize("case", list(NOT_STATISTICS))
def test_division_by_what_is_no_statistic_of_the_dividend_is_refused(case):
    with pytest.raises(RlrpError, match="Div (by a tensor computed at run time|of a centred tensor)"):
        compile_model(head_model(NOT_STATISTICS[case], X_SHAPE, X_SHAPE, opset=13))


@pytest.mark.parametrize("order", ["gate_first", "statistic_first"])
def test_statistic_of_a_gate_is_held_in_either_order(order):
    """u·s with u = sigmoid(x) a gate and s = mean(u) a statistic of it: s is held, u takes all the
    relevance (then Sigmoid's identity rule). With s first, the gate was held instead (operand 1 of two
    held operands) and relevance went through s: 1.4 away."""
    product = ["s", "u"] if order == "statistic_first" else ["u", "s"]
    nodes = [node("Sigmoid", ["x"], ["u"]), node("ReduceMean", ["u"], ["s"], axes=[2, 3]),
             node("Mul", product, ["h"])]
    model = head_model(nodes, X_SHAPE, X_SHAPE, opset=13)
    x = sample()
    statistic = sigmoid(x.astype(np.float64)).mean(axis=(2, 3), keepdims=True)
    through_sigmoid = identity_reference(x, IDENTITY["Sigmoid"][2], IDENTITY["Sigmoid"][3])
    check(model, x, lambda rho: through_sigmoid(statistic * rho))


@pytest.mark.parametrize("order", [("p", "q"), ("q", "p")])
def test_two_statistics_of_one_tensor_multiplied_take_half_each(order):
    """mean over the positions times mean over the channels of a = relu(x): each a statistic behind the
    other, so neither is held (the first operand was, by position): the half rule, in either order."""
    nodes = [node("Relu", ["x"], ["a"]), node("ReduceMean", ["a"], ["p"], axes=[2, 3]),
             node("ReduceMean", ["a"], ["q"], axes=[1]), node("Mul", list(order), ["h"])]
    model = head_model(nodes, X_SHAPE, (3, 4, 5), opset=13)
    x = sample() * 3 + 1
    a = np.maximum(x.astype(np.float64), 0)
    p, q = a.mean(axis=(2, 3), keepdims=True), a.mean(axis=1, keepdims=True)

    def reference(rho):  # half through each mean's adjoint, then the ReLU's mask
        through_p = (rho * q / 2).sum(axis=(2, 3), keepdims=True) / 20
        through_q = (rho * p / 2).sum(axis=1, keepdims=True) / 3
        return x * (x > 0) * (through_p + through_q)

    check(model, x, reference)


def test_a_deep_chain_of_statistics_compiles_in_linear_walks(monkeypatch):
    """z ← z + z·mean(z) a hundred times: every product holds a statistic; the search for statistics
    behind an operand walked the whole arithmetic chain for each product (20 s at 100 blocks)."""
    from rlrp_onnx.rules import statistics

    calls = []
    original = statistics.is_statistic_of
    monkeypatch.setattr(statistics, "is_statistic_of", lambda *a: calls.append(1) or original(*a))
    nodes, z = [], "x"
    for i in range(100):
        nodes += [node("ReduceMean", [z], [f"m{i}"], axes=[1]), node("Mul", [z, f"m{i}"], [f"p{i}"]),
                  node("Add", [z, f"p{i}"], [f"z{i}"])]
        z = f"z{i}"
    nodes.append(node("Identity", [z], ["h"]))
    compile_model(head_model(nodes, X_SHAPE, X_SHAPE, opset=13))
    assert len(calls) < 10 * len(nodes)


def test_product_with_a_statistic_of_a_later_tensor_takes_half():
    """x·mean(relu(x)): the mean is of a tensor computed from x, not of x or of what x is computed from, so
    the product takes the half rule."""
    nodes = [node("Relu", ["x"], ["r"]), node("ReduceMean", ["r"], ["m"], axes=[1]), node("Mul", ["x", "m"], ["h"])]
    model = head_model(nodes, X_SHAPE, X_SHAPE, opset=13)
    x = sample() * 3 + 1
    x64 = x.astype(np.float64)
    mean = np.maximum(x64, 0).mean(axis=1, keepdims=True)

    def reference(rho):  # half to each operand: to x directly, and through the mean's adjoint and the relu's mask
        half = rho / 2
        through_mean = (x64 * half).sum(axis=1, keepdims=True) / X_SHAPE[0]
        return x64 * (mean * half + (x64 > 0) * through_mean)

    check(model, x, reference)


STATISTICS_BEHIND = {  # y = u·s or u / s with s a statistic of a tensor u is computed from: (nodes, R_x(x, rho))
    "relu_times_the_mean_of_its_input": (  # relu(x)·mean(x): held, as mean(x)·x would be before the relu
        [node("Relu", ["x"], ["r"]), node("ReduceMean", ["x"], ["m"], axes=[1]), node("Mul", ["r", "m"], ["h"])],
        lambda x, rho: x * (x > 0) * x.mean(axis=1, keepdims=True) * rho),
    "cosine_similarity_as_torchscript_writes_it": (  # Σ x·w / max(√(Σx²·Σw²), ε) over the channels
        [node("Mul", ["x", "w"], ["xw"]), node("ReduceSum", ["xw", "one"], ["u"]),
         node("Mul", ["x", "x"], ["xx"]), node("ReduceSum", ["xx", "one"], ["nx"]),
         node("Mul", ["w", "w"], ["ww"]), node("ReduceSum", ["ww", "one"], ["nw"]),
         node("Mul", ["nx", "nw"], ["nn"]), node("Sqrt", ["nn"], ["n"]), const("eps", 1e-8),
         node("Max", ["n", "eps"], ["s"]), node("Div", ["u", "s"], ["h"])],
        lambda x, rho: x * COSINE_WEIGHTS * rho / np.sqrt((x**2).sum(axis=1, keepdims=True)
                                                          * (COSINE_WEIGHTS**2).sum())),
}
COSINE_WEIGHTS = np.random.default_rng(5).standard_normal((1, X_SHAPE[0], 1, 1)).astype(np.float32)


@pytest.mark.parametrize("case", list(STATISTICS_BEHIND))
def test_statistic_of_what_the_operand_is_computed_from_is_held(case):
    """rules/statistics.py: s held in u·s or u / s also where it is a statistic of a tensor u is computed
    from: normalising before a linear map or a ReLU or after it explains alike."""
    nodes, reference = STATISTICS_BEHIND[case]
    inits = {"w": COSINE_WEIGHTS, "one": np.array([1], np.int64)}
    h_shape = output_shape(nodes, X_SHAPE, inits, opset=13)
    model = head_model(nodes, X_SHAPE, h_shape, initializers=inits, opset=13)
    x = sample() * 3 + 1
    check(model, x, lambda rho: reference(x.astype(np.float64), rho), h_shape=h_shape)


def layer_norm_in_arithmetic(opset: int, affine: bool = True, axes=(-1,)):
    """torch's LayerNorm export below opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add ε, Sqrt, Div,
    then · γ and + β (the axes an attribute before opset 18, an input from 18)."""
    def mean(inputs, output):
        if opset >= 18:
            return node("ReduceMean", [*inputs, "axes"], [output])
        return node("ReduceMean", inputs, [output], axes=list(axes))

    nodes = [mean(["x"], "m"), node("Sub", ["x", "m"], ["d"]), const("two", 2.0), node("Pow", ["d", "two"], ["p"]),
             mean(["p"], "v"), const("eps", 1e-5), node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]),
             node("Div", ["d", "s"], ["n" if affine else "h"])]
    if affine:
        nodes += [node("Mul", ["n", "s_w"], ["g"]), node("Add", ["g", "b_w"], ["h"])]
    inits = {"s_w": SCALE_W, "b_w": BIAS_W} if affine else {}
    return nodes, {**inits, **({"axes": np.array(axes, np.int64)} if opset >= 18 else {})}


def keras_layer_norm(opset: int, affine: bool = True, reshaped_mean: bool = False, axes=(-1,)):
    """Keras' LayerNormalization as tf2onnx writes it at every opset: inv = 1/Sqrt(mean((x−m)·(x−m)) + ε)
    [· γ], x·inv + (Neg(m)·inv [+ β]); ``reshaped_mean``: the Sub reads m through a Reshape that keeps its
    shape (tf2onnx's transpose optimizer); ``axes`` those of the means (Keras' GroupNormalization: all of
    a grouped view but the batch and the groups)."""
    centre = [node("Reshape", ["m", "same"], ["mr"]), node("Sub", ["x", "mr"], ["d"])] if reshaped_mean else \
        [node("Sub", ["x", "m"], ["d"])]
    nodes = [node("ReduceMean", ["x"], ["m"], axes=list(axes)), *centre,
             node("Mul", ["d", "d"], ["p"]), node("ReduceMean", ["p"], ["v"], axes=list(axes)), const("eps", 1e-3),
             node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]), node("Reciprocal", ["s"], ["r"])]
    inverse = "inv" if affine else "r"
    if affine:
        nodes.append(node("Mul", ["r", "s_w"], ["inv"]))
    nodes += [node("Mul", ["x", inverse], ["xs"]), node("Neg", ["m"], ["nm"]),
              node("Mul", ["nm", inverse], ["ms" if affine else "shift"])]
    if affine:
        nodes.append(node("Add", ["ms", "b_w"], ["shift"]))
    nodes.append(node("Add", ["xs", "shift"], ["h"]))
    return nodes, ({"s_w": SCALE_W, "b_w": BIAS_W} if affine else {}) | (
        {"same": np.array([-1, *X_SHAPE[:-1], 1])} if reshaped_mean else {})


@pytest.mark.parametrize("form,opset,affine", [("torch", 13, True), ("torch", 13, False), ("torch", 18, True),
                                               ("keras", 15, True), ("keras", 17, False), ("keras_reshaped", 15, True)])
def test_layer_norm_in_arithmetic_is_recognised(form, opset, affine):
    """passes/layer_norm.py: one LayerNormalization node in the canonical graph, its rule's relevance."""
    nodes, inits = layer_norm_in_arithmetic(opset, affine) if form == "torch" else \
        keras_layer_norm(opset, affine, reshaped_mean=form == "keras_reshaped")
    epsilon = 1e-5 if form == "torch" else 1e-3
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=opset)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["LayerNormalization"]
    x = sample() * 3 + 1
    scale = SCALE_W if affine else 1.0
    _, compiled_model = check(model, x, lambda rho: x * scale * inverse_std(x, (3,), epsilon) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def test_keras_layer_norm_scaling_a_transposed_input_is_recognised():
    """Keras' LayerNormalization over (H, W, C) after tf2onnx's transpose optimizer: the statistics over
    all axes but the batch of the N, C, H, W tensor x, the scaling on x transposed to N, H, W, C (the same
    statistics per sample). One LayerNormalization on the transposed x; relevance routed back through the
    Transpose."""
    shape_t = (X_SHAPE[1], X_SHAPE[2], X_SHAPE[0])
    scale_t, bias_t = SCALE_CHW.transpose(1, 2, 0)[None], BIAS_C.reshape(1, 1, 1, 3) * np.ones((1, *shape_t), np.float32)
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[2, 3, 1]), node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             node("Sub", ["x", "m"], ["d"]), node("Mul", ["d", "d"], ["p"]),
             node("ReduceMean", ["p"], ["v"], axes=[2, 3, 1]), const("eps", 1e-3), node("Add", ["v", "eps"], ["ve"]),
             node("Sqrt", ["ve"], ["s"]), node("Reciprocal", ["s"], ["r"]), node("Mul", ["r", "s_t"], ["inv"]),
             node("Neg", ["m"], ["nm"]), node("Mul", ["nm", "inv"], ["ms"]), node("Add", ["ms", "b_t"], ["shift"]),
             node("Mul", ["t", "inv"], ["xs"]), node("Add", ["xs", "shift"], ["h"])]
    model = head_model(nodes, X_SHAPE, shape_t, initializers={"s_t": scale_t, "b_t": bias_t}, opset=15)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["Transpose", "LayerNormalization"]
    x = sample() * 3 + 1

    def reference(rho):
        rho_t = rho.reshape(len(rho), *shape_t) * scale_t
        return x * rho_t.transpose(0, 3, 1, 2) * inverse_std(x, (1, 2, 3), 1e-3)

    _, compiled_model = check(model, x, reference)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def test_keras_layer_norm_moved_as_in_a_mixer_is_recognised():
    """tf2onnx's transpose optimizer on an MLP-Mixer's LayerNorm: the statistics over axis 1 of x
    (N, C, H, W), the mean reaching the Sub through a Reshape round trip and its Neg through the first
    Reshape (both only move the axis of size 1), inv·γ computed per channel and transposed with x to
    N, H, W, C. One LayerNormalization on the transposed x, over its last axis, γ moved with it."""
    moved, shape_t = [0, 2, 3, 1], (X_SHAPE[1], X_SHAPE[2], X_SHAPE[0])
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[1]), node("Reshape", ["m", "to_t"], ["mt"]),
             node("Reshape", ["mt", "back"], ["mb"]), node("Neg", ["mt"], ["nm"]), node("Sub", ["x", "mb"], ["d"]),
             node("Mul", ["d", "d"], ["p"]), node("ReduceMean", ["p"], ["v"], axes=[1]), const("eps", 1e-3),
             node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]), node("Reciprocal", ["s"], ["r"]),
             node("Mul", ["r", "g"], ["inv"]), node("Transpose", ["inv"], ["inv_t"], perm=moved),
             node("Transpose", ["x"], ["t"], perm=moved), node("Mul", ["nm", "inv_t"], ["ms"]),
             node("Add", ["ms", "b"], ["shift"]), node("Mul", ["t", "inv_t"], ["xs"]),
             node("Add", ["xs", "shift"], ["h"])]
    inits = {"to_t": np.array([-1, *shape_t[:2], 1]), "back": np.array([-1, 1, *shape_t[:2]]),
             "g": SCALE_C.reshape(1, 3, 1, 1), "b": BIAS_C.reshape(1, 1, 1, 3)}
    model = head_model(nodes, X_SHAPE, shape_t, initializers=inits, opset=15)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["Transpose", "LayerNormalization"]
    x = sample() * 3 + 1

    def reference(rho):
        rho_x = rho.reshape(len(rho), *shape_t).transpose(0, 3, 1, 2)
        return x * rho_x * SCALE_C.reshape(1, 3, 1, 1) * inverse_std(x, (1,), 1e-3)

    _, compiled_model = check(model, x, reference)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


@pytest.mark.parametrize("opset", [13, 18])
def test_layer_norm_over_leading_axes_is_recognised(opset):
    """Means over axis 1 only (ConvNeXt's channels_first LayerNorm written by hand): one planned
    LayerNormalization over those axes, the statistics held constant."""
    nodes, inits = layer_norm_in_arithmetic(opset, axes=(1,))
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=opset)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["LayerNormalization"]
    x = sample() * 3 + 1
    _, compiled_model = check(model, x, lambda rho: x * SCALE_W * inverse_std(x, (1,), 1e-5) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


@pytest.mark.parametrize("form", ["torch", "keras"])
def test_normalization_over_scattered_axes_is_recognised(form):
    """Means over axes that are not contiguous (a group norm: Keras' GroupNormalization means over every
    axis of its grouped view but the batch and the groups): one planned LayerNormalization over exactly
    those axes, the statistics held constant."""
    nodes, inits = layer_norm_in_arithmetic(13, axes=(1, 3)) if form == "torch" else \
        keras_layer_norm(15, axes=(1, 3))
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=13 if form == "torch" else 15)
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["LayerNormalization"]
    x = sample() * 3 + 1
    epsilon = 1e-5 if form == "torch" else 1e-3
    _, compiled_model = check(model, x, lambda rho: x * SCALE_W * inverse_std(x, (1, 3), epsilon) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def layer_norm_with_std(std_axes=(3,), correction=5 / 4):
    """(x − mean(x)) / (Sqrt(c·mean((x − mean(x))²)) + ε) · γ + β over the last axis (torch's ``x.std()``,
    unbiased for c = n/(n − 1)), its two means two nodes, the mean of squares over ``std_axes``."""
    return [node("ReduceMean", ["x"], ["m"], axes=[3]), node("Sub", ["x", "m"], ["d"]),
            node("ReduceMean", ["x"], ["m2"], axes=[3]), node("Sub", ["x", "m2"], ["d2"]),
            node("Mul", ["d2", "d2"], ["p"]), node("ReduceMean", ["p"], ["v"], axes=list(std_axes)),
            const("c", correction), node("Mul", ["v", "c"], ["vc"]), node("Sqrt", ["vc"], ["s"]),
            const("eps", 1e-6), node("Add", ["s", "eps"], ["se"]), node("Div", ["d", "se"], ["n"]),
            node("Mul", ["n", "s_w"], ["g"]), node("Add", ["g", "b_w"], ["h"])]


def test_layer_norm_with_the_standard_deviation_is_recognised():
    """passes/layer_norm.py: one LayerNormalization, its σ = √(c·Var) + ε held constant."""
    model = head_model(layer_norm_with_std(), X_SHAPE, X_SHAPE, initializers={"s_w": SCALE_W, "b_w": BIAS_W})
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["LayerNormalization"]
    x = sample() * 3 + 1
    std = np.sqrt(5 / 4 * x.astype(np.float64).var(axis=3, keepdims=True)) + 1e-6
    check(model, x, lambda rho: x * SCALE_W / std * rho)


def test_layer_norm_times_rsqrt_of_its_own_variance_is_recognised():
    """(x − mean)·rsqrt(x.var() + ε)·γ + β, the variance with a mean of its own (torch writes x.var()
    apart from the centred x): one LayerNormalization, the statistics held."""
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[3]), node("Sub", ["x", "m"], ["d"]),
             node("ReduceMean", ["x"], ["m2"], axes=[3]), node("Sub", ["x", "m2"], ["d2"]),
             node("Mul", ["d2", "d2"], ["p"]), node("ReduceMean", ["p"], ["v"], axes=[3]), const("eps", 1e-5),
             node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]), node("Reciprocal", ["s"], ["inv"]),
             node("Mul", ["d", "inv"], ["n"]), node("Mul", ["n", "s_w"], ["g"]), node("Add", ["g", "b_w"], ["h"])]
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers={"s_w": SCALE_W, "b_w": BIAS_W})
    assert [n.op for n in canonicalize(model, "m").nodes if n.op not in ("Flatten", "Gemm")] == \
        ["LayerNormalization"]
    x = sample() * 3 + 1
    check(model, x, lambda rho: x * SCALE_W * inverse_std(x, (3,), 1e-5) * rho)


def test_standard_deviation_over_other_axes_than_the_mean_is_not_recognised():
    """The mean of squares over axis 2, the mean over axis 3: no LayerNorm; the Sqrt is reported."""
    model = head_model(layer_norm_with_std(std_axes=(2,)), X_SHAPE, X_SHAPE,
                       initializers={"s_w": SCALE_W, "b_w": BIAS_W})
    with pytest.raises(RlrpError, match="Sqrt: no relevance rule; part of a normalization written out"):
        compile_model(model)


def test_normalization_without_its_mean_subtracted_is_not_recognised():
    """A mean of (x − c)² with c not x's mean is no normalization's statistics: left as found, reported
    with a hint."""
    nodes = [const("c", 0.5), node("Sub", ["x", "c"], ["d"]), node("Mul", ["d", "d"], ["p"]),
             node("ReduceMean", ["p"], ["v"], axes=[-1]), const("eps", 1e-5), node("Add", ["v", "eps"], ["ve"]),
             node("Sqrt", ["ve"], ["s"]), node("Add", ["x", "s"], ["h"])]
    model = head_model(nodes, X_SHAPE, X_SHAPE, opset=13)
    with pytest.raises(RlrpError, match="Sqrt: no relevance rule; part of a normalization written out"):
        compile_model(model)


@pytest.mark.parametrize("case", list(NORMALIZATION))
def test_normalization_statistics_held_constant(case):
    nodes, inits, opset, factor = NORMALIZATION[case]
    x = sample() * 3 + 1
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=opset)
    _, compiled_model = check(model, x, lambda rho: x * factor(x) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def lrn_factor(x, size, alpha, beta, bias):
    x = x.astype(np.float64)
    channels = x.shape[1]
    square_sum = np.zeros_like(x)
    for c in range(channels):
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + math.ceil((size - 1) / 2))
        square_sum[:, c] = (x[:, low:high + 1] ** 2).sum(axis=1)
    return (bias + alpha / size * square_sum) ** -beta


@pytest.mark.parametrize("size", [3, 5])  # ONNX Runtime runs odd sizes only
def test_lrn_denominator_held_constant(size):
    shape = (6, 4, 5)
    attrs = {"size": size, "alpha": 0.05, "beta": 0.75, "bias": 2.0}
    x = np.random.default_rng(4).standard_normal((2, *shape)).astype(np.float32) * 3
    model = head_model([node("LRN", ["x"], ["h"], **attrs)], shape, shape, opset=13)
    out, compiled_model = compiled(model, x, [1, -1])
    rho = head_rho(model, out[CLASS_OUTPUT], shape)
    reference = x * lrn_factor(x, size, 0.05, 0.75, 2.0) * rho
    assert np.all(relative_l2_error(out[RELEVANCE_OUTPUT], reference) < TOLERANCE)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def explains_as_without_the_head(plain, headed):
    """``headed`` (``plain`` with a trailing activation) explains the same logits as ``plain``."""
    x = np.random.default_rng(8).standard_normal((3, 6)).astype(np.float32)
    expected, _ = compiled(plain, x)
    out, _ = compiled(headed, x)
    np.testing.assert_allclose(out["rlrp_score"], expected["logits"].max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("trailing", ["Sigmoid", "Softmax", "LogSoftmax"])
def test_a_trailing_activation_is_skipped(trailing):
    """RLRP.md: the explained quantity is the logit before a trailing Softmax/LogSoftmax; a trailing
    Sigmoid (a multi-label head) likewise, not the identity rule on the probability (which scaled the
    relevance by sigmoid(z)/z and gave the probability as the score)."""
    from onnx_builders import dense_classifier

    plain = dense_classifier()
    activated = onnx.ModelProto()
    activated.CopyFrom(plain)
    activated.graph.node[-1].output[0] = "z"
    activated.graph.node.append(node(trailing, ["z"], ["logits"]))
    explains_as_without_the_head(plain, activated)


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_a_log_softmax_written_with_logsumexp_is_skipped(axis):
    """``z − logsumexp(z, 1, keepdim=True)`` (as both torch exporters write it: ReduceLogSumExp, Sub) is a
    log-softmax: z is explained (ReduceLogSumExp was refused); over the batch axis it is no log-softmax."""
    from onnx_builders import dense_classifier

    plain = dense_classifier()
    headed = onnx.ModelProto()
    headed.CopyFrom(plain)
    headed.graph.node[-1].output[0] = "z"
    headed.graph.node.extend([node("ReduceLogSumExp", ["z"], ["lse"], axes=[axis], keepdims=1),
                              node("Sub", ["z", "lse"], ["logits"])])
    if axis == 0:
        with pytest.raises(RlrpError, match="ReduceLogSumExp"):
            compile_model(headed)
    else:
        explains_as_without_the_head(plain, headed)


@pytest.mark.parametrize("then", ["Flatten", "Squeeze", "Reshape"])
@pytest.mark.parametrize("trailing", ["Sigmoid", "Softmax", "LogSoftmax"])
def test_a_trailing_activation_before_the_unit_axes_are_dropped_is_skipped(trailing, then):
    """Scores [N, K, 1, 1] through the activation, then flattened (``sigmoid(z).flatten(1)``, Caffe's
    softmax then a reshape): the logit before it is explained, as for ``sigmoid(z.flatten(1))``. The
    Sigmoid was read with its identity rule (the probability explained and given as the score) and the
    softmaxes refused."""
    from onnx_builders import dense_classifier

    plain = dense_classifier()
    activated = onnx.ModelProto()
    activated.CopyFrom(plain)
    activated.graph.node[-1].output[0] = "z"
    activated.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.int64), k)
                                        for k, v in {"unit": [2, 3], "flat": [0, -1]}.items()])
    dropped = {"Flatten": node("Flatten", ["p"], ["logits"]), "Squeeze": node("Squeeze", ["p", "unit"], ["logits"]),
               "Reshape": node("Reshape", ["p", "flat"], ["logits"])}[then]
    activated.graph.node.extend([node("Unsqueeze", ["z", "unit"], ["z4"]),
                                 node(trailing, ["z4"], ["p"], **({} if trailing == "Sigmoid" else {"axis": 1})),
                                 dropped])
    explains_as_without_the_head(plain, activated)


def test_a_softmax_between_transposes_then_flattened_is_skipped():
    """Below opset 13 torch writes a softmax over axis 1 of [N, K, 1, 1] between two Transposes (classes
    last and back), then the flatten: skipped as at opset 17 (it was refused)."""
    from onnx_builders import dense_classifier

    plain = dense_classifier()
    model = onnx.ModelProto()
    model.CopyFrom(plain)
    model.opset_import[0].version = 11
    model.graph.node[-1].output[0] = "z"
    model.graph.node.extend([node("Unsqueeze", ["z"], ["z4"], axes=[2, 3]),
                             node("Transpose", ["z4"], ["t"], perm=[0, 3, 2, 1]), node("Softmax", ["t"], ["p"], axis=3),
                             node("Transpose", ["p"], ["p4"], perm=[0, 3, 2, 1]), node("Flatten", ["p4"], ["logits"])])
    explains_as_without_the_head(plain, model)


def test_a_trailing_sigmoid_on_scores_shaped_n_1_k_is_refused():
    """sigmoid(z.reshape(N, 1, K)).squeeze(1): the probability was explained (the Sigmoid's identity rule)
    and given as the score; such scores are refused by name, as outputs shaped [N, 1, K] are."""
    from onnx_builders import dense_classifier

    model = dense_classifier()
    model.graph.node[-1].output[0] = "z"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "one"))
    model.graph.node.extend([node("Unsqueeze", ["z", "one"], ["z3"]), node("Sigmoid", ["z3"], ["p"]),
                             node("Squeeze", ["p", "one"], ["logits"])])
    with pytest.raises(RlrpError, match=r"the trailing Sigmoid acts on scores shaped .*only \[N, K\]"):
        compile_model(model)


def test_a_softmax_over_a_unit_axis_is_not_skipped():
    """softmax over a unit axis of [N, K, 1] (all ones), then squeezed: no logit to explain before it."""
    from onnx_builders import dense_classifier

    model = dense_classifier()
    model.graph.node[-1].output[0] = "z"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), "unit"))
    model.graph.node.extend([node("Unsqueeze", ["z", "unit"], ["z3"]), node("Softmax", ["z3"], ["p"], axis=-1),
                             node("Squeeze", ["p", "unit"], ["logits"])])
    with pytest.raises(RlrpError, match="Softmax inside the network is supported only as a gate"):
        compile_model(model)


TAU = np.array([-0.5, 0.1, 0.8], np.float32).reshape(3, 1, 1)
EXTREMA = {
    "max_relu": ([node("Max", ["x", "zero"], ["h"])], {"zero": np.float32(0.0)}, lambda x: x > 0),
    "min_first_constant": ([node("Min", ["half", "x"], ["h"])], {"half": np.float32(0.5)}, lambda x: x < 0.5),
    "max_of_three": ([node("Max", ["x", "a", "b"], ["h"])], {"a": np.float32(-0.3), "b": np.array([0.2], np.float32)},
                     lambda x: x > 0.2),
    "max_zeros_like": (  # torch.maximum(x, torch.zeros_like(x)) from TorchScript: zeros of x's shape at run time
        [node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], ["zeros"]), node("Max", ["x", "zeros"], ["h"])],
        {}, lambda x: x > 0),
    "min_full_like": (  # torch.minimum(x, torch.full_like(x, 0.5)) from dynamo: one number expanded to x's shape
        [node("Shape", ["x"], ["s"]), node("Expand", ["half", "s"], ["halves"]), node("Min", ["x", "halves"], ["h"])],
        {"half": np.float32(0.5)}, lambda x: x < 0.5),
    "max_per_channel": (  # FRN's thresholded linear unit max(x, τ), τ learned per channel
        [node("Max", ["x", "tau"], ["h"])], {"tau": TAU}, lambda x: x > TAU),
    "min_per_channel_and_one": (
        [node("Min", ["tau", "x", "half"], ["h"])], {"tau": TAU, "half": np.float32(0.5)},
        lambda x: x < np.minimum(TAU, 0.5)),
}


@pytest.mark.parametrize("case", list(EXTREMA))
def test_max_and_min_with_constants_are_clips(case):
    nodes, inits, passes = EXTREMA[case]
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=13)
    x = sample()
    _, compiled_model = check(model, x, lambda rho: x * passes(x) * rho)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def reversed_last(a):
    return a[..., ::-1]


def first_winner(y, operands):
    """0/1 weights of each operand: 1 where it is the first in order to attain ``y``."""
    free, weights = np.ones(y.shape, bool), []
    for operand in operands:
        won = free & (np.broadcast_to(operand, y.shape) == y)
        weights.append(won)
        free &= ~won
    return weights


REVERSE = node("Slice", ["x", "last", "before_first", "axis3", "minus_one"], ["xr"])
REVERSE_INITS = {"last": np.array([-1], np.int64), "before_first": np.array([-2**62], np.int64),
                 "axis3": np.array([3], np.int64), "minus_one": np.array([-1], np.int64)}


def tied_sample():
    """``sample()`` with some values equal to their mirror along the last axis: ties of x and reversed x."""
    x = sample()
    x[:, 1, :2, 0] = x[:, 1, :2, -1]
    x[:, 2, 3, 1] = x[:, 2, 3, -2]
    return x


def maxout_of_mirrors(x, rho):
    y = np.maximum(x, reversed_last(x))
    w, w_reversed = first_winner(y, [x, reversed_last(x)])
    return x * (w * rho + reversed_last(w_reversed * rho))


def maxout_broadcast(x, rho):
    m = x.mean(axis=3, keepdims=True)
    w, w_mean = first_winner(np.maximum(x, m), [x, m])
    return x * (w * rho + (w_mean * rho).sum(axis=3, keepdims=True) / x.shape[3])


def min_of_mirrors_and_constant(x, rho):
    y = np.minimum(np.minimum(x, reversed_last(x)), 0.5)
    passed = rho * (y < 0.5)
    w, w_reversed = first_winner(y, [x, reversed_last(x)])
    return x * (w * passed + reversed_last(w_reversed * passed))


MAXOUTS = {  # name: (nodes, initializers, numpy reference of x, rho)
    "max_of_mirrors": ([REVERSE, node("Max", ["x", "xr"], ["h"])], REVERSE_INITS, maxout_of_mirrors),
    "max_broadcast": ([node("ReduceMean", ["x"], ["m"], axes=[3], keepdims=1), node("Max", ["x", "m"], ["h"])], {},
                      maxout_broadcast),
    "min_of_three_with_constant": ([REVERSE, node("Min", ["x", "xr", "half"], ["h"])],
                                   {**REVERSE_INITS, "half": np.float32(0.5)}, min_of_mirrors_and_constant),
}


@pytest.mark.parametrize("case", list(MAXOUTS))
def test_max_and_min_of_data_tensors_route_to_the_first_winner(case):
    """A maxout: rho_y goes to the first operand attaining y (ties planted; a broadcast operand sums it)."""
    nodes, inits, reference = MAXOUTS[case]
    model = head_model(nodes, X_SHAPE, X_SHAPE, initializers=inits, opset=13)
    x = tied_sample()
    check(model, x, lambda rho: reference(x.astype(np.float64), rho))

"""Normalizations computed from the data itself: the statistics are held constant, which leaves a linear
map whose adjoint is a multiplication; the statistics are recomputed from x with standard ops, and the
inverse root is a Pow with a negative exponent (no Div, no Reciprocal)."""

from __future__ import annotations

import numpy as np

from .registry import NORMALIZATION, rule

# The normalized axes of a LayerNormalization planned by passes/layer_norm.py over axes other than the last
# ones (ConvNeXt's channels_first LayerNorm: axis 1 of N, C, H, W; a group norm's axes but the groups');
# the planned node is never run. Likewise the ε of an L2 normalization planned by passes/l2_norm.py, and
# the factor c of a LayerNorm written with the standard deviation, σ = √(c·Var) + ε (torch's x.std() + ε).
PLANNED_AXES = "rlrp_axes"
PLANNED_EPSILON = "rlrp_epsilon"
PLANNED_STD_SCALE = "rlrp_std_scale"
PLANNED_WINDOW_BEFORE = "rlrp_window_before"  # an LRN's channels before each in its window (torch: size // 2)


def _mean(ctx, tensor, axes, shape):
    count = float(np.prod([shape[a] for a in axes]))
    return ctx.emit.mul(ctx.emit.reduce_sum(tensor, axes, keepdims=True), ctx.emit.const(1.0 / count))


def inverse_std(ctx, x, axes, epsilon, centred: bool = True, std_scale: float | None = None):
    """(Var[x over axes] + ε)^(−1/2), keepdims, as the forward computes it; not ``centred``, the inverse
    root mean square (mean(x²) + ε)^(−1/2); with ``std_scale`` c, (√(c·Var[x]) + ε)^(−1)."""
    emit, shape = ctx.emit, ctx.shape(x)
    if centred:
        x = emit.op("Sub", [x, _mean(ctx, x, axes, shape)])
    variance = _mean(ctx, emit.mul(x, x), axes, shape)
    if std_scale is not None:
        std = emit.op("Sqrt", [emit.mul(variance, emit.const(std_scale))])
        return emit.op("Pow", [emit.op("Add", [std, emit.const(epsilon)]), emit.const(-1.0)])
    return emit.op("Pow", [emit.op("Add", [variance, emit.const(epsilon)]), emit.const(-0.5)])


def _norm_axes(ctx, node):
    rank = len(ctx.shape(node.inputs[0]))
    if node.op == "InstanceNormalization":
        return list(range(2, rank))
    if PLANNED_AXES in node.attrs:
        return list(node.attrs[PLANNED_AXES])
    if node.op == "LpNormalization":
        return [node.attrs.get("axis", -1) % rank]
    return list(range(node.attrs.get("axis", -1) % rank, rank))


def _norm_check(ctx, node):
    if any(ctx.is_data(t) for t in node.inputs[1:] if t.name):
        return f"{node.op} with scale or bias computed from the input is not supported"
    if not all(isinstance(ctx.shape(node.inputs[0])[a], int) for a in _norm_axes(ctx, node)):
        return f"{node.op} over a dynamic axis is not supported"
    return None


@rule("InstanceNormalization", "LayerNormalization", "RMSNormalization", check=_norm_check, kind=NORMALIZATION)
def normalization(ctx, node, rho):
    """y = scale·(x − μ)/σ + B with μ, σ held constant: rho_x = rho_y·scale/σ (μ and B are bias shares;
    σ = √(Var + ε), or, planned from a LayerNorm written with the standard deviation, √(c·Var) + ε);
    RMSNormalization: y = scale·x/rms(x), rms held constant, rho_x = rho_y·scale/rms."""
    emit, x = ctx.emit, node.inputs[0]
    scale = node.inputs[1]
    if node.op == "InstanceNormalization":  # scale [C] against x [N, C, ...]
        scale = emit.op("Reshape", [scale, emit.ints([-1] + [1] * (len(ctx.shape(x)) - 2))])
    epsilon = float(node.attrs.get("epsilon", 1e-5))
    inverse = inverse_std(ctx, x, _norm_axes(ctx, node), epsilon, centred=node.op != "RMSNormalization",
                          std_scale=node.attrs.get(PLANNED_STD_SCALE))
    factor = emit.mul(scale, inverse)
    return {0: emit.mul(rho[0], factor)}


def _group_norm_check(ctx, node):
    if any(ctx.constant(t) is None for t in node.inputs[1:3]):
        return f"{node.op} with scale or bias that are not constants is not supported"
    if not all(isinstance(d, int) for d in ctx.shape(node.inputs[0])[1:]):
        return f"{node.op} over dynamic sizes is not supported"
    if ctx.constant(node.inputs[1]).size != ctx.shape(node.inputs[0])[1]:
        return f"{node.op} with a scale per group (opset 18, deprecated) is not supported; re-export at opset 21"
    return None


@rule("GroupNormalization", check=_group_norm_check, kind=NORMALIZATION)
def group_normalization(ctx, node, rho):
    """y = scale_c·(x − μ_g)/σ_g + B_c over each group g of channels, μ_g and σ_g held constant:
    rho_x = rho_y·scale_c/σ_g."""
    emit, x = ctx.emit, node.inputs[0]
    shape, groups = ctx.shape(x), int(node.attrs["num_groups"])
    channels, ones = shape[1], [1] * (len(shape) - 2)
    grouped = emit.op("Reshape", [x, emit.ints([0, groups, -1])])
    grouped.shape = [shape[0], groups, int(np.prod(shape[1:])) // groups]
    inverse = inverse_std(ctx, grouped, [2], float(node.attrs.get("epsilon", 1e-5)))  # [N, groups, 1]
    per_channel = emit.op("Expand", [inverse, emit.ints([1, groups, channels // groups])])
    per_channel = emit.op("Reshape", [per_channel, emit.ints([0, channels, *ones])])
    scale = emit.op("Reshape", [node.inputs[1], emit.ints([channels, *ones])])
    return {0: emit.mul(rho[0], emit.mul(per_channel, scale))}


def _lp_check(ctx, node):
    if int(node.attrs.get("p", 2)) not in (1, 2):
        return "LpNormalization with p other than 1 or 2 is not supported"
    return _norm_check(ctx, node)


@rule("LpNormalization", check=_lp_check, kind=NORMALIZATION)
def lp_normalization(ctx, node, rho):
    """y = x / max(‖x‖_p, ε) over the axes (ε: 0 for the op, F.normalize's clamp where planned), the norm
    held constant: rho_x = rho_y · max(‖x‖_p, ε)^−1, as (max(Σ x², ε²))^(−1/2) for p = 2."""
    emit, x = ctx.emit, node.inputs[0]
    p, epsilon = int(node.attrs.get("p", 2)), float(node.attrs.get(PLANNED_EPSILON, 0.0))
    powers = emit.mul(x, x) if p == 2 else emit.op("Abs", [x])
    total = emit.reduce_sum(powers, _norm_axes(ctx, node), keepdims=True)
    if epsilon:
        total = emit.op("Max", [total, emit.const(epsilon**p)])
    return {0: emit.mul(rho[0], emit.op("Pow", [total, emit.const(-1.0 / p)]))}


def _lrn_check(ctx, node):
    if not isinstance(ctx.shape(node.inputs[0])[1], int):
        return "LRN over a dynamic number of channels is not supported"
    return None


@rule("LRN", check=_lrn_check, kind=NORMALIZATION)
def lrn(ctx, node, rho):
    """y = x·d^(−β), d = bias + α/size·Σ_window x² over neighbouring channels, d held constant:
    rho_x = rho_y·d^(−β). The window sum is an AveragePool (count_include_pad) over the channel axis of
    x² viewed as [N, 1, C, rest], over (size − 1) // 2 channels before each (ONNX; torch's written out,
    passes/local_response.py: size // 2); d is recomputed from x rather than read off y/x (no division)."""
    emit, x = ctx.emit, node.inputs[0]
    size = int(node.attrs["size"])
    before = int(node.attrs.get(PLANNED_WINDOW_BEFORE, (size - 1) // 2))
    channels = int(ctx.shape(x)[1])
    square = emit.op("Reshape", [emit.mul(x, x), emit.ints([0, 1, channels, -1])])
    mean = emit.op("AveragePool", [square], {"kernel_shape": [size, 1], "count_include_pad": 1,
                                             "pads": [before, 0, size - 1 - before, 0]})
    d = emit.op("Add", [emit.mul(mean, emit.const(float(node.attrs.get("alpha", 1e-4)))),
                        emit.const(float(node.attrs.get("bias", 1.0)))])
    factor = emit.op("Pow", [d, emit.const(-float(node.attrs.get("beta", 0.75)))])
    return {0: emit.mul(rho[0], emit.reshape_like(factor, x))}

"""Linear layers with constant weights: the relative rule is the adjoint of the linear part."""

from __future__ import annotations

import numpy as np

from ..ir import NO_CUDA_CONV_TRANSPOSE
from .elementwise import product
from .geometry import Window
from .registry import LAYER, NORMALIZATION, rule
from .winograd import KERNEL, pays, winograd_conv


# ONNX Runtime's blocked (NCHWc) Conv pads its output channels to a block of 8 or 16: below 16 outputs
# the padded Conv took longer than ConvTranspose (1.4-2.9x for 3 to 8 channels, measured on this CPU).
FEW_CHANNELS = 16


def _constant_weights(ctx, node):
    weights = [ctx.constant(t) is not None for t in node.inputs[1:2]]
    if not all(weights):
        return f"{node.op} with weights computed at run time is not supported"
    return None


def _flipped(emit, weights, group: int):
    """The weights of the adjoint as a convolution: per group, input and output channels swapped and
    the kernel turned by 180°; computed in the graph (ONNX Runtime folds it when it opens the model)."""
    out_channels, in_per_group, *kernel = weights.shape
    rank, out_per_group = len(kernel), out_channels // group
    if group == 1:
        weights = emit.op("Transpose", [weights], {"perm": [1, 0, *range(2, 2 + rank)]})
    elif in_per_group > 1 or out_per_group > 1:  # (a depthwise kernel needs no swap)
        grouped = emit.op("Reshape", [weights, emit.ints([group, out_per_group, in_per_group, *kernel])])
        swapped = emit.op("Transpose", [grouped], {"perm": [0, 2, 1, *range(3, 3 + rank)]})
        weights = emit.op("Reshape", [swapped, emit.ints([group * in_per_group, out_per_group, *kernel])])
    axes = list(range(2, 2 + rank))
    return emit.slice(weights, [-1] * rank, [-(2**62)] * rank, axes, [-1] * rank)


def window_adjoint(ctx, rho, weights, window: Window, x, y, group: int):
    """Aᵀ(rho) of a sliding-window linear map from x to y, exactly on x's grid.

    Stride 1: a Conv with the flipped weights (ONNX Runtime runs it faster than ConvTranspose), unless
    it has fewer than FEW_CHANNELS outputs (an image input's adjoint); with ``Emitter.winograd`` a
    large 3x3 one whose pads are 1 is ``winograd_conv`` where that ``pays``.
    Strided with a 1x1 kernel: that Conv on y's grid, then each value placed at its stride point.
    Strided with one input channel per group (depthwise, pools): zeros inserted between the stride
    points first, then the stride-1 Conv (``_dilated``; ONNX Runtime's grouped ConvTranspose is slow).
    Otherwise ConvTranspose with the weights, plus the zero rows or the cut its geometry needs.
    From opset NO_CUDA_CONV_TRANSPOSE on (ONNX Runtime's CUDA provider has no ConvTranspose kernel
    there) every adjoint is a Conv: the placements and the other strided adjoints are ``_dilated``,
    an image input's adjoint is the stride-1 Conv."""
    emit = ctx.emit
    rank = len(window.kernel)
    in_channels = int(ctx.shape(x)[1])
    transposable = emit.opset < NO_CUDA_CONV_TRANSPOSE
    few_channels = transposable and group == 1 and in_channels < FEW_CHANNELS
    fits = not transposable or min(window.adjoint_pads()) >= 0
    if all(s == 1 for s in window.strides) and fits and not few_channels:
        if _by_winograd(ctx, weights, window, x, group):
            channels = (int(weights.shape[1]), int(weights.shape[0]))  # the adjoint's outputs, inputs
            return winograd_conv(emit, rho, _flipped(emit, weights, group), channels, ctx.spatial(x))
        return _flipped_conv(emit, rho, weights, window, group)
    if all(k == 1 for k in window.kernel):
        on_y_grid = emit.op("Conv", [rho, _flipped(emit, weights, group)], {"group": group})
        points = Window((1,) * rank, window.strides, (1,) * rank, window.pads_begin, window.pads_end)
        place = _transposed if transposable else _dilated
        return place(ctx, on_y_grid, ones_kernel(emit, in_channels, points.kernel), points, x, y, in_channels)
    if not transposable or (weights.shape[1] == 1
                            and min(window.unstrided(ctx.spatial(x), ctx.spatial(y)).adjoint_pads()) >= 0):
        return _dilated(ctx, rho, weights, window, x, y, group)
    return _transposed(ctx, rho, weights, window, x, y, group)


def _by_winograd(ctx, weights, window: Window, x, group: int) -> bool:
    """Whether a stride-1 adjoint is computed by ``winograd_conv`` (``Emitter.winograd``)."""
    if not ctx.emit.winograd or group != 1 or window.kernel != (KERNEL, KERNEL) or weights.dtype != np.float32:
        return False
    return (window.dilations == (1, 1) and window.adjoint_pads() == [1, 1, 1, 1]
            and pays(int(weights.shape[0]), int(weights.shape[1]), ctx.spatial(x)))


def _dilated(ctx, rho, weights, window: Window, x, y, group: int):
    """Zeros inserted between ``rho``'s values (on y's grid) at the stride points (``Emitter.dilate``),
    then the stride-1 adjoint Conv onto x's grid."""
    spread = ctx.emit.dilate(rho, window.strides, int(weights.shape[0]), ctx.spatial(y))
    return _flipped_conv(ctx.emit, spread, weights, window.unstrided(ctx.spatial(x), ctx.spatial(y)), group)


def ones_kernel(emit, channels: int, kernel):
    """Depthwise all-ones weights ``[channels, 1, *kernel]`` (expanded in the graph from one value)."""
    return emit.filled(1.0, [channels, 1, *kernel])


def _flipped_conv(emit, rho, weights, window: Window, group: int):
    """The adjoint of a stride-1 window: a Conv with the flipped weights and the adjoint pads; a
    negative pad (the window reaches past its pads) cuts that many cells off the result instead."""
    pads = window.adjoint_pads()
    attrs = {"pads": [max(p, 0) for p in pads], "dilations": list(window.dilations), "group": group}
    out = emit.op("Conv", [rho, _flipped(emit, weights, group)], attrs)
    rank = len(pads) // 2
    cut = [a for a in range(rank) if min(pads[a], pads[rank + a]) < 0]
    if cut:
        out = emit.slice(out, [max(-pads[a], 0) for a in cut], [min(pads[rank + a], 0) or 2**62 for a in cut],
                         [2 + a for a in cut])
    return out


def _transposed(ctx, rho, weights, window: Window, x, y, group: int):
    """ConvTranspose with the weights (symmetric pads), then cut or zero-padded onto x's grid.

    Weights with as many rows as columns (the first two axes) are doubled and the result halved, both
    exact: OpenVINO (2026.4, CPU) gives a ConvTranspose the wrong weights when a Conv reads a tensor of
    the same shape and values (the forward layer, or a classical rule's z), and the halving comes free
    in ``Emitter.blocked``'s Conv."""
    emit = ctx.emit
    square = weights.shape[0] == weights.shape[1]
    if square:
        weights = emit.mul(weights, emit.const(2.0))
    attrs, keep, zeros = window.transpose(ctx.spatial(x), ctx.spatial(y))
    if group != 1:
        attrs["group"] = group
    out = emit.op("ConvTranspose", [rho, weights], attrs)
    axes = [i for i, rows in enumerate(keep) if rows is not None]
    if axes:
        out = emit.slice(out, [keep[i][0] for i in axes], [keep[i][1] for i in axes], [2 + i for i in axes])
    if any(zeros):
        out = emit.pad(out, [0] * (2 + len(zeros)) + [0, 0] + list(zeros))
    return emit.blocked(out, x, 0.5 if square else 1.0)


@rule("Conv", check=_constant_weights, kind=LAYER, spatial=True)
def conv(ctx, node, rho):
    """rho_x = ConvTranspose(rho_y, W): the same weights, geometry mapped back onto the input grid."""
    x, w = node.inputs[0], node.inputs[1]
    window = Window.from_node(node, ctx.spatial(x), w.shape[2:])
    return {0: window_adjoint(ctx, rho[0], w, window, x, node.outputs[0], node.attrs.get("group", 1))}


def _gemm_check(ctx, node):
    data = [ctx.is_data(t) for t in node.inputs[:2]]
    if all(data):
        return "Gemm of two runtime tensors is not supported"
    return None


def _weight_times_rho_transposed(emit, weight, rho, trans_weight: int, alpha: float = 1.0):
    """``alpha·W'·rhoᵀ = (alpha·rho·W'ᵀ)ᵀ`` for a 2-D relevance ``rho`` and a weight read as ``W' = W`` (or
    ``Wᵀ`` with ``trans_weight``): the adjoint with the weight as the first Gemm operand, which the
    callers transpose where they need ``rho·W'ᵀ`` itself. OpenVINO (2026.4, CPU) computes a product
    wrongly when a square weight is the second operand of two products that read it with different
    transposition (the forward layer's and the adjoint)."""
    return emit.op("Gemm", [weight, rho], {"alpha": alpha, "transA": trans_weight, "transB": 1})


def _transposed_2d(emit, tensor):
    return emit.op("Transpose", [tensor], {"perm": [1, 0]})


@rule("Gemm", check=_gemm_check, kind=LAYER)
def gemm(ctx, node, rho):
    """y = alpha·A'·B' (+ beta·C): rho_A' = alpha·rho·B'ᵀ, rho_B' = alpha·A'ᵀ·rho, transposed back as needed."""
    a, b = node.inputs[0], node.inputs[1]
    alpha = float(node.attrs.get("alpha", 1.0))
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    result = {}
    if ctx.is_data(a):
        # rho_A' = alpha·rho·B'ᵀ; for transA, rho_A = (rho_A')ᵀ = alpha·B'·rhoᵀ
        product = _weight_times_rho_transposed(ctx.emit, b, rho[0], trans_b, alpha)
        result[0] = product if trans_a else _transposed_2d(ctx.emit, product)
    elif ctx.is_data(b):
        # rho_B' = alpha·A'ᵀ·rho; for transB, rho_B = alpha·rhoᵀ·A'
        if trans_b:
            result[1] = ctx.emit.op("Gemm", [rho[0], a], {"alpha": alpha, "transA": 1, "transB": trans_a})
        else:
            result[1] = ctx.emit.op("Gemm", [a, rho[0]], {"alpha": alpha, "transA": 1 - trans_a})
    if len(node.inputs) > 2 and ctx.is_data(node.inputs[2]):
        beta = ctx.emit.mul(rho[0], ctx.emit.const(float(node.attrs.get("beta", 1.0))))
        result[2] = ctx.unbroadcast(beta, node.inputs[2], ctx.shape(node.outputs[0]))
    return result


def _matmul_check(ctx, node):
    if all(ctx.is_data(t) for t in node.inputs[:2]) and min(len(ctx.shape(t)) for t in node.inputs[:2]) < 2:
        return "MatMul of two runtime tensors is supported for operands of rank >= 2"
    return None


def _swapped(emit, tensor, rank: int):
    """``tensor`` with its last two axes swapped."""
    return emit.op("Transpose", [tensor], {"perm": [*range(rank - 2), rank - 1, rank - 2]})


@rule("MatMul", check=_matmul_check, kind=LAYER)
def matmul(ctx, node, rho):
    """y = X·W: rho_X = rho·Wᵀ; y = W·X: rho_X = Wᵀ·rho (as Gemm on the shared weights where 2-D).
    y = U·V of two data tensors (attention): a product (``elementwise.product``) with the adjoints
    rho·Vᵀ and Uᵀ·rho, summed over broadcast batch axes."""
    emit = ctx.emit
    if all(ctx.is_data(t) for t in node.inputs[:2]):
        return _data_product(ctx, node, rho[0])
    x_index = 0 if ctx.is_data(node.inputs[0]) else 1
    x, w = node.inputs[x_index], node.inputs[1 - x_index]
    w_rank = len(ctx.shape(w))
    if x_index == 0 and w_rank == 2:
        flat = emit.op("Reshape", [rho[0], emit.ints([-1, int(ctx.shape(w)[1])])])
        return {0: emit.reshape_like(_transposed_2d(emit, _weight_times_rho_transposed(emit, w, flat, 0)), x)}
    if x_index == 1 and w_rank == 2 and len(ctx.shape(x)) == 2:
        return {1: emit.op("Gemm", [w, rho[0]], {"transA": 1})}
    w_t = _swapped(emit, w, w_rank)
    pair = [rho[0], w_t] if x_index == 0 else [w_t, rho[0]]
    adjoint_shape = ctx.shape(node.outputs[0])[:-2] + ctx.shape(x)[-2:]  # y's batch axes, x's matrix axes
    return {x_index: ctx.unbroadcast(emit.op("MatMul", pair), x, adjoint_shape)}


def _data_product(ctx, node, rho):
    emit, y = ctx.emit, node.outputs[0]
    batch = ctx.shape(y)[:-2]

    def adjoint(i, r):
        operand, other = node.inputs[i], node.inputs[1 - i]
        held = _swapped(emit, other, len(ctx.shape(other)))
        out = emit.op("MatMul", [r, held] if i == 0 else [held, r])
        return ctx.unbroadcast(out, operand, batch + ctx.shape(operand)[-2:])

    return product(ctx, node, rho, adjoint)


def _batchnorm_check(ctx, node):
    if node.attrs.get("training_mode", 0):
        return "BatchNormalization in training mode is not supported"
    if any(ctx.constant(t) is None for t in node.inputs[1:5]):
        return "BatchNormalization with statistics computed at run time is not supported"
    return None


@rule("BatchNormalization", check=_batchnorm_check, kind=NORMALIZATION)
def batchnorm(ctx, node, rho):
    """y = (x − mean)·scale/√(var+ε) + B: rho_x = rho·scale/√(var+ε) per channel."""
    scale, var = ctx.constant(node.inputs[1]), ctx.constant(node.inputs[4])
    eps = float(node.attrs.get("epsilon", 1e-5))
    factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    rank = len(ctx.shape(node.inputs[0]))
    factor = factor.reshape([-1] + [1] * (rank - 2))
    return {0: ctx.emit.mul(rho[0], ctx.emit.const(factor))}

"""Ops that only move elements: relevance is routed back to where each element came from."""

from __future__ import annotations

import numpy as np
import onnx

from ..ir import text
from .registry import rule
from .routing import scatter_axis


@rule("Identity", "Dropout")
def identity(ctx, node, rho):
    """rho_x = rho_y (Dropout at inference is the identity)."""
    return {0: rho[0]}


def _float_cast(ctx, node):
    if onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]).kind != "f":
        return "Cast to a non-float type on the relevance path is not supported"
    return None


@rule("Cast", check=_float_cast)
def cast(ctx, node, rho):
    """rho_x = rho_y, in the input's float type."""
    return {0: rho[0]}


@rule("Expand")
def expand(ctx, node, rho):
    """rho_x = rho_y summed over the broadcast axes."""
    return {0: ctx.unbroadcast(rho[0], node.inputs[0], ctx.shape(node.outputs[0]))}


def _tile_check(ctx, node):
    repeats = ctx.constant(node.inputs[1])
    if repeats is None:
        return "Tile with repeats computed at run time is not supported"
    dynamic = [a for a, size in enumerate(ctx.shape(node.inputs[0])) if not isinstance(size, int)]
    if len(dynamic) > 1 or any(int(repeats[a]) != 1 for a in dynamic):
        return "Tile of a dynamic axis, or of several, is not supported"
    return None


@rule("Tile", check=_tile_check)
def tile(ctx, node, rho):
    """rho_x = rho_y summed over the copies: each tiled axis of y split into (copies, size), the copies
    summed (a dynamic axis, never tiled, is Reshape's -1)."""
    split, copies = [], []
    for size, repeat in zip(ctx.shape(node.inputs[0]), ctx.constant(node.inputs[1]).tolist()):
        if repeat != 1:
            copies.append(len(split))
            split.append(int(repeat))
        split.append(size if isinstance(size, int) else -1)
    if not copies:
        return {0: rho[0]}
    return {0: ctx.emit.reduce_sum(ctx.emit.op("Reshape", [rho[0], ctx.emit.ints(split)]), copies, keepdims=False)}


@rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx, node, rho):
    """rho_x = rho_y reshaped to x's shape (taken into the blocked layout where an image-like x comes out
    of a classifier's head)."""
    emit, x = ctx.emit, node.inputs[0]
    shaped = emit.reshape_like(rho[0], x)
    return {0: emit.blocked(shaped, x) if len(ctx.shape(node.outputs[0])) != 4 else shaped}


def _pads(ctx, node):
    """(begin, end) pads per axis of x, or None when not constant."""
    rank = len(ctx.shape(node.inputs[0]))
    if len(node.inputs) > 1:
        pads = ctx.constant(node.inputs[1])
        if pads is None:
            return None
        pads = pads.tolist()
        axes = list(range(rank))
        if len(node.inputs) > 3 and node.inputs[3].name:
            given = ctx.constant(node.inputs[3])
            if given is None:
                return None
            axes = [a % rank for a in given.tolist()]
    else:
        pads = list(node.attrs.get("pads", []))
        axes = list(range(rank))
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = int(pads[i]), int(pads[n + i])
    return begin, end


COPYING_PADS = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}  # ONNX mode: NumPy's np.pad mode


def _pad_check(ctx, node):
    mode = text(node.attrs.get("mode", "constant"))
    if mode != "constant" and mode not in COPYING_PADS:
        return f"Pad mode '{mode}' is not supported"
    pads = _pads(ctx, node)
    if pads is None:
        return "Pad with pads computed at run time is not supported"
    shape = ctx.shape(node.inputs[0])
    if any((b or e) and not isinstance(shape[a], int) for a, (b, e) in enumerate(zip(*pads))):
        return "Pad along a dynamic axis is not supported"
    if mode != "constant" and min(*pads[0], *pads[1]) < 0:
        return f"Pad mode '{mode}' with a negative pad is not supported"
    reach = {"reflect": 1, "wrap": 0}.get(mode)  # a longer pad copies copies, where runtimes differ
    if reach is not None and any(max(b, e) > shape[a] - reach for a, (b, e) in enumerate(zip(*pads)) if b or e):
        return f"Pad mode '{mode}' with a pad longer than the axis{' less one' if reach else ''} is not supported"
    return None


@rule("Pad", check=_pad_check)
def pad(ctx, node, rho):
    """Constant padding: rho_x = rho_y cropped back to x (a negative pad crops, so the adjoint pads with
    zeros). Reflect, edge and wrap padding copy elements of x: each padded axis is a constant index map,
    whose adjoint sums rho_y back onto the elements copied (``scatter_axis``)."""
    emit, x = ctx.emit, node.inputs[0]
    begin, end = _pads(ctx, node)
    shape = ctx.shape(x)
    axes = [a for a, (b, e) in enumerate(zip(begin, end)) if b or e]
    r = rho[0]
    mode = text(node.attrs.get("mode", "constant"))
    if mode != "constant":
        for axis in axes:
            taken = np.pad(np.arange(shape[axis]), (begin[axis], end[axis]), mode=COPYING_PADS[mode])
            r = scatter_axis(ctx, r, len(shape), axis, taken, shape[axis])
        return {0: r}
    starts = [max(begin[a], 0) for a in axes]
    ends = [s + shape[a] - max(-begin[a], 0) - max(-end[a], 0) for s, a in zip(starts, axes)]
    if axes:
        r = emit.slice(r, starts, ends, axes)
    if any(b < 0 or e < 0 for b, e in zip(begin, end)):
        r = emit.pad(r, [max(-b, 0) for b in begin] + [max(-e, 0) for e in end])
    return {0: r}


def _concat_check(ctx, node):
    shapes = [ctx.shape(t) for t in node.inputs]
    axis = node.attrs["axis"] % len(shapes[0])
    if not all(isinstance(s[axis], int) for s in shapes):
        return "Concat along a dynamic axis is not supported"
    return None


@rule("Concat", check=_concat_check)
def concat(ctx, node, rho):
    """Each input receives its own slice of rho_y along the concatenation axis."""
    shapes = [ctx.shape(t) for t in node.inputs]
    axis = node.attrs["axis"] % len(shapes[0])
    result, start = {}, 0
    for index, (tensor, shape) in enumerate(zip(node.inputs, shapes)):
        size = shape[axis]
        if ctx.is_data(tensor):
            result[index] = ctx.emit.slice(rho[0], [start], [start + size], [axis])
        start += size
    return result

"""Pooling: average pools are linear maps (adjoint), max pools route relevance to the window's winner."""

from __future__ import annotations

import numpy as np

from .geometry import Window
from .linear import ones_kernel, window_adjoint
from .registry import LINEAR, rule


def _window(ctx, node):
    x = node.inputs[0]
    return Window.from_node(node, ctx.spatial(x), node.attrs["kernel_shape"])


@rule("AveragePool", kind=LINEAR)
def average_pool(ctx, node, rho):
    """rho_x = Aᵀ(rho_y): divide by each window's size, then spread over the window (ConvTranspose of ones)."""
    emit, x = ctx.emit, node.inputs[0]
    in_spatial, out_spatial = ctx.spatial(x), ctx.spatial(node.outputs[0])
    window = _window(ctx, node)
    sizes = window.window_sizes(in_spatial, out_spatial, bool(node.attrs.get("count_include_pad", 0)))
    inverse = (1.0 / sizes).astype(np.float32)
    scale = inverse.flat[0] if np.all(inverse == inverse.flat[0]) else inverse[None, None]
    channels = int(ctx.shape(x)[1])
    scaled = emit.mul(rho[0], emit.const(scale))
    return {0: window_adjoint(ctx, scaled, ones_kernel(emit, channels, window.kernel), window, x,
                              node.outputs[0], channels)}


@rule("GlobalAveragePool", kind=LINEAR)
def global_average_pool(ctx, node, rho):
    """rho_x = rho_y / (number of spatial positions), broadcast over them."""
    x = node.inputs[0]
    return {0: ctx.emit.spread(rho[0], x, 1.0 / float(np.prod(ctx.spatial(x))))}


def _reduce_axes(ctx, node):
    """The reduced axes (non-negative) of a ReduceMean/ReduceSum node, or None if not constant."""
    rank = len(ctx.shape(node.inputs[0]))
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = ctx.constant(node.inputs[1])
        if axes is None:
            return None
        axes = axes.tolist()
    else:
        axes = node.attrs.get("axes")
    if not axes:
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def _reduce_check(ctx, node):
    if _reduce_axes(ctx, node) is None:
        return f"{node.op} over axes computed at run time is not supported"
    if any(not isinstance(ctx.shape(node.inputs[0])[a], int) for a in _reduce_axes(ctx, node)):
        return f"{node.op} over a dynamic axis is not supported"
    return None


@rule("ReduceMean", "ReduceSum", check=_reduce_check, kind=LINEAR)
def reduce(ctx, node, rho):
    """rho_x = rho_y broadcast back over the reduced axes (divided by their size for the mean)."""
    emit, x = ctx.emit, node.inputs[0]
    axes = _reduce_axes(ctx, node)
    r = rho[0]
    if axes and not node.attrs.get("keepdims", 1):
        r = emit.unsqueeze(r, axes)
    scale = 1.0 / float(np.prod([ctx.shape(x)[a] for a in axes])) if node.op == "ReduceMean" else 1.0
    return {0: emit.spread(r, x, scale)}


def _maxpool_check(ctx, node):
    if int(node.attrs.get("storage_order", 0)) != 0:
        return "MaxPool with storage_order=1 is not supported"
    if ctx.emit.opset < 16 and not _window(ctx, node).disjoint:
        return f"MaxPool with overlapping windows needs opset >= 16 (model has {ctx.emit.opset})"
    return None


def relu_masked_by_pools(ctx, relu) -> bool:
    """Whether every reader of ``relu``'s output is a MaxPool, which then applies the Relu's mask at the
    pooled resolution (R-LRP only): relevance reaches only each window's winner, whose Relu output is
    the pooled value, so ``[y > 0]`` of the winner is ``[pooled > 0]`` (a smaller tensor to mask)."""
    readers = ctx.readers(relu.outputs[0])
    return ctx.relative and bool(readers) and all(n.op == "MaxPool" for n in readers)


@rule("MaxPool", check=_maxpool_check)
def max_pool(ctx, node, rho):
    """Each output's rho goes to the input position that won its window (ONNX ``Indices``), summed where
    windows overlap (a plain scatter where they cannot)."""
    emit, x = ctx.emit, node.inputs[0]
    r = rho[0]
    source = ctx.producer(x)
    if source is not None and source.op == "Relu" and relu_masked_by_pools(ctx, source):
        r = emit.gate(r, node.outputs[0], low=0.0)
    indices = node.outputs[1] if len(node.outputs) > 1 else \
        emit.op("MaxPool", [x], dict(node.attrs), n_out=2)[1]
    flat = emit.ints([-1])
    zeros = emit.op("Expand", [emit.const(0.0), emit.op("Shape", [emit.op("Reshape", [x, flat])])])
    reduction = {} if _window(ctx, node).disjoint else {"reduction": "add"}
    routed = emit.op("ScatterElements", [zeros, emit.op("Reshape", [indices, flat]),
                                         emit.op("Reshape", [r, flat])], {"axis": 0, **reduction})
    return {0: emit.reshape_like(routed, x)}

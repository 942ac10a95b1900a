"""Pooling and sums over axes: average pools, ReduceMean/ReduceSum and CumSum are linear maps (adjoint),
max pools (and ReduceMax) route relevance to the window's winner."""

from __future__ import annotations

import numpy as np
import onnx

from ..ir import NO_CUDA_MAX_POOL
from .geometry import Window
from .linear import ones_kernel, window_adjoint
from .registry import LINEAR, rule
from .statistics import reduce_axes

SCATTER_ADDS = 16  # the opset from which ScatterElements can sum (reduction="add")


def _window(ctx, node):
    x = node.inputs[0]
    return Window.from_node(node, ctx.spatial(x), node.attrs["kernel_shape"])


def _ceil_check(ctx, node):
    """A ceil-mode pool whose planned output has a last window starting past the input: ONNX Runtime (and
    torch) drop that window, onnx's shape inference (1.23) keeps it, so the relevance pass would be built
    for an output of another size than the one the model computes."""
    if not int(node.attrs.get("ceil_mode", 0)):
        return None
    window = _window(ctx, node)
    if any((out - 1) * s >= size + begin for out, s, size, begin
           in zip(ctx.spatial(node.outputs[0]), window.strides, ctx.spatial(node.inputs[0]), window.pads_begin)):
        return (f"{node.op} with ceil_mode whose last window starts past the input: ONNX Runtime drops it, "
                "ONNX's shape inference keeps it; export without ceil_mode, or with pads that make it unneeded")
    return None


@rule("AveragePool", check=_ceil_check, kind=LINEAR, spatial=True)
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


@rule("GlobalAveragePool", kind=LINEAR, spatial=True)
def global_average_pool(ctx, node, rho):
    """rho_x = rho_y / (number of spatial positions), broadcast over them."""
    x = node.inputs[0]
    return {0: ctx.emit.spread(rho[0], x, 1.0 / float(np.prod(ctx.spatial(x))))}


def _reduce_check(ctx, node):
    if reduce_axes(ctx, node) is None:
        return f"{node.op} over axes computed at run time is not supported"
    if any(not isinstance(ctx.shape(node.inputs[0])[a], int) for a in reduce_axes(ctx, node)):
        return f"{node.op} over a dynamic axis is not supported"
    return None


@rule("ReduceMean", "ReduceSum", check=_reduce_check, kind=LINEAR)
def reduce(ctx, node, rho):
    """rho_x = rho_y broadcast back over the reduced axes (divided by their size for the mean)."""
    emit, x = ctx.emit, node.inputs[0]
    axes = reduce_axes(ctx, node)
    r = rho[0]
    if axes and not node.attrs.get("keepdims", 1):
        r = emit.unsqueeze(r, axes)
    scale = 1.0 / float(np.prod([ctx.shape(x)[a] for a in axes])) if node.op == "ReduceMean" else 1.0
    return {0: emit.spread(r, x, scale)}


def _cumsum_check(ctx, node):
    if ctx.constant(node.inputs[1]) is None:
        return "CumSum along an axis computed at run time is not supported"
    return None


@rule("CumSum", check=_cumsum_check, kind=LINEAR)
def cumsum(ctx, node, rho):
    """The adjoint of a cumulative sum runs the other way: rho_x = CumSum(rho_y) with ``reverse`` toggled
    (``exclusive`` kept)."""
    attrs = {"exclusive": int(node.attrs.get("exclusive", 0)), "reverse": 1 - int(node.attrs.get("reverse", 0))}
    return {0: ctx.emit.op("CumSum", [rho[0], node.inputs[1]], attrs)}


@rule("ReduceMax", "GlobalMaxPool", check=_reduce_check)
def reduce_max(ctx, node, rho):
    """rho_y goes to the first maximum over the reduced axes (row-major among them, as a MaxPool routes to
    its window's first maximum): ArgMax over those axes moved last and flattened, taken as a one-hot mask
    in x's layout, times rho_y broadcast back over them."""
    emit, x = ctx.emit, node.inputs[0]
    shape, axes = ctx.shape(x), reduce_axes(ctx, node)
    kept = [a for a in range(len(shape)) if a not in axes]
    order, sizes = kept + axes, [int(shape[a]) for a in axes]
    moved = emit.op("Transpose", [x], {"perm": order}) if order != sorted(order) else x
    count, copied = int(np.prod(sizes)), [0] * len(kept)  # Reshape's 0: that size of its input
    first = emit.op("ArgMax", [emit.op("Reshape", [moved, emit.ints([*copied, count])])],
                    {"axis": len(kept), "keepdims": 1})
    # OneHot, not Equal + Cast: ONNX Runtime's CUDA provider has no kernel for Equal-19
    won = emit.op("OneHot", [first, emit.scalar_int(count), emit.const([0.0, 1.0])], {"axis": -1})
    won = emit.op("Reshape", [won, emit.ints([*copied, *sizes])])
    if order != sorted(order):
        won = emit.op("Transpose", [won], {"perm": np.argsort(order).tolist()})
    r = rho[0]
    if node.op == "ReduceMax" and not node.attrs.get("keepdims", 1):
        r = emit.unsqueeze(r, axes)
    return {0: emit.mul(won, r)}


def _maxpool_check(ctx, node):
    if int(node.attrs.get("storage_order", 0)) != 0:
        return "MaxPool with storage_order=1 is not supported"
    return _ceil_check(ctx, node)


def relu_masked_by_pools(ctx, relu) -> bool:
    """Whether every reader of ``relu``'s output is a MaxPool, which then applies the Relu's mask at the
    pooled resolution (R-LRP only): relevance reaches only each window's winner, whose Relu output is
    the pooled value, so ``[y > 0]`` of the winner is ``[pooled > 0]`` (a smaller tensor to mask)."""
    readers = ctx.readers(relu.outputs[0])
    return ctx.relative and bool(readers) and all(n.op == "MaxPool" for n in readers)


@rule("MaxPool", check=_maxpool_check, spatial=True)
def max_pool(ctx, node, rho):
    """Each output's rho goes to the input position that won its window: where the windows tile the input,
    by ``_route_by_cells``; where they overlap below opset 16 (ScatterElements cannot add there), by
    ``_route_by_kernel``; else scattered to ONNX's ``Indices`` (from opset NO_CUDA_MAX_POOL on, to
    ``_first_winners``), summed where windows overlap."""
    emit, x = ctx.emit, node.inputs[0]
    r = rho[0]
    source = ctx.producer(x)
    if source is not None and source.op == "Relu" and relu_masked_by_pools(ctx, source):
        r = emit.gate(r, node.outputs[0], low=0.0)
    if _tiles(ctx, node):
        return {0: _route_by_cells(ctx, node, r)}
    if emit.opset < SCATTER_ADDS and not _window(ctx, node).disjoint:
        return {0: _route_by_kernel(ctx, node, r)}
    if emit.opset >= NO_CUDA_MAX_POOL:  # per (sample, channel) row: positions within it
        rows, cells = [-1, int(np.prod(ctx.spatial(x)))], [-1, int(np.prod(ctx.spatial(node.outputs[0])))]
        indices, axis = _first_winners(ctx, node), 1
    else:  # ONNX Runtime's MaxPool indices count over the whole tensor
        rows = cells = [-1]
        indices, axis = node.outputs[1] if len(node.outputs) > 1 else \
            emit.op("MaxPool", [x], dict(node.attrs), n_out=2)[1], 0
    row_shape, zero = emit.ints(rows), emit.const(0.0)  # (this order keeps earlier files' node names)
    zeros = emit.op("Expand", [zero, emit.op("Shape", [emit.op("Reshape", [x, row_shape])])])
    reduction = {} if _window(ctx, node).disjoint else {"reduction": "add"}
    routed = emit.op("ScatterElements", [zeros, emit.op("Reshape", [indices, emit.ints(cells)]),
                                         emit.op("Reshape", [r, emit.ints(cells)])], {"axis": axis, **reduction})
    return {0: emit.reshape_like(routed, x)}


def _route_by_kernel(ctx, node, r):
    """``r`` routed to each window's first maximum (``_winning_cells``) without a scatter: per kernel
    cell, ``r`` where that cell won, stacked as ``channels × cells`` channels (lrp0's NaN reaches the
    whole window, through the products and the adjoint's zero taps); the adjoint of the grouped
    Conv that takes each window's cells out of x (one-hot kernels) puts every share at its cell of the
    input, summing where windows overlap."""
    emit, x, y = ctx.emit, node.inputs[0], node.outputs[0]
    window, channels = _window(ctx, node), int(ctx.shape(x)[1])
    cells, rank = int(np.prod(window.kernel)), len(window.kernel)
    numbers = emit.const(np.arange(cells).reshape(1, 1, cells, *[1] * rank), np.int64)
    won = emit.op("Cast", [emit.op("Equal", [emit.unsqueeze(_winning_cells(ctx, node), [2]), numbers])],
                  {"to": onnx.TensorProto.FLOAT})
    shares = emit.op("Reshape", [emit.mul(won, emit.unsqueeze(r, [2])),
                                 emit.ints([0, channels * cells, *ctx.spatial(y)])])
    one_hot = np.eye(cells, dtype=np.float32).reshape(1, cells, 1, *window.kernel)
    copies = emit.op("Expand", [emit.const(one_hot), emit.ints([channels, *one_hot.shape[1:]])], early=True)
    kernels = emit.op("Reshape", [copies, emit.ints([channels * cells, 1, *window.kernel])], early=True)
    kernels.shape, kernels.dtype = [channels * cells, 1, *window.kernel], np.float32
    return window_adjoint(ctx, shares, kernels, window, x, y, channels)


def _winning_cells(ctx, node):
    """For each MaxPool output, the kernel cell (row-major) holding its window's first maximum: the input
    padded with −inf, one strided Slice per kernel cell, stacked, ArgMax (the first maximum)."""
    emit, x = ctx.emit, node.inputs[0]
    window = _window(ctx, node)
    in_spatial, out_spatial = ctx.spatial(x), ctx.spatial(node.outputs[0])
    axes = list(range(2, 2 + len(in_spatial)))
    spans = [(o - 1) * s + 1 for o, s in zip(out_spatial, window.strides)]
    ends = [max(span + (k - 1) * d - b - n, 0) for span, k, d, b, n in zip(
        spans, window.kernel, window.dilations, window.pads_begin, in_spatial)]
    padded = emit.pad(x, [0, 0, *window.pads_begin, 0, 0, *ends], value=-np.inf)
    cells = []
    for offset in np.ndindex(*window.kernel):
        starts = [t * d for t, d in zip(offset, window.dilations)]
        cell = emit.slice(padded, starts, [a + span for a, span in zip(starts, spans)], axes, list(window.strides))
        cells.append(emit.unsqueeze(cell, [2]))
    return emit.op("ArgMax", [emit.op("Concat", cells, {"axis": 2})], {"axis": 2, "keepdims": 0})


def _first_winners(ctx, node):
    """For each MaxPool output, the position of its window's first maximum within its (sample, channel)
    plane of the input, row-major: the winning cell (``_winning_cells``) turned into a position by
    constant tables. No MaxPool, whose CUDA kernel ONNX Runtime lacks from opset NO_CUDA_MAX_POOL on."""
    emit, x = ctx.emit, node.inputs[0]
    window = _window(ctx, node)
    in_spatial, out_spatial = ctx.spatial(x), ctx.spatial(node.outputs[0])
    offsets = list(np.ndindex(*window.kernel))
    winner = _winning_cells(ctx, node)
    step = np.cumprod([1, *in_spatial[:0:-1]])[::-1]  # of each spatial axis in the row-major plane
    shift = [sum(t * d * st for t, d, st in zip(offset, window.dilations, step)) for offset in offsets]
    grids = np.meshgrid(*[np.arange(o) * s - b for o, s, b in zip(out_spatial, window.strides, window.pads_begin)],
                        indexing="ij")
    base = sum(grid * st for grid, st in zip(grids, step))
    return emit.op("Add", [emit.op("Gather", [emit.const(shift, np.int64), winner]), emit.const(base, np.int64)])


def _tiles(ctx, node) -> bool:
    """Whether ``_route_by_cells`` can route this MaxPool: 2-D windows that tile the input (kernel =
    stride, no pads, no dilation; input rows or columns past the last window are left out) on static
    sizes, the masks as steps (compile_model's masks="steps"), R-LRP's relevance, which is finite (its
    arithmetic would spread a classical rule's NaN, lrp0's 0/0, over the window)."""
    emit, x, y = ctx.emit, node.inputs[0], node.outputs[0]
    window = _window(ctx, node)
    in_sizes, out_sizes = ctx.shape(x)[2:], ctx.shape(y)[2:]
    return (emit.step_masks and ctx.relative and emit.blockable(x) and emit.blockable(y)
            and all(isinstance(d, int) for d in in_sizes + out_sizes) and window.kernel == window.strides
            and set(window.dilations) == {1} and not any(window.pads_begin + window.pads_end)
            and all(o * k <= n for o, k, n in zip(out_sizes, window.kernel, in_sizes)))


def _route_by_cells(ctx, node, r):
    """``r`` routed to each window's first maximum where the windows tile the input, with no MaxPool
    ``Indices`` and no scatter (both slow on ONNX Runtime's CPU provider), its steps in its blocked layout.

    For each kernel cell in row-major order but the last: a strided depthwise Conv of one-hot kernels
    takes that cell of every window, minus the window's maximum (0 where the cell ties it, else
    negative); a ``step`` marks the losers; the relevance not yet placed times that step is what passes
    on to the next cell, and the cell's share is the rest (exact: a share is all or nothing). The last
    cell gets what is left. ``_interleaved`` puts each share in its cell.
    Exact for finite activations (a window holding ±inf gets NaN from the one-hot kernel's zero taps)."""
    emit, x, y = ctx.emit, node.inputs[0], node.outputs[0]
    kernel, channels = list(_window(ctx, node).kernel), int(ctx.shape(x)[1])
    cells = int(np.prod(kernel))
    one_hot = np.eye(cells, dtype=np.float32).reshape(cells, 1, *kernel)
    minus_y = emit.op("Conv", [y, emit.filled(-1.0, [channels, 1, 1, 1])], {"group": channels}, early=True)
    shares, left = [], r
    for cell in range(cells - 1):
        pick = emit.op("Expand", [emit.const(one_hot[cell:cell + 1]), emit.ints([channels, 1, *kernel])], early=True)
        cell_values = emit.op("Conv", [x, pick], {"group": channels, "strides": kernel}, early=True)
        below = emit.op("Add", [cell_values, minus_y], early=True)
        below.shape, below.dtype = list(y.shape), np.float32
        passed = emit.mul(left, emit.step(below, 0.0, above=False))
        shares.append(emit.op("Add", [left, emit.blocked(passed, y, -1.0)]))
        left = passed
    shares.append(left)
    return _interleaved(emit, shares, kernel, ctx.shape(y)[2:], ctx.shape(x)[2:])


def _interleaved(emit, shares, kernel, grid, size):
    """The tensor of ``size`` whose window (i, j) holds the cells' ``shares`` (each on the pooled
    ``grid``, in row-major cell order) at its cells, zeros past the last window: per kernel row the
    shares side by side along a new inner axis, then the rows, reshaped onto the input grid (batch and
    channels kept: Reshape's 0)."""
    (kh, kw), (h, w) = kernel, grid
    rows = []
    for row in range(kh):
        cells = [emit.unsqueeze(share, [4]) for share in shares[row * kw:(row + 1) * kw]]  # N, C, h, w, 1
        rows.append(emit.op("Reshape", [emit.op("Concat", cells, {"axis": 4}), emit.ints([0, 0, h, 1, w * kw])]))
    placed = emit.op("Reshape", [emit.op("Concat", rows, {"axis": 3}), emit.ints([0, 0, h * kh, w * kw])])
    rest = [n - o * k for n, o, k in zip(size, grid, kernel)]
    return emit.pad(placed, [0, 0, 0, 0, 0, 0, *rest]) if any(rest) else placed

"""Ops that pick or reorder elements by constant indices (or move them in blocks): each output element's
rho goes back to the input element it was taken from, summed where one element was taken several times,
zero where none was."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import text
from .registry import rule


def scatter_axis(ctx, rho, rank: int, axis: int, index, size: int):
    """The adjoint of taking the elements ``index`` (constant, 1-D, non-negative) along ``axis`` of a
    rank-``rank`` tensor from an axis of length ``size``: rho_x[.., i, ..] = Σ_{j: index[j] = i} rho[.., j, ..].

    A contiguous run becomes zero padding (``Emitter.pad``); otherwise each layer of distinct indices
    (the first occurrence of every value, then the second, ...) is gathered back through its inverse
    map, a zero slot appended where some position is never taken. No scatter op, any opset.
    """
    emit = ctx.emit
    index = np.asarray(index, dtype=np.int64).reshape(-1)

    def pad(tensor, begin, end):
        if not begin and not end:
            return tensor
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = begin, end
        return emit.pad(tensor, pads)

    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return pad(rho, int(index[0]), size - int(index[-1]) - 1)
    occurrence = np.zeros_like(index)
    for value in np.unique(index):
        where = np.flatnonzero(index == value)
        occurrence[where] = np.arange(where.size)
    parts = []
    for layer in range(int(occurrence.max()) + 1 if index.size else 0):
        picked = np.flatnonzero(occurrence == layer)
        part = rho if picked.size == index.size else emit.op("Gather", [rho, emit.ints(picked)], {"axis": axis})
        inverse = np.full(size, picked.size, dtype=np.int64)
        inverse[index[picked]] = np.arange(picked.size)
        if picked.size == size and np.array_equal(inverse, np.arange(size)):  # every position, in order
            parts.append(part)
            continue
        if np.any(inverse == picked.size):
            part = pad(part, 0, 1)
        parts.append(emit.op("Gather", [part, emit.ints(inverse)], {"axis": axis}))
    return emit.total(parts)


def _reshape_static(ctx, tensor, dims):
    """Reshape to ``dims`` (ints, or None for the one dynamic axis, written -1)."""
    return ctx.emit.op("Reshape", [tensor, ctx.emit.ints([-1 if d is None else d for d in dims])])


def _static(ctx, tensor, axes) -> bool:
    shape = ctx.shape(tensor)
    return len(shape) > 0 and all(isinstance(shape[a], int) for a in axes)


# ---- Transpose -----------------------------------------------------------------------------------

def _perm(ctx, node):
    rank = len(ctx.shape(node.inputs[0]))
    return list(node.attrs.get("perm", range(rank - 1, -1, -1)))


@rule("Transpose")
def transpose(ctx, node, rho):
    """rho_x = Transpose(rho_y) with the inverse permutation."""
    return {0: ctx.emit.op("Transpose", [rho[0]], {"perm": np.argsort(_perm(ctx, node)).tolist()})}


# ---- DepthToSpace / SpaceToDepth ---------------------------------------------------------------------

def _depth_space_check(ctx, node):
    if not _static(ctx, node.inputs[0], [1, 2, 3]):
        return f"{node.op} of dynamic channel or spatial sizes is not supported"
    return None


@rule("DepthToSpace", "SpaceToDepth", check=_depth_space_check)
def depth_space(ctx, node, rho):
    """Each element moves once, so rho goes back by the inverse move: SpaceToDepth and DepthToSpace in
    DCR mode undo each other; DepthToSpace in CRD mode, y[n, c, h·b + i, w·b + j] = x[n, c·b² + i·b + j,
    h, w], is undone by a Reshape to (n, c, h, i, w, j), a Transpose to (n, c, i, j, h, w) and a Reshape."""
    emit, block = ctx.emit, int(node.attrs["blocksize"])
    if node.op == "SpaceToDepth":
        return {0: emit.op("DepthToSpace", [rho[0]], {"blocksize": block, "mode": "DCR"})}
    if text(node.attrs.get("mode", "DCR")) == "DCR":
        return {0: emit.op("SpaceToDepth", [rho[0]], {"blocksize": block})}
    _, channels, height, width = ctx.shape(node.inputs[0])
    moved = emit.op("Reshape", [rho[0], emit.ints([0, channels // block**2, height, block, width, block])])
    moved = emit.op("Transpose", [moved], {"perm": [0, 1, 3, 5, 2, 4]})
    return {0: emit.op("Reshape", [moved, emit.ints([0, channels, height, width])])}


# ---- Split ---------------------------------------------------------------------------------------

def _split_check(ctx, node):
    axis = node.attrs.get("axis", 0) % len(ctx.shape(node.inputs[0]))
    if not all(_static(ctx, t, [axis]) for t in node.outputs):
        return "Split along a dynamic axis is not supported"
    return None


@rule("Split", check=_split_check)
def split(ctx, node, rho):
    """Each output's rho padded back to its place along the axis; outputs without rho contribute zero."""
    x = node.inputs[0]
    axis = node.attrs.get("axis", 0) % len(ctx.shape(x))
    size, start, parts = ctx.shape(x)[axis], 0, []
    for tensor, r in zip(node.outputs, rho):
        length = ctx.shape(tensor)[axis]
        if r is not None:
            parts.append(scatter_axis(ctx, r, len(ctx.shape(x)), axis, np.arange(start, start + length), size))
        start += length
    return {0: ctx.emit.total(parts)}


# ---- Slice ---------------------------------------------------------------------------------------

FULL = 10**9  # an end at or past this is "to the end" (exporters write INT32_MAX, INT64_MAX; tf2onnx 10**9)


def _slice_spec(ctx, node):
    """[(axis, start, end, step)] of a Slice node, or None when a parameter is not constant."""
    rank = len(ctx.shape(node.inputs[0]))
    values = [ctx.constant(t) if t.name else None for t in node.inputs[1:5]]
    if any(v is None for v, t in zip(values, node.inputs[1:5]) if t.name):
        return None
    starts, ends, axes, steps = values + [None] * (4 - len(values))
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return [(int(a) % rank, int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)]


def _is_whole(start, end, step) -> bool:
    return step == 1 and start == 0 and end >= FULL


def _slice_check(ctx, node):
    spec = _slice_spec(ctx, node)
    if spec is None:
        return "Slice with starts/ends/axes/steps computed at run time is not supported"
    if not _static(ctx, node.inputs[0], [a for a, s, e, st in spec if not _is_whole(s, e, st)]):
        return "Slice of a dynamic axis is not supported"
    return None


@rule("Slice", check=_slice_check)
def slice_(ctx, node, rho):
    """Per sliced axis, rho goes back to the positions range(start, end, step) picked (any step sign)."""
    shape, r = ctx.shape(node.inputs[0]), rho[0]
    for axis, start, end, step in _slice_spec(ctx, node):
        if not _is_whole(start, end, step):
            size = shape[axis]
            r = scatter_axis(ctx, r, len(shape), axis, np.arange(*slice(start, end, step).indices(size)), size)
    return {0: r}


# ---- Gather / GatherND / GatherElements with constant indices ------------------------------------

def _gather_check(ctx, node):
    if ctx.constant(node.inputs[1]) is None:
        if _gathers_by_sizes(ctx, node):
            return None
        return f"{node.op} with indices computed at run time is not supported"
    shape = ctx.shape(node.inputs[0])
    if node.op == "Gather":
        axis = node.attrs.get("axis", 0) % len(shape)
        if not _static(ctx, node.inputs[0], [axis]):
            return "Gather along a dynamic axis is not supported"
        if ctx.constant(node.inputs[1]).ndim > 1 and sum(not isinstance(d, int) for d in shape[axis + 1:]) > 1:
            return "Gather with multi-dimensional indices before several dynamic axes is not supported"
        return None
    depth = ctx.constant(node.inputs[1]).shape[-1]
    if node.attrs.get("batch_dims", 0):
        return "GatherND with batch_dims is not supported"
    if not _static(ctx, node.inputs[0], range(depth)) or \
            sum(not isinstance(d, int) for d in shape[depth:]) > 1:
        return "GatherND over dynamic axes is not supported"
    return None


def _gathers_by_sizes(ctx, node) -> bool:
    """Whether ``node`` is a Gather along axis 0 by indices computed at run time from sizes only, not from
    the data (the dynamo exporter's ``as_strided`` of a tensor a permutation left strided: indices from
    the batch size), that a summing ScatterND can put back (opset 16)."""
    return node.op == "Gather" and node.attrs.get("axis", 0) % len(ctx.shape(node.inputs[0])) == 0 \
        and not ctx.is_data(node.inputs[1]) and ctx.emit.opset >= SCATTER_ADD_SINCE


@rule("Gather", check=_gather_check)
def gather(ctx, node, rho):
    """rho_y with the index dims collapsed to one axis, scattered back to the gathered positions; by
    indices computed at run time (``_gathers_by_sizes``), added up where they were taken by a ScatterND."""
    if ctx.constant(node.inputs[1]) is None:
        emit, x, indices = ctx.emit, node.inputs[0], node.inputs[1]
        if indices.dtype != np.int64:  # (Gather takes int32 indices too, ScatterND only int64)
            indices = emit.op("Cast", [indices], {"to": onnx.TensorProto.INT64})
        places = emit.unsqueeze(indices, [-1])
        return {0: emit.op("ScatterND", [_filled_like(emit, x, 0.0), places, rho[0]], {"reduction": "add"})}
    x, indices = node.inputs[0], ctx.constant(node.inputs[1])
    shape = ctx.shape(x)
    axis = node.attrs.get("axis", 0) % len(shape)
    r = rho[0]
    if indices.ndim == 0:
        r = ctx.emit.unsqueeze(r, [axis])
    elif indices.ndim > 1:
        lead = [0 if not isinstance(d, int) else d for d in shape[:axis]]  # 0 copies the dim (batch)
        r = _reshape_static(ctx, r, lead + [indices.size] + [d if isinstance(d, int) else None
                                                             for d in shape[axis + 1:]])
    return {0: scatter_axis(ctx, r, len(shape), axis, indices.reshape(-1) % shape[axis], shape[axis])}


@rule("GatherND", check=_gather_check)
def gather_nd(ctx, node, rho):
    """The first m axes of x flattened into one, then as Gather with the raveled indices."""
    x, indices = node.inputs[0], ctx.constant(node.inputs[1])
    shape = ctx.shape(x)
    depth = indices.shape[-1]
    lead = [int(d) for d in shape[:depth]]
    flat = np.ravel_multi_index(tuple((indices.reshape(-1, depth) % lead).T), lead)
    rest = [d if isinstance(d, int) else None for d in shape[depth:]]
    r = _reshape_static(ctx, rho[0], [flat.size] + rest)
    r = scatter_axis(ctx, r, 1 + len(rest), 0, flat, int(np.prod(lead)))
    return {0: ctx.emit.reshape_like(r, x)}


def _shared_indices(ctx, tensor):
    """The value of constant indices, also of constant indices expanded or tiled over the batch axis at
    run time (torch's ``index.expand(x.size(0), ...)``, also of an index without that axis, and
    ``index.repeat(x.size(0), 1, ...)``; the dynamo exporter casts them: then of batch size 1, shared by
    every image), or None."""
    value, shape, node = ctx.constant(tensor), ctx.shape(tensor), ctx.producer(tensor)
    if value is not None:
        return value
    while node is not None and node.op == "Cast":
        node = ctx.producer(node.inputs[0])
    value = ctx.constant(node.inputs[0]) if node is not None and node.op in ("Expand", "Tile") else None
    if value is None or value.ndim > len(shape) or not shape or not _static(ctx, tensor, range(1, len(shape))):
        return None
    if node.op == "Tile" and (value.ndim != len(shape) or list(value.shape[1:]) != shape[1:]):
        return None  # a Tile that repeats other axes than the batch
    batch = shape[0] if isinstance(shape[0], int) else 1
    try:
        return np.broadcast_to(value, [batch, *shape[1:]]).astype(np.int64)
    except ValueError:
        return None


def _gather_elements_check(ctx, node):
    indices = _shared_indices(ctx, node.inputs[1])
    if indices is None:
        return "GatherElements with indices computed at run time is not supported"
    x, y = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(x))
    if not _static(ctx, x, range(1, rank)):
        return "GatherElements of dynamic non-batch axes is not supported"
    if not _static(ctx, x, [0]) and (node.attrs.get("axis", 0) % rank == 0 or indices.shape[0] != 1
                                     or _static(ctx, y, [0])):
        return "GatherElements along, or taking some images of, a dynamic batch axis is not supported"
    return None


@rule("GatherElements", check=_gather_elements_check)
def gather_elements(ctx, node, rho):
    """x and rho_y flattened past a dynamic batch axis (kept: the indices are the same for every image),
    then as Gather with the raveled positions the elements were taken from."""
    x = node.inputs[0]
    shape = ctx.shape(x)
    axis = node.attrs.get("axis", 0) % len(shape)
    kept = 0 if isinstance(shape[0], int) else 1
    taken = _shared_indices(ctx, node.inputs[1])[0 if kept else ...]
    dims = [int(d) for d in shape[kept:]]
    where = np.indices(taken.shape)
    where[axis - kept] = taken % dims[axis - kept]
    flat = np.ravel_multi_index(tuple(where), dims).reshape(-1)
    r = _reshape_static(ctx, rho[0], [None] * kept + [flat.size])
    r = scatter_axis(ctx, r, kept + 1, kept, flat, int(np.prod(dims)))
    return {0: ctx.emit.reshape_like(r, x)}


# ---- ScatterND: in-place assignment to a slice, x[:, :c] = f(x[:, :c]) (FasterNet) ------------------

SCATTER_ADD_SINCE = 16  # ScatterND's reduction attribute


def _scatter_nd_check(ctx, node):
    reduction = node.attrs.get("reduction", "none")
    if reduction != "none":
        return f"ScatterND with reduction '{reduction}' is not supported"
    return None


@rule("ScatterND", check=_scatter_nd_check)
def scatter_nd(ctx, node, rho):
    """y = x with the positions ``indices`` overwritten by ``updates``: rho_x = rho_y with zeros written
    there (ScatterND), rho_updates = rho_y read there (GatherND), with the forward pass's indices, also
    where computed at run time. Where several updates go to one place (``max_unpool2d`` of overlapping
    windows), the place keeps the last (ONNX Runtime writes them in order; ONNX leaves it open), and only
    that one takes its relevance (``_kept_updates``)."""
    emit, (x, indices, updates) = ctx.emit, node.inputs
    result = {}
    if ctx.is_data(updates):
        r = emit.op("GatherND", [rho[0], indices])
        kept = _kept_updates(ctx, x, indices, updates)
        result[2] = r if kept is None else emit.mul(r, kept)
    if ctx.is_data(x):
        result[0] = emit.op("ScatterND", [rho[0], indices, _filled_like(emit, updates, 0.0)])
    return result


def _kept_updates(ctx, x, indices, updates):
    """1.0 for each update the output keeps, 0.0 for one a later update to its place overwrote, broadcast
    over the update's slice; None where every update is kept. From constant indices over static axes at
    compile time (negative ones counted from the end); otherwise the updates are numbered, the numbers
    scattered as the updates are, and each update compares its number with the one its place kept."""
    emit = ctx.emit
    leading, tail = len(ctx.shape(indices)) - 1, len(ctx.shape(updates)) - len(ctx.shape(indices)) + 1
    known = ctx.constant(indices)
    dims = ctx.shape(x)[:known.shape[-1]] if known is not None else []
    if known is not None and all(isinstance(d, int) for d in dims):
        places = np.ravel_multi_index(tuple((known.reshape(-1, len(dims)) % dims).T), dims)
        last = {place: i for i, place in enumerate(places)}
        kept = np.array([last[place] == i for i, place in enumerate(places)], np.float32)
        return None if kept.all() else emit.const(kept.reshape(known.shape[:-1] + (1,) * tail))
    sizes = emit.slice(emit.shape_of(indices), [0], [-1], [0])
    one = gs.Constant(f"{indices.name}/one", np.ones(1, np.float32))
    ones = emit.op("Reshape", [emit.op("ConstantOfShape", [sizes], {"value": one}), emit.ints([-1])])
    numbers = emit.op("Reshape", [emit.op("CumSum", [ones, emit.scalar_int(0)]), sizes])  # 1, 2, …
    if tail:
        numbers = emit.unsqueeze(numbers, list(range(leading, leading + tail)))
    numbers = emit.expand_like(numbers, updates)
    placed = emit.op("ScatterND", [_filled_like(emit, x, 0.0), indices, numbers])
    same = emit.op("Equal", [emit.op("GatherND", [placed, indices]), numbers])
    return emit.op("Cast", [same], {"to": onnx.TensorProto.FLOAT})


def _filled_like(emit, tensor, value: float):
    """A float tensor of ``tensor``'s run-time shape holding only ``value``."""
    filler = gs.Constant(f"{tensor.name}/filler_{value:g}", np.full(1, value, np.float32))
    return emit.op("ConstantOfShape", [emit.shape_of(tensor)], {"value": filler})


# ---- Where ---------------------------------------------------------------------------------------

@rule("Where")
def where(ctx, node, rho):
    """y = cond ? a : b with cond fixed: rho_a = rho_y where cond, rho_b = rho_y elsewhere."""
    emit, y = ctx.emit, node.outputs[0]
    cond, zero, result = node.inputs[0], emit.const(0.0), {}
    for index, picked in ((1, [cond, rho[0], zero]), (2, [cond, zero, rho[0]])):
        if ctx.is_data(node.inputs[index]):
            result[index] = ctx.unbroadcast(emit.op("Where", picked), node.inputs[index], ctx.shape(y))
    return result

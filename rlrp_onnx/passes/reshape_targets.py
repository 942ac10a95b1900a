"""Reshape targets computed from the batch size at run time (``x.view(x.size(0), -1)``) become constants.

ONNX shape inference follows such a target (Shape → Gather → Unsqueeze → Concat) only for Reshape-14
and later; below that the reshaped tensor has no shape and the relevance path cannot be planned. On the
planning graph only (the compiled model keeps the source's Reshape), a target whose value is known up
to one symbolic size, or a whole multiple of one (``N·heads``, as Keras' attention and dense layers on
N-D inputs compute it with ReduceProd), is rewritten as a constant with 0 (copy) or -1 in that size's
place: for any input the source Reshape accepts, both give the same shape. A size that shape
inference made up (``unk__0`` for N·16 after ``flatten(0, 1)``) is worked out from the Flatten, constant
Reshape or Transpose that made it (``made_up_sizes``). Slice ends computed from sizes are pinned alike.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


FULL = np.iinfo(np.int64).max  # a Slice end meaning "to the end"
ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
              "Div": lambda a, b: np.trunc(a / b).astype(np.int64)}  # on integers, as ONNX's Div
SIZE_OPS = {*ARITHMETIC, "Cast", "Identity", "Gather", "Max", "Min", "ReduceProd", "Reshape", "Equal", "Where",
            "Concat", "Unsqueeze", "Squeeze", "Slice"}  # the ops _value computes sizes through


@dataclass(frozen=True)
class Multiple:
    """A symbolic size (a name) times a whole number other than 1."""

    name: str
    factor: int


def _times(a, b):
    """a · b for sizes (numbers, names, Multiples), or None where one symbolic size multiplies another."""
    if _symbolic(a) and _symbolic(b):
        return None
    if not _symbolic(a) and not _symbolic(b):
        return int(a) * int(b)
    size, k = (a, int(b)) if _symbolic(a) else (b, int(a))
    factor = k * (size.factor if isinstance(size, Multiple) else 1)
    name = size.name if isinstance(size, Multiple) else size
    return name if factor == 1 else Multiple(name, factor)


def pin_reshape_targets(graph: gs.Graph) -> int:
    """Replace each computed Reshape target that ``_value`` can evaluate by a constant; the number pinned
    (shape inference then may know more shapes, and so more targets)."""
    pinned, names = 0, made_up_sizes(graph)
    for node, value in _computed_shapes(graph, "Reshape", names):
        target = _constant_target(list(value), _renamed(node.inputs[0].shape, names))
        if target is not None:
            node.inputs[1] = gs.Constant(f"{node.outputs[0].name}_target", np.array(target, np.int64))
            pinned += 1
    graph.cleanup()
    return pinned


def pin_expand_shapes(graph: gs.Graph) -> int:
    """Give each Expand to a shape, and each Tile by repeats, that ``_value`` can evaluate its output shape,
    which shape inference does not follow (``coords.repeat(x.size(0), 1, 1, 1)``); the number of shapes
    given or changed."""
    pinned, names = 0, made_up_sizes(graph)
    for op, shaped in (("Expand", _broadcast), ("Tile", _tiled)):
        for node, value in _computed_shapes(graph, op, names):
            shape = shaped(_renamed(node.inputs[0].shape, names), list(value))
            if shape is not None and shape != node.outputs[0].shape:
                node.outputs[0].shape = shape
                pinned += 1
    return pinned


def _tiled(data_shape, repeats: list) -> list | None:
    """Tile's output shape: each size of ``data_shape`` times its repeat (numbers or names), or None."""
    if not _known(data_shape) or len(repeats) != len(data_shape):
        return None
    shape = [_times(size, repeat) for size, repeat in zip(data_shape, repeats)]
    return None if any(size is None or isinstance(size, Multiple) for size in shape) else shape


def _computed_shapes(graph: gs.Graph, op: str, names: dict):
    """(node, value) for each ``op`` node (Reshape, Expand or Tile) whose shape input is computed at run time,
    whose output shape inference does not follow, and which ``_value`` evaluates to a 1-D value."""
    for node in [n for n in graph.nodes if n.op == op]:
        if isinstance(node.inputs[1], gs.Constant) or node.attrs.get("allowzero", 0) \
                or _follows(node.outputs[0].shape, node.inputs[0].shape):
            continue
        value = _value(node.inputs[1], names)
        if value is not None and value.ndim == 1:
            yield node, value


def pin_slice_ends(graph: gs.Graph) -> int:
    """Replace each Slice's ends computed at run time by constants where they are known, an end that is
    a symbolic size at least as long as its axis for every batch becoming "to the end" (onnxscript 0.6
    writes torch.roll's ends as Size(x), which grows with the batch); the number pinned."""
    pinned, names = 0, made_up_sizes(graph)
    for node in graph.nodes:
        if node.op != "Slice" or len(node.inputs) < 3 or isinstance(node.inputs[2], gs.Constant):
            continue
        rest = [t for t in node.inputs[3:5] if t.name]
        ends, shape = _value(node.inputs[2], names), _renamed(node.inputs[0].shape, names)
        if ends is None or ends.ndim != 1 or not _known(shape) or not all(isinstance(t, gs.Constant) for t in rest):
            continue
        axes = rest[0].values.tolist() if rest else list(range(len(ends)))
        if len(rest) > 1 and np.any(rest[1].values <= 0):
            continue
        constant = [int(end) if not _symbolic(end) else FULL if isinstance(shape[axis], int) and
                    _least(end) >= shape[axis] else None for end, axis in zip(ends, axes)]
        if None not in constant:
            node.inputs[2] = gs.Constant(f"{node.outputs[0].name}_ends", np.array(constant, np.int64))
            pinned += 1
    return pinned


def static_number(tensor) -> float | None:
    """The one number a tensor holds: a constant, or computed from static sizes (n − 1 of a dimension, as
    torch's unbiased variance writes its divisor through Shape, Gather, ReduceProd and Cast); else None."""
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values)
        return float(values.reshape(())) if values.size == 1 and values.dtype.kind in "iuf" else None
    value = _value(tensor, {})
    if value is None or value.size != 1 or not _ints(value):
        return None
    return float(value.reshape(-1)[0])


def _follows(shape, data_shape) -> bool:
    """Whether shape inference knew ``shape``: every size a number or a name the data's shape has."""
    return _known(shape) and all(isinstance(d, int) or d in (data_shape or []) for d in shape)


def _broadcast(data_shape, target: list) -> list | None:
    """Expand's output shape: ``data_shape`` and ``target`` broadcast (numbers or names), or None."""
    if not _known(data_shape) or any(isinstance(size, Multiple) for size in target):
        return None
    rank = max(len(data_shape), len(target))
    a, b = [1] * (rank - len(data_shape)) + list(data_shape), [1] * (rank - len(target)) + target
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return [y if x == 1 else x for x, y in zip(a, b)]


def _value(tensor, names: dict) -> np.ndarray | None:
    """The value of a shape-like integer tensor as an object array of ints and symbolic sizes (names, those
    shape inference made up worked out by ``names``), or None when it is not computed from shapes and
    constants by the ops below."""
    if isinstance(tensor, gs.Constant):
        values = tensor.values
        if values.dtype.kind == "f" and values.size == 1 and float(values.reshape(-1)[0]).is_integer():
            values = values.astype(np.int64)  # a whole number in a float scalar (n − 1 of a size cast to float)
        return values.astype(object) if values.dtype.kind in "iu" else None
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op == "Shape":
        shape = _renamed(node.inputs[0].shape, names)
        if not _known(shape):
            return None
        return np.array(list(shape), dtype=object)[node.attrs.get("start", 0):node.attrs.get("end", None)]
    if node.op == "Size":
        shape = _renamed(node.inputs[0].shape, names)
        product = _product(shape) if _known(shape) else None
        return None if product is None else np.array(product, dtype=object)
    if node.op not in SIZE_OPS:  # (before the inputs: a data tensor's producers are not walked back)
        return None
    values = []
    for t in node.inputs:
        values.append(_value(t, names))
        if values[-1] is None:
            return None
    if node.op in ("Cast", "Identity"):
        return values[0]
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and _ints(values[1]):
        return np.array(np.take(values[0], values[1].astype(np.int64), axis=0), dtype=object)
    if node.op in ARITHMETIC and all(_ints(v) for v in values):
        return np.array(ARITHMETIC[node.op](*(v.astype(np.int64) for v in values)), dtype=object)
    if node.op == "Mul":
        product = np.frompyfunc(_times, 2, 1)(*values)
        return None if any(v is None for v in np.reshape(product, -1)) else np.array(product, dtype=object)
    if node.op in ("Max", "Min") and len(values) == 2 and values[0].shape == values[1].shape \
            and values[0].ndim == 1:  # batch sizes broadcast, as tf2onnx writes Einsum
        return np.array([_extreme(node.op, a, b, f"{node.name}/{i}") for i, (a, b) in enumerate(zip(*values))],
                        dtype=object)
    if node.op == "ReduceProd" and values[0].ndim == 1 and _reduces_all(node, values):
        product = _product(values[0])
        keep = node.attrs.get("keepdims", 1)
        return None if product is None else np.array([product] if keep else product, dtype=object)
    if node.op == "Reshape" and values[0].ndim <= 1 and list(values[1]) == [-1]:
        return values[0].reshape(-1)
    if node.op == "Equal" and values[0].shape == values[1].shape and values[0].ndim == 1:
        equal = [_equal(a, b) for a, b in zip(values[0], values[1])]
        return None if None in equal else np.array(equal, dtype=object)
    if node.op == "Where" and all(v.shape == values[0].shape and v.ndim == 1 for v in values) \
            and all(c in (True, False) for c in values[0]):
        return np.array([a if c else b for c, a, b in zip(*values)], dtype=object)
    if node.op == "Concat" and all(v.ndim == 1 for v in values):
        return np.concatenate(values)
    if node.op == "Unsqueeze" and values[0].ndim == 0:
        return values[0].reshape(1)
    if node.op == "Squeeze" and values[0].shape == (1,):
        return values[0].reshape(())
    if node.op == "Slice" and values[0].ndim == 1 and all(v.size == 1 and _ints(v) for v in values[1:]):
        start, end, *rest = (int(v.reshape(-1)[0]) for v in values[1:])
        if rest[:1] not in ([], [0], [-1]):
            return None
        return values[0][slice(start, end, rest[1] if len(rest) > 1 else 1)]
    return None


MADE_UP = "unk__"  # how ONNX shape inference names a size it cannot follow (N·16 after a Flatten)


def made_up_sizes(graph: gs.Graph) -> dict:
    """Each size name shape inference made up (``unk__0`` for N·16 after ``x.flatten(0, 1)``) that a
    Flatten, a Reshape to a constant target or a Transpose works out from its input's sizes (numbers,
    names, Multiples). Such a name stands for one size wherever it appears, so the reshaped data and the
    targets read from shapes (``_value``) both name it so."""
    names: dict = {}
    for node in graph.nodes:
        out = node.outputs[0].shape if node.outputs else None
        if node.op not in ("Flatten", "Reshape", "Transpose") or not _known(out) \
                or not any(_made_up(d) and d not in names for d in out):
            continue
        data = _renamed(node.inputs[0].shape, names)
        if not _known(data):
            continue
        if node.op == "Flatten":
            axis = node.attrs.get("axis", 1) % max(len(data), 1)
            sizes = [_product(data[:axis]), _product(data[axis:])]
        elif node.op == "Transpose":
            sizes = [data[axis] for axis in node.attrs.get("perm", range(len(data))[::-1])]
        elif isinstance(node.inputs[1], gs.Constant) and not node.attrs.get("allowzero", 0):
            sizes = _reshaped(data, node.inputs[1].values.reshape(-1).tolist())
        else:
            continue
        if sizes is None or None in sizes or len(sizes) != len(out):
            continue
        for made, size in zip(out, sizes):
            if _made_up(made) and made not in names and size != made:
                names[made] = size
    return names


def _made_up(size) -> bool:
    return isinstance(size, str) and size.startswith(MADE_UP)


def _renamed(shape, names: dict):
    """``shape`` with the made-up size names ``names`` works out replaced (None stays None)."""
    if shape is None:
        return None
    renamed = []
    for size in shape:
        for _ in range(len(names)):  # a name worked out in terms of another made-up one
            name = _split(size)[0]
            if not _made_up(name) or name not in names:
                break
            size = names[name] if not isinstance(size, Multiple) else _times(names[name], size.factor)
        renamed.append(size)
    return renamed


def _reshaped(data: list, target: list) -> list | None:
    """The sizes Reshape gives ``data`` (numbers, names, Multiples) for a constant ``target``, or None."""
    sizes = [data[i] if size == 0 and i < len(data) else size for i, size in enumerate(target)]
    if -1 not in sizes:
        return sizes
    total, rest = _product(data), _product([size for size in sizes if size != -1])
    if total is None or rest is None:
        return None
    (name, factor), (rest_name, rest_factor) = _split(total), _split(rest)
    if rest_name not in (None, name) or factor % rest_factor:
        return None
    left = factor // rest_factor
    size = left if rest_name == name or name is None else (name if left == 1 else Multiple(name, left))
    return [size if s == -1 else s for s in sizes]


def _split(size) -> tuple[str | None, int]:
    """(symbolic name or None, whole factor) of a size."""
    if isinstance(size, Multiple):
        return size.name, size.factor
    return (size, 1) if _symbolic(size) else (None, int(size))


def _product(sizes):
    """The product of sizes (numbers, names, Multiples), or None where symbolic sizes multiply."""
    product = 1
    for size in sizes:
        product = None if product is None else _times(product, size)
    return product


def _least(size) -> int:
    """The smallest value a size takes for a batch of at least one sample."""
    if isinstance(size, Multiple):
        return size.factor
    return 1 if _symbolic(size) else int(size)


def _extreme(op: str, a, b, fresh: str):
    """Max or Min of two sizes: a number when both are, the size when they are equal, else a new
    symbolic size ``fresh`` (some size, equal to no other: a target with it as its one unknown still
    pins)."""
    if a == b:
        return a
    if not _symbolic(a) and not _symbolic(b):
        return max(a, b) if op == "Max" else min(a, b)
    return fresh


def _reduces_all(node, values) -> bool:
    """Whether a ReduceProd of a vector reduces its one axis (axes an attribute, an input from opset 18)."""
    axes = node.attrs.get("axes") if len(values) < 2 else list(values[1])
    return axes in (None, [0], [-1])


def _equal(a, b) -> bool | None:
    """a == b for numbers; a symbolic size equals no negative number; else unknown (None)."""
    if not _symbolic(a) and not _symbolic(b):
        return a == b
    return False if any(not _symbolic(v) and v < 0 for v in (a, b)) else None


def _symbolic(size) -> bool:
    return isinstance(size, (str, Multiple))


def _known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _ints(value: np.ndarray) -> bool:
    return all(not _symbolic(v) for v in value.reshape(-1))


def _constant_target(target: list, data_shape) -> list[int] | None:
    """``target`` (ints and symbolic sizes) as Reshape constants, or None: zeros copy the data's size,
    a -1 is worked out when the symbolic sizes on both sides cancel, and one symbolic size left
    becomes 0 where the data has it at the same place (shape inference then keeps its name), else -1."""
    if (0 in target or -1 in target) and not _known(data_shape):
        return None
    target = [data_shape[i] if not _symbolic(size) and size == 0 and i < len(data_shape) else size
              for i, size in enumerate(target)]
    symbols = [size for size in target if _symbolic(size)]
    known = [int(size) for size in target if not _symbolic(size) and size != -1] + \
        [size.factor for size in symbols if isinstance(size, Multiple)]
    if -1 in target:
        data_symbols = [_split(d)[0] for d in data_shape if _symbolic(d)]
        total = math.prod(_split(d)[1] for d in data_shape)
        names = [_split(size)[0] for size in symbols]
        if Counter(names) != Counter(data_symbols) or total % max(math.prod(known), 1):
            return None
        target = [total // max(math.prod(known), 1) if size == -1 else size for size in target]
    if len(symbols) > 1:
        return None
    copies = list(data_shape or [])
    return [(0 if i < len(copies) and copies[i] == size else -1) if _symbolic(size) else int(size)
            for i, size in enumerate(target)]

"""Resize (nearest, linear, cubic) as a linear map: separable, one constant interpolation matrix per
resized axis, so the adjoint applies each matrix transposed.

The matrix of an axis is not re-derived from the ONNX coordinate formulas: the compiler runs the node's
own Resize (same attributes, same scale or size on that axis, 1 elsewhere) in ONNX Runtime on the basis
vectors of the axis, so it matches the forward pass whatever the coordinate transformation, rounding or
cubic coefficients. Nearest modes give one-hot rows: the adjoint is then a constant-index scatter
(routing.scatter_axis); the other modes apply the transposed matrix with MatMul.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..ir import text
from ..runtime import cpu_session
from .registry import LINEAR, rule
from .routing import scatter_axis


def _axis_params(ctx, node):
    """{axis: ("scales", s) | ("sizes", n)} for every axis the node resizes, or a reason string.

    Sizes computed at run time (``Concat(Shape(x)[:2], [h, w])``, as both torch exporters write
    ``interpolate(size=...)``) are read off the statically inferred output shape."""
    x, y = node.inputs[0], node.outputs[0]
    shape_in, shape_out = ctx.shape(x), ctx.shape(y)
    rank = len(shape_in)
    given = {kind: t for kind, t in zip(("scales", "sizes"), list(node.inputs[2:4])) if t.name}
    constant = {kind: ctx.constant(t) for kind, t in given.items() if ctx.constant(t) is not None}
    constant = {kind: v for kind, v in constant.items() if v.size}
    if constant:
        kind, values = next(iter(constant.items()))
        axes = [a % rank for a in node.attrs.get("axes", range(rank))]
        pairs = zip(axes, values.tolist())
    elif len(shape_out) != rank or not all(isinstance(d, int) for d in shape_out[1:]):
        return ("Resize to a size computed at run time that shape inference cannot determine is not supported "
                "(torch's opset-11 export of interpolate(size=...); export with opset >= 13)")
    else:  # a dynamic (batch) axis is taken to be copied from x, as Shape(x) feeds it
        kind, pairs = "sizes", [(a, d) for a, d in enumerate(shape_out) if isinstance(d, int)]
    params = {}
    for axis, value in pairs:
        a_in, a_out = shape_in[axis], shape_out[axis]
        if value == (1.0 if kind == "scales" else a_in):
            continue
        if not (isinstance(a_in, int) and isinstance(a_out, int)):
            return "Resize of a dynamic axis is not supported"
        params[axis] = (kind, value)
    return params


def _resize_check(ctx, node):
    attrs = {k: text(v) for k, v in node.attrs.items() if isinstance(v, (str, bytes))}
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return "Resize with tf_crop_and_resize is not supported"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize with keep_aspect_ratio_policy other than stretch is not supported"
    params = _axis_params(ctx, node)
    if isinstance(params, str):
        return params
    if 0 in params:
        return "Resize of the batch axis is not supported"
    return None


@lru_cache(maxsize=64)
def _matrix(attrs: tuple, opset: int, rank: int, axis: int, size_in: int, kind: str, value) -> np.ndarray:
    """The [size_out, size_in] matrix of one resized axis, from ONNX Runtime on basis vectors."""
    shape = [1] * rank
    shape[0] = shape[axis] = size_in
    basis = np.eye(size_in, dtype=np.float32).reshape(shape)
    if kind == "scales":
        control = np.ones(rank, dtype=np.float32)
        control[axis] = value
        names = ["x", "roi", "control"]
    else:
        control = np.array(shape, dtype=np.int64)
        control[axis] = value
        names = ["x", "roi", "", "control"]
    node = helper.make_node("Resize", names, ["y"], **dict(attrs))
    roi = np.zeros(0, np.float32)  # unused (no tf_crop_and_resize), but Resize-11 requires the input
    graph = helper.make_graph(
        [node], "basis", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(control, "control"), numpy_helper.from_array(roi, "roi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    out = cpu_session(model).run(None, {"x": basis})[0]
    return np.moveaxis(out.reshape(size_in, -1), 0, 1)  # [out, in]: column l = image of basis vector l


def _apply_transposed(ctx, rho, rank, axis, matrix):
    """rho (size_out along axis) → Aᵀ·rho (size_in along axis), as one MatMul on the last two axes."""
    emit = ctx.emit
    if axis == rank - 1:
        return emit.op("MatMul", [rho, emit.const(matrix)])
    if axis == rank - 2:
        return emit.op("MatMul", [emit.const(np.ascontiguousarray(matrix.T)), rho])
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = emit.op("MatMul", [emit.op("Transpose", [rho], {"perm": perm}), emit.const(matrix)])
    return emit.op("Transpose", [moved], {"perm": perm})


@rule("Resize", check=_resize_check, kind=LINEAR)
def resize(ctx, node, rho):
    """rho_x = (A_1 ⊗ … ⊗ A_k)ᵀ rho_y, one axis at a time (module docstring)."""
    x = node.inputs[0]
    shape, rank = ctx.shape(x), len(ctx.shape(x))
    attrs = tuple(sorted((k, text(v) if isinstance(v, (str, bytes)) else v)
                         for k, v in node.attrs.items() if k != "axes"))
    r = rho[0]
    for axis, (kind, value) in _axis_params(ctx, node).items():
        matrix = _matrix(attrs, ctx.emit.opset, rank, axis, int(shape[axis]), kind, value)
        if np.all((matrix == 0) | (matrix == 1)) and np.all(matrix.sum(axis=1) == 1):
            r = scatter_axis(ctx, r, rank, axis, matrix.argmax(axis=1), int(shape[axis]))
        else:
            r = _apply_transposed(ctx, r, rank, axis, matrix.astype(np.float32))
    return {0: r}

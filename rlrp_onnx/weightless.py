"""Weightless copies of a model: shape inference, the ONNX checker, canonicalization and ``graft`` read the
graph, not the weights."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import EncodeError
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import RlrpError

LARGE = 1024  # elements; smaller initializers (shape vectors, scales, scalars) stay for data propagation
GRAPH_TOO_LARGE = ("the model passes protobuf's 2 GB limit even without its initializers' raw data (large "
                   "weights in typed fields or in Constant nodes); store those weights as initializers with raw data")


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of more than ``LARGE`` elements are declared as graph inputs
    of the same type and shape instead of stored: the inferred shapes are the same, and serialising the
    weights, which shape inference and the checker each do once per call, is gone (VGG16: 2-3 s a call)."""
    light, graph = without_initializers(model)
    declared = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= LARGE:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light


def declared_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, LazyValues]]:
    """A copy of ``model`` whose initializers of more than ``LARGE`` elements are stored without data, and
    graphsurgeon values reading ``model``'s own by name, for ``reattach`` to a graph imported from the
    copy: a deep copy with the weights took 0.3 s for VGG16."""
    light, graph = without_initializers(model)
    held = {}
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= LARGE:
            graph.initializer.append(tensor)
        else:
            graph.initializer.append(_declaration(tensor.name, tensor.dims, tensor.data_type))
            held[tensor.name] = LazyValues(tensor)
    return light, held


def without_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.GraphProto]:
    """A copy of ``model`` with every field but the graph's initializers, and the copy's graph; RlrpError
    when that copy would pass protobuf's 2 GB."""
    light = onnx.ModelProto()
    try:
        _copy_fields(model, light, skipped="graph")
        _copy_fields(model.graph, light.graph, skipped="initializer")
    except (EncodeError, ValueError):  # copying a repeated field serialises it: newer protobuf, older
        raise RlrpError(GRAPH_TOO_LARGE) from None
    return light, light.graph


def _copy_fields(source, target, skipped: str) -> None:
    """Copy the fields of the protobuf message ``source`` into ``target``, all but ``skipped``."""
    for field, value in source.ListFields():
        if field.name == skipped:
            continue
        if isinstance(value, (bool, int, float, str, bytes)):
            setattr(target, field.name, value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        else:
            getattr(target, field.name).CopyFrom(value)


def _declaration(name: str, dims, data_type: int) -> onnx.TensorProto:
    """A tensor of that name, shape and type, without data."""
    return onnx.TensorProto(name=name, dims=dims, data_type=data_type)


def export_weightless(graph: gs.Graph, detach: Callable[[str], bool] = lambda name: True
                      ) -> tuple[onnx.ModelProto, dict[str, object]]:
    """``gs.export_onnx`` of ``graph`` with its constants of more than ``LARGE`` elements whose name
    ``detach`` accepts written as data-less declarations (name, type, dims), which is what shape inference
    and ``graft`` read of them: copying the weights into the proto, twice per export, took 1.1 s a call
    for VGG16. Returns the model and the detached values by name, for ``reattach``; ``graph`` is unchanged."""
    detached = {t.name: t for t in graph.tensors().values()
                if isinstance(t, gs.Constant) and isinstance(t._values, (LazyValues, np.ndarray))
                and math.prod(t.shape) > LARGE and detach(t.name)}
    held = {name: constant._values for name, constant in detached.items()}  # `values` would load them
    try:
        for name, constant in detached.items():
            constant.values = LazyValues(_declaration(name, constant.shape, _element_type(held[name])))
        return gs.export_onnx(graph, do_type_check=False), held
    finally:
        for name, constant in detached.items():
            constant.values = held[name]


def reattach(graph: gs.Graph, held: dict[str, object]) -> gs.Graph:
    """Give the constants of ``graph`` (imported from ``export_weightless``'s or ``declared_weights``'s
    model) their values."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in held:
            tensor.values = held[tensor.name]
    return graph


def _element_type(values) -> int:
    if isinstance(values, LazyValues):
        return values.tensor.data_type
    return onnx.helper.np_dtype_to_tensor_dtype(values.dtype)

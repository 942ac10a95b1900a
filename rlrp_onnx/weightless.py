"""Weightless copies of a model: shape inference and the ONNX checker read the graph, not the weights."""

from __future__ import annotations

import math

import onnx

LARGE = 1024  # elements; smaller initializers (shape vectors, scales, scalars) stay for data propagation


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of more than ``LARGE`` elements are declared as graph inputs
    of the same type and shape instead of stored: the inferred shapes are the same, and serialising the
    weights, which shape inference and the checker each do once per call, is gone (VGG16: 2-3 s a call)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    source, graph = model.graph, light.graph
    graph.name = source.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, field).extend(getattr(source, field))
    declared = {i.name for i in source.input}
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= LARGE:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light

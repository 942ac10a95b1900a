"""A float16 model's float32 twin: the relevance pass is planned on it and runs in float32, reading the
float16 forward pass through Casts (``graft``)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .names import subgraphs

HALF, SINGLE = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
TYPE_ATTRIBUTES = ("to", "dtype")  # the element types Cast, EyeLike, Random* and Bernoulli produce


def uses_float16(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the main graph is declared, stored or cast as float16."""
    graph = model.graph
    declared = [*graph.input, *graph.output, *graph.value_info]
    return (any(v.type.tensor_type.elem_type == HALF for v in declared)
            or any(t.data_type == HALF for t in graph.initializer)
            or any(_makes_float16(a) for node in graph.node for a in node.attribute))


def float32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float16 tensor, declaration and type attribute made float32 (in
    subgraphs too), tensor and node names unchanged. Widening is exact, so the twin holds the source's
    weights; its forward pass rounds differently, but only its structure and constants are used."""
    twin = copy.deepcopy(model)
    _widen_graph(twin.graph)
    return twin


def _makes_float16(attribute: onnx.AttributeProto) -> bool:
    if attribute.type == onnx.AttributeProto.TENSOR:
        return attribute.t.data_type == HALF
    return attribute.type == onnx.AttributeProto.INT and attribute.name in TYPE_ATTRIBUTES and attribute.i == HALF


def _widen_graph(graph: onnx.GraphProto) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == HALF:
            value.type.tensor_type.elem_type = SINGLE
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for sparse in graph.sparse_initializer:
        _widen_tensor(sparse.values)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attribute.t)
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                _widen_tensor(attribute.sparse_tensor.values)
            elif _makes_float16(attribute):
                attribute.i = SINGLE
        for subgraph in subgraphs(node):
            _widen_graph(subgraph)


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == HALF:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))

"""weightless(): shape inference and the checker see the same graph without the weights."""

from __future__ import annotations

import math

import onnx
import pytest

from rlrp_onnx.weightless import LARGE, weightless


@pytest.mark.parametrize("name, exporter", [("resnet18_like", "torchscript"), ("efficientnet_lite0", "dynamo")])
def test_same_inferred_shapes_without_the_weights(exported_model, name, exporter):
    model = onnx.load(exported_model(name, exporter).path)
    del model.graph.value_info[:]  # the dynamo exporter writes them: let inference do all the work
    before = model.SerializeToString()
    light = weightless(model)
    assert model.SerializeToString() == before, "the source model was modified"

    large = {t.name: t for t in model.graph.initializer if math.prod(t.dims) > LARGE}
    assert large, "the test model has no weights to leave out"
    assert not {t.name for t in light.graph.initializer} & set(large)
    assert {t.name for t in light.graph.initializer} == {t.name for t in model.graph.initializer} - set(large)
    declared = {i.name: i.type.tensor_type for i in light.graph.input}
    for tensor in large.values():
        declared_type = declared[tensor.name]
        assert declared_type.elem_type == tensor.data_type
        assert [d.dim_value for d in declared_type.shape.dim] == list(tensor.dims)

    full = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    assert len(full.graph.value_info) >= len(model.graph.node) - len(model.graph.output)
    assert sorted(v.SerializeToString() for v in inferred.graph.value_info) == \
        sorted(v.SerializeToString() for v in full.graph.value_info)
    assert list(inferred.graph.output) == list(full.graph.output)
    onnx.checker.check_model(light, full_check=True)

"""weightless(), declared_weights() and export_weightless(): shape inference, the checker and the
compiler see the same graph without the weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import rlrp_onnx.weightless as weightless_module
from rlrp_onnx import compile_model
from rlrp_onnx.weightless import LARGE, declared_weights, export_weightless, reattach, weightless


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


def test_export_without_the_weights_and_reattach(exported_model):
    """The exported model declares the large constants without data; the graph keeps its values, and a
    graph imported from the export gets them back."""
    graph = gs.import_onnx(onnx.load(exported_model("resnet18_like", "torchscript").path))
    constants = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    values = {name: np.array(t.values) for name, t in constants.items()}
    large = {name for name, v in values.items() if v.size > LARGE}
    assert large, "the test model has no weights to leave out"

    kept = sorted(large)[0]
    model, held = export_weightless(graph, lambda name: name != kept)
    assert set(held) == large - {kept}
    exported = {t.name: t for t in model.graph.initializer}
    for name in large - {kept}:
        assert not exported[name].raw_data and list(exported[name].dims) == list(values[name].shape)
        assert exported[name].data_type == onnx.helper.np_dtype_to_tensor_dtype(values[name].dtype)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(exported[kept]), values[kept])
    for name, constant in constants.items():
        np.testing.assert_array_equal(constant.values, values[name])

    imported = reattach(gs.import_onnx(model), held)
    for name, tensor in imported.tensors().items():
        if name in values:
            np.testing.assert_array_equal(tensor.values, values[name])


def test_declared_weights_read_the_model_own(exported_model):
    model = onnx.load(exported_model("resnet18_like", "torchscript").path)
    before = model.SerializeToString()
    light, held = declared_weights(model)
    large = {t.name: t for t in model.graph.initializer if math.prod(t.dims) > LARGE}
    assert large and set(held) == set(large)
    stored = {t.name: t for t in light.graph.initializer}
    assert set(stored) == {t.name for t in model.graph.initializer}
    for name, tensor in large.items():
        assert not stored[name].raw_data and list(stored[name].dims) == list(tensor.dims)
        assert stored[name].data_type == tensor.data_type
    graph = reattach(gs.import_onnx(light), held)
    for name, tensor in large.items():
        np.testing.assert_array_equal(graph.tensors()[name].values, onnx.numpy_helper.to_array(tensor))
    assert model.SerializeToString() == before


@pytest.mark.parametrize("rule", ["rlrp", "epsilon"])
def test_compiled_model_does_not_depend_on_leaving_the_weights_out(exported_model, monkeypatch, rule):
    """Compiling with every weight copied (no constant is "large") writes the same bytes, and leaves the
    source untouched; with the BatchNorms kept, the epsilon rule folds them into new weights, which the
    compiled model must hold."""
    source = onnx.load(exported_model("resnet18_like", "torchscript", fold_batchnorm=False).path)
    before = source.SerializeToString()
    light = compile_model(source, rule=rule).SerializeToString()
    assert source.SerializeToString() == before
    monkeypatch.setattr(weightless_module, "LARGE", 2**62)
    assert compile_model(source, rule=rule).SerializeToString() == light


def test_compiling_a_file_in_place_writes_what_compiling_its_proto_writes(exported_model):
    """A model read from a file is extended in place, a ModelProto passed in is copied first."""
    path = exported_model("resnet18_like", "torchscript", fold_batchnorm=False).path
    for rule in ("rlrp", "epsilon"):
        assert compile_model(path, rule=rule).SerializeToString() == \
            compile_model(onnx.load(path), rule=rule).SerializeToString()


def test_in_place_builds_the_explainer_in_the_proto_given(exported_model):
    path = exported_model("resnet18_like", "torchscript").path
    copied = compile_model(onnx.load(path)).SerializeToString()
    proto = onnx.load(path)
    assert compile_model(proto, in_place=True) is proto
    assert proto.SerializeToString() == copied


def test_explainer_compiles_a_source_file_it_read_in_place(exported_model, monkeypatch):
    """Explainer reads a source file itself, so it owns that ModelProto: no copy of its weights."""
    import rlrp_onnx.compiler as compiler
    from rlrp_onnx import Explainer
    seen = []

    def spy(*args, in_place=False, **kwargs):
        seen.append(in_place)
        return graft(*args, in_place=in_place, **kwargs)

    graft = compiler.graft
    monkeypatch.setattr(compiler, "graft", spy)
    path = exported_model("resnet18_like", "torchscript").path
    Explainer(path, device="cpu")
    Explainer(onnx.load(path), device="cpu")
    assert seen == [True, False]

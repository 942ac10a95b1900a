"""save_model: one file, or the weights in a ``.data`` file beside it past protobuf's 2 GB limit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import rlrp_onnx.loading as loading
from rlrp_onnx import save_model


def _model_with_weights(elements: int, count: int = 1) -> onnx.ModelProto:
    """x + w0 + w1 + …: ``count`` float32 initializers of ``elements`` values each (bytes 0..255 repeated),
    set in place: protobuf copies a message by serialising it, which fails past 2 GB."""
    names = [f"w{i}" for i in range(count)]
    sums = [f"s{i}" for i in range(count - 1)]
    nodes = [helper.make_node("Add", [a, w], [b]) for a, w, b in zip(["x", *sums], names, [*sums, "y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for name in names:
        weights = model.graph.initializer.add(name=name, data_type=TensorProto.FLOAT, dims=[elements])
        weights.raw_data = np.arange(4 * elements, dtype=np.uint8).tobytes()
    return model


def _saved_with_external_data(model: onnx.ModelProto, path) -> None:
    weights = [t.raw_data for t in model.graph.initializer]
    for _ in range(2):  # the second time over the first
        save_model(model, path)
    assert (path.parent / (path.name + ".data")).stat().st_size == sum(map(len, weights))
    for kept in (model, onnx.load(str(path))):  # the caller's model keeps its weights too
        assert not any(t.external_data for t in kept.graph.initializer)
        assert all(t.data_location == TensorProto.DEFAULT for t in kept.graph.initializer)
        assert [t.raw_data for t in kept.graph.initializer] == weights


@pytest.mark.parametrize("why", ["weights past the limit", "serialisation refused"])
def test_model_protobuf_cannot_hold_is_saved_with_external_data(tmp_path, monkeypatch, why):
    """Stands in for a model past 2 GB: its weights alone reach protobuf's limit (here lowered), or
    protobuf refuses to serialise it."""
    if why == "serialisation refused":
        monkeypatch.setattr(loading, "serialized", lambda model: None)
    else:
        monkeypatch.setattr(loading, "PROTOBUF_LIMIT", 4 * 4096)
    _saved_with_external_data(_model_with_weights(4096), tmp_path / "big.onnx")


def test_small_model_is_one_file(tmp_path):
    model = _model_with_weights(4096)
    save_model(model, tmp_path / "small.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]
    assert onnx.load(str(tmp_path / "small.onnx")) == model


@pytest.mark.slow
def test_model_past_two_gigabytes_is_saved_with_external_data(tmp_path):
    _saved_with_external_data(_model_with_weights(2**28 + 2**20, count=2), tmp_path / "huge.onnx")


def test_external_data_keeps_every_field_and_reads_typed_weights(tmp_path, monkeypatch):
    """Large raw weights go to the .data file; small ones, and weights stored in typed fields (float16 in
    int32_data, float_data), stay inline as onnx's writer leaves them; every other field is written."""
    monkeypatch.setattr(loading, "PROTOBUF_LIMIT", 4 * 4096)
    model = _model_with_weights(4096)
    model.producer_name, model.doc_string, model.graph.doc_string = "test", "a model", "a graph"
    helper.set_model_props(model, {"rlrp.rule": "rlrp", "other": "kept"})
    values = np.linspace(-3, 3, 2048)
    model.graph.initializer.extend([
        helper.make_tensor("half", TensorProto.FLOAT16, [2048], values.astype(np.float16)),
        helper.make_tensor("single", TensorProto.FLOAT, [2048], values.astype(np.float32)),
        helper.make_tensor("small", TensorProto.FLOAT, [4], [1, 2, 3, 4])])
    before = model.SerializeToString()
    save_model(model, tmp_path / "m.onnx")
    assert model.SerializeToString() == before
    light = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert [t.name for t in light.graph.initializer if t.external_data] == ["w0"]
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    for field in ("producer_name", "doc_string", "metadata_props", "opset_import", "ir_version"):
        assert getattr(loaded, field) == getattr(model, field)
    assert loaded.graph.doc_string == "a graph" and loaded.graph.node == model.graph.node
    for saved, original in zip(loaded.graph.initializer, model.graph.initializer, strict=True):
        assert saved.name == original.name and saved.data_type == original.data_type
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(saved), onnx.numpy_helper.to_array(original))

"""save_model: one file, or the weights in a ``.data`` file beside it past protobuf's 2 GB limit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
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


def _field_key(field: int, wire_type: int) -> bytes:
    """A field's key in the protobuf wire format, as a two-byte varint (fields 16 to 2047)."""
    key = field << 3 | wire_type
    return bytes([key & 0x7F | 0x80, key >> 7])


def _with_metadata(path) -> dict[str, str]:
    """A small model saved to ``path`` with metadata before and after its graph and unknown top-level
    fields of the fixed-size wire types (8 and 4 bytes) at the end, which onnx.load keeps as unknown
    fields; returns the metadata onnx.load reads."""
    model = _model_with_weights(4)
    model.metadata_props.add(key="first", value="1")
    data = model.SerializeToString()
    after = onnx.ModelProto(metadata_props=[onnx.StringStringEntryProto(key="second", value="zwei")])
    unknown = _field_key(1000, 1) + b"\x01" * 8 + _field_key(1001, 5) + b"\x02" * 4
    path.write_bytes(data + after.SerializeToString() + unknown)
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_metadata_is_read_as_onnx_reads_it(tmp_path):
    path = tmp_path / "m.onnx"
    expected = _with_metadata(path)
    assert expected == {"first": "1", "second": "zwei"}
    assert loading.read_metadata(path) == expected


def test_metadata_is_read_without_parsing_the_graph(tmp_path):
    """The graph's bytes are skipped: a graph protobuf cannot parse does not stop the reader."""
    path = tmp_path / "m.onnx"
    expected = _with_metadata(path)
    data = path.read_bytes()
    graph = onnx.load(str(path)).graph.SerializeToString()
    start = data.index(graph)
    path.write_bytes(data[:start] + b"\xff" * len(graph) + data[start + len(graph):])
    with pytest.raises(DecodeError):
        onnx.load(str(path))
    assert loading.read_metadata(path) == expected


@pytest.mark.parametrize("content", [b"", b"\xff" * 20, b"\x3a\x10short", b"not an onnx file\n"])
def test_metadata_of_what_is_not_a_model_is_none_or_empty(tmp_path, content):
    """Unreadable bytes give None (a varint past 10 bytes; a length past the end; text whose bytes do
    not parse as fields); an empty file is a model with no fields. Either way the caller falls back
    to load_model, which says what is wrong."""
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert loading.read_metadata(path) == ({} if not content else None)
    assert loading.read_metadata(tmp_path / "missing.onnx") is None
    assert loading.read_metadata(tmp_path) is None

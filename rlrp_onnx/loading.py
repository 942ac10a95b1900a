"""Read and write ONNX files, turning every failure into a one-line RlrpError that names the file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from .errors import RlrpError, first_line
from .files import write_file
from .weightless import GRAPH_TOO_LARGE, LARGE, weightless, without_initializers

PROTOBUF_LIMIT = 2**31
TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
# Bytes per element of raw data. Not onnx's tensor_dtype_to_np_dtype: it says 1 for the 4-bit types, which
# raw data packs two to a byte; those (and the float8 types) are checked by converting them.
ITEMSIZES = {getattr(onnx.TensorProto, name): size for name, size in [
    ("FLOAT", 4), ("DOUBLE", 8), ("FLOAT16", 2), ("BFLOAT16", 2), ("BOOL", 1), ("INT8", 1), ("UINT8", 1),
    ("INT16", 2), ("UINT16", 2), ("INT32", 4), ("UINT32", 4), ("INT64", 8), ("UINT64", 8), ("COMPLEX64", 8),
    ("COMPLEX128", 16)]}
# The protobuf wire format's field types, for read_metadata
VARINT, LENGTH_DELIMITED, FIXED_SIZES = 0, 2, {1: 8, 5: 4}
METADATA_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["metadata_props"].number


def load_model(source) -> tuple[onnx.ModelProto, str]:
    """Return ``(model, label)`` for a path or a ModelProto; ``label`` names it in messages."""
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    if not isinstance(source, (str, os.PathLike)):
        raise RlrpError("the model must be an ONNX file path or an onnx.ModelProto (onnx.load_from_string "
                        f"reads serialized bytes), got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise RlrpError(f"{path}: no such file")
    if not path.is_file():
        raise RlrpError(f"{path}: not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.checker.ValidationError) as error:
        raise RlrpError(f"{path}: not a readable ONNX model ({first_line(error)})") from None
    if not model.graph.node or not model.opset_import:
        raise RlrpError(f"{path}: not an ONNX model (no graph or no opset)")
    _declare_output_shapes(model)
    try:
        onnx.checker.check_model(weightless(model))  # the large weights are checked below, without copies
    except onnx.checker.ValidationError as error:
        raise RlrpError(f"{path}: corrupt ONNX model ({first_line(error)})") from None
    _check_weights(model, path)
    return model, str(path)


def read_metadata(path) -> dict[str, str] | None:
    """The ``metadata_props`` of the ONNX file at ``path``, read without parsing its graph (which holds
    the weights, most of the file): the other top-level fields are skipped. None when the file cannot
    be read or is not laid out as a serialised ModelProto; ``load_model`` then says why."""
    entries = {}
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            while file.tell() < size:
                key = _varint(file)
                field, wire = key >> 3, key & 7
                if wire == VARINT:
                    _varint(file)
                elif wire in FIXED_SIZES:
                    file.seek(FIXED_SIZES[wire], os.SEEK_CUR)
                elif wire != LENGTH_DELIMITED:  # the deprecated groups, not used by ONNX
                    return None
                elif field == METADATA_FIELD:
                    entry = onnx.StringStringEntryProto.FromString(file.read(_varint(file)))
                    entries[entry.key] = entry.value
                else:
                    file.seek(_varint(file), os.SEEK_CUR)
            if file.tell() != size:  # a length ran past the end
                return None
    except (OSError, ValueError, DecodeError):
        return None
    return entries


def _varint(file) -> int:
    """One base-128 varint of the protobuf wire format, read from ``file``."""
    value = 0
    for shift in range(0, 70, 7):
        byte = file.read(1)
        if not byte:
            raise ValueError("the file ends inside a varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("a varint longer than 10 bytes")


def _declare_output_shapes(model: onnx.ModelProto) -> None:
    """Give outputs declared without a shape the shape onnx infers for them: ONNX Runtime runs such
    models, onnx's checker refuses them (it then still does, where nothing can be inferred)."""
    outputs = [o for o in model.graph.output if o.type.HasField("tensor_type")
               and not o.type.tensor_type.HasField("shape")]
    if not outputs:
        return
    try:
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(weightless(model)).graph.output}
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return
    for output in outputs:
        found = inferred.get(output.name)
        if found is not None and found.type.tensor_type.HasField("shape"):
            output.type.tensor_type.shape.CopyFrom(found.type.tensor_type.shape)


def _check_weights(model: onnx.ModelProto, path: Path) -> None:
    """Every weight stores its data in one field, and that data fits its shape (onnx's checker tests the
    fit only from onnx 1.23 on, and runs on a weightless copy here)."""
    for weight in model.graph.initializer:
        raw = len(weight.raw_data) if weight.HasField("raw_data") else 0  # reading it copies it: once
        stored = ["raw_data"] * bool(raw) + [field for field in TYPED_FIELDS if len(getattr(weight, field))]
        if len(stored) > 1:
            raise RlrpError(f"{path}: corrupt ONNX model (weight {weight.name!r} stores its data twice, in "
                            f"{' and '.join(stored)})")
        if weight.data_type == onnx.TensorProto.STRING:
            continue
        itemsize = ITEMSIZES.get(weight.data_type)
        if stored == ["raw_data"] and itemsize:  # the common case, without converting the data
            expected = math.prod(weight.dims) * itemsize
            problem = None if raw == expected else f"{raw} bytes of data, {expected} expected"
        else:
            problem = _conversion_problem(weight)
        if problem:
            raise RlrpError(f"{path}: corrupt ONNX model (weight {weight.name!r} does not fit its declared "
                            f"shape {list(weight.dims)}: {problem})")


def _conversion_problem(weight: onnx.TensorProto) -> str | None:
    try:
        onnx.numpy_helper.to_array(weight)  # reshapes the data to the declared shape
    except ValueError as error:
        return first_line(error)
    return None


def save_model(model: onnx.ModelProto, path, source: str | None = None) -> None:
    """Write ``model`` to ``path`` (external data past 2 GB); never over the ``source`` file."""
    path = Path(path)
    if source and os.path.exists(source) and path.exists() and path.resolve() == Path(source).resolve():
        raise RlrpError(f"{path}: refusing to overwrite the source model; choose another output path")
    write_file(path, lambda name: _write(model, Path(name)))


def _write(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model``'s bytes to ``path``, or ``path`` plus ``<path>.data`` past protobuf's 2 GB."""
    data = serialized(model)
    if data is None:
        save_with_external_data(model, path)
    else:
        path.write_bytes(data)


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` to ``path`` with the raw data of its initializers of more than ``LARGE`` elements in
    ``<path>.data`` (replaced if there), read one at a time: ``model`` is not changed or copied. Weights
    stored in typed fields stay in the model, as onnx's own external-data writer leaves them; RlrpError
    when the rest still passes 2 GB."""
    data_path = path.parent / (path.name + ".data")
    light, graph = without_initializers(model)
    try:
        with open(data_path, "wb") as data:
            for tensor in model.graph.initializer:
                if math.prod(tensor.dims) <= LARGE or not tensor.HasField("raw_data"):
                    graph.initializer.append(tensor)  # copied by serialising it
                    continue
                offset = data.tell()
                data.write(tensor.raw_data)
                stored = graph.initializer.add(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type,
                                               data_location=onnx.TensorProto.EXTERNAL)
                for key, value in (("location", data_path.name), ("offset", offset), ("length", data.tell() - offset)):
                    stored.external_data.add(key=key, value=str(value))
        graph_bytes = light.SerializeToString()
    except (EncodeError, ValueError):  # weights in typed fields past 2 GB: newer protobuf, older
        data_path.unlink()
        raise RlrpError(GRAPH_TOO_LARGE) from None
    path.write_bytes(graph_bytes)


def serialized(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when protobuf cannot hold it in one message (2 GB): sure when its
    weights alone reach that, else told only by failing (asking the size costs as long as serialising)."""
    weights = sum(math.prod(t.dims) * ITEMSIZES.get(t.data_type, 0) for t in model.graph.initializer)
    if weights >= PROTOBUF_LIMIT:
        return None
    try:
        return model.SerializeToString()
    except (EncodeError, ValueError):
        return None

"""The inputs a model is explained at, their spatial sizes pinned so every shape on the relevance path is
static, and the outputs' batch size freed where it is."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import RlrpError
from ..rules.elementwise import RESHAPING

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
INTEGER_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16,
                 onnx.TensorProto.INT32, onnx.TensorProto.INT64}
MOVES = RESHAPING | {"Slice", "Gather", "GatherND"}  # what may move integer pixels before the model casts them


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def explained_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs to explain: the float32 and float16 ones, and the integer ones shaped like images
    (rank 3 or more: pixels, such as uint8, that the model casts to float itself; ``explained_tensors``
    checks that), not integer scalars or shapes."""
    def explained(value) -> bool:
        t = value.type.tensor_type
        return t.elem_type in FLOAT_TYPES or (t.elem_type in INTEGER_TYPES and len(t.shape.dim) >= 3)

    return [i for i in runtime_inputs(model) if explained(i)]


def explained_tensors(graph: gs.Graph, inputs: list[onnx.ValueInfoProto], label: str) -> list[gs.Variable]:
    """The graph inputs to explain. An integer input, and the tensors that carry its values to the model's
    Casts to float by ops that only move or select them (torch casts after a permute), become float32 in
    ``graph``, which is planned only, never run: the relevance pass runs back to the input itself, and
    ``graft`` casts it where the pass reads it."""
    types = {i.name: i.type.tensor_type.elem_type for i in inputs}
    explained = [t for t in graph.inputs if t.name in types]
    for tensor in (t for t in explained if types[t.name] not in FLOAT_TYPES):
        for moved in _carried_to_casts(tensor, types[tensor.name], label):
            moved.dtype = np.float32
    return explained


def _carried_to_casts(tensor: gs.Variable, element_type: int, label: str) -> list[gs.Variable]:
    """``tensor`` and the tensors that carry its values to Casts to float through ``MOVES``; RlrpError naming
    any other node that reads them (Shape and Size aside)."""
    found, queue = [], [tensor]
    while queue:
        found.append(queue.pop())
        for reader in found[-1].outputs:
            if reader.op in ("Shape", "Size") or (reader.op == "Cast" and reader.attrs.get("to") in FLOAT_TYPES):
                continue
            if reader.op not in MOVES or reader.inputs[0] is not found[-1]:
                kind = onnx.TensorProto.DataType.Name(element_type).lower()
                what = reader.op if reader.op != "Cast" else \
                    f"Cast to {onnx.TensorProto.DataType.Name(reader.attrs['to']).lower()}"
                raise RlrpError(f"{label}: input '{tensor.name}' ({kind}) reaches {reader.name} ({what}) before any "
                                "Cast to float32 or float16: an integer input is explained where the model casts it "
                                "to float, after ops that only move its values")
            queue.extend(reader.outputs)
    return found


def free_output_batches(model: onnx.ModelProto) -> None:
    """Clear the batch size of graph outputs declared with a fixed one while the explained inputs' is dynamic
    (TorchScript writes the example's when the outputs' dynamic axes are not given, and ONNX Runtime runs
    the model at any batch), so shape inference follows the inputs'."""
    batches = [i.type.tensor_type.shape.dim[0] for i in explained_inputs(model) if i.type.tensor_type.shape.dim]
    if not batches or any(d.HasField("dim_value") for d in batches):
        return
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].Clear()


def pin_input_shapes(model: onnx.ModelProto, label: str, overrides: dict[str, list[int]] | None) -> None:
    """Set every explained input's non-batch dims to static values (given, or already in the model)."""
    if overrides is not None and (not isinstance(overrides, dict) or not all(
            isinstance(shape, (list, tuple, np.ndarray)) for shape in overrides.values())):
        raise RlrpError(f"{label}: input_shapes must map input names to shapes, e.g. "
                        f"{{'image': [1, 3, 224, 224]}}; got {overrides!r}")
    overrides = dict(overrides or {})
    inputs = explained_inputs(model)
    unknown = sorted(set(overrides) - {value.name for value in inputs})
    if unknown:
        raise RlrpError(f"{label}: no explained input named {', '.join(map(repr, unknown))} "
                        f"(explained inputs: {', '.join(value.name for value in inputs)})")
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        given = overrides.get(value.name)
        if given is not None:
            _check_given(label, value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims],
                         list(given))
            for dim, size in zip(list(dims)[1:], given[1:]):
                dim.Clear()
                dim.dim_value = int(size)
        missing = [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]
        if missing:
            raise RlrpError(f"{label}: input '{value.name}' has dynamic size on axes {missing}; "
                            "pass the input shape (--input-shape N,C,H,W; input_shapes= in Python)")


def _whole(size) -> bool:
    return isinstance(size, (int, float, np.integer, np.floating)) and not isinstance(size, bool) \
        and float(size).is_integer() and size >= 1


def _check_given(label: str, name: str, declared: list, given: list) -> None:
    """A given shape must have the input's rank, positive whole sizes (the batch's may be a name or None:
    it stays as declared), and agree with its static sizes."""
    if len(given) != len(declared):
        raise RlrpError(f"{label}: input '{name}' has rank {len(declared)}, "
                        f"but the given shape {given} has rank {len(given)}")
    if not (given[0] is None or isinstance(given[0], str) or _whole(given[0])) or not all(map(_whole, given[1:])):
        raise RlrpError(f"{label}: the given shape {given} of input '{name}' must hold whole sizes >= 1 "
                        "(the batch's may be a name or None)")
    clash = [axis for axis, (d, g) in enumerate(zip(declared, given)) if axis > 0 and d and d != g]
    if clash:
        shown = "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"
        raise RlrpError(f"{label}: input '{name}' is declared {shown}, the given shape {given} differs "
                        f"on axes {clash}")

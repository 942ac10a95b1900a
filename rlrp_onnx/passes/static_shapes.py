"""Pin the spatial sizes of the float inputs so every shape on the relevance path is static."""

from __future__ import annotations

import onnx

from ..errors import RlrpError

FLOAT_TYPES = {onnx.TensorProto.FLOAT}


def float_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that can be explained (float32, not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input
            if i.name not in initializers and i.type.tensor_type.elem_type in FLOAT_TYPES]


def pin_input_shapes(model: onnx.ModelProto, label: str, overrides: dict[str, list[int]] | None) -> None:
    """Set every explained input's non-batch dims to static values (given, or already in the model)."""
    overrides = dict(overrides or {})
    for value in float_inputs(model):
        dims = value.type.tensor_type.shape.dim
        given = overrides.pop(value.name, None)
        if given is not None:
            if len(given) != len(dims):
                raise RlrpError(f"{label}: input '{value.name}' has rank {len(dims)}, "
                                f"but the given shape {given} has rank {len(given)}")
            for dim, size in zip(list(dims)[1:], given[1:]):
                dim.Clear()
                dim.dim_value = int(size)
        missing = [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]
        if missing:
            raise RlrpError(f"{label}: input '{value.name}' has dynamic size on axes {missing}; "
                            "pass the input shape (--input-shape N,C,H,W)")
    if overrides:
        raise RlrpError(f"{label}: no float input named {sorted(overrides)}")

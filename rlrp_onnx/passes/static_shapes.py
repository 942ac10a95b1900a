"""Pin the spatial sizes of the float inputs so every shape on the relevance path is static."""

from __future__ import annotations

import onnx

from ..errors import RlrpError

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def float_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that can be explained (float32 or float16, not initializers)."""
    return [i for i in runtime_inputs(model) if i.type.tensor_type.elem_type in FLOAT_TYPES]


def pin_input_shapes(model: onnx.ModelProto, label: str, overrides: dict[str, list[int]] | None) -> None:
    """Set every explained input's non-batch dims to static values (given, or already in the model)."""
    overrides = dict(overrides or {})
    inputs = float_inputs(model)
    unknown = sorted(set(overrides) - {value.name for value in inputs})
    if unknown:
        raise RlrpError(f"{label}: no float input named {', '.join(map(repr, unknown))} "
                        f"(float inputs: {', '.join(value.name for value in inputs)})")
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


def _check_given(label: str, name: str, declared: list, given: list) -> None:
    """A given shape must have the input's rank, positive whole sizes, and agree with its static sizes."""
    if len(given) != len(declared):
        raise RlrpError(f"{label}: input '{name}' has rank {len(declared)}, "
                        f"but the given shape {given} has rank {len(given)}")
    if any(isinstance(size, bool) or int(size) != size or size < 1 for size in given):
        raise RlrpError(f"{label}: the given shape {given} of input '{name}' must hold whole sizes >= 1")
    clash = [axis for axis, (d, g) in enumerate(zip(declared, given)) if axis > 0 and d and d != g]
    if clash:
        shown = "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"
        raise RlrpError(f"{label}: input '{name}' is declared {shown}, the given shape {given} differs "
                        f"on axes {clash}")

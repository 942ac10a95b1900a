"""Graft the relevance pass onto the untouched source model, so its own outputs stay bit-identical."""

from __future__ import annotations

import copy

import onnx

from .errors import RlrpError
from .passes.float16 import HALF, SINGLE, uses_float16
from .passes.fold import infer_shapes, untyped_by_onnx
from .passes.static_shapes import INTEGER_TYPES, explained_inputs
from .weightless import weightless


def graft(source: onnx.ModelProto, built: onnx.ModelProto, new_nodes: set[str],
          new_inputs: list[str], new_outputs: list[str], label: str, in_place: bool = False) -> onnx.ModelProto:
    """The source model plus the nodes named ``new_nodes`` of ``built`` (its canonical form with the
    relevance pass), the initializers they need that the source lacks, the shapes of their tensors
    that ``built`` knows, ONNX Runtime's types of the source's tensors ONNX cannot type, and the new
    inputs/outputs. ``built`` is float32; the float16 tensors of the source that the relevance pass reads,
    and the integer inputs it explains, reach it through Casts. ``in_place``: added to ``source`` itself,
    when nobody else holds it (no copy of the weights)."""
    untyped = untyped_by_onnx(source, label)  # else strict shape inference fails on the compiled model
    model = source if in_place else copy.deepcopy(source)
    graph = model.graph
    available = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    available |= {o for n in graph.node for o in n.output}
    nodes = [n for n in built.graph.node if n.name in new_nodes]
    if uses_float16(source) or any(i.type.tensor_type.elem_type in INTEGER_TYPES for i in explained_inputs(source)):
        nodes = _read_as_float32(source, built, nodes, available, label)
    produced = {o for n in nodes for o in n.output}
    needed = {i for n in nodes for i in n.input if i and i not in produced and i not in available}
    initializers = {t.name: t for t in built.graph.initializer}
    inputs = {t.name: t for t in built.graph.input}
    missing = sorted(needed - initializers.keys() - inputs.keys())
    if missing:
        raise RlrpError(f"{label}: internal error, the relevance pass reads tensors the source lacks: {missing[:5]}")
    _raise_old_ir(model)
    graph.initializer.extend(initializers[name] for name in sorted(needed) if name in initializers)
    graph.node.extend(nodes)
    graph.value_info.extend(v for v in built.graph.value_info if v.name in produced)
    graph.value_info.extend(untyped)
    graph.input.extend(inputs[name] for name in new_inputs)
    outputs = {t.name: t for t in built.graph.output}
    graph.output.extend(outputs[name] for name in new_outputs)
    return model


def _raise_old_ir(model: onnx.ModelProto) -> None:
    """An IR 3 model (the first model zoos': every initializer also listed as an input, read as a constant)
    raised to the IR version its opsets need, at least 4, its initializers no longer listed as inputs (the
    same constants): the relevance pass adds initializers that are not inputs, and an optional input
    ``rlrp_target`` with a default, which IR 3 cannot express."""
    if model.ir_version >= 4:
        return
    constants = {t.name for t in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in constants]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(4, onnx.helper.find_min_ir_version_for(list(model.opset_import)))


def _read_as_float32(source: onnx.ModelProto, built: onnx.ModelProto, nodes: list[onnx.NodeProto],
                     available: set[str], label: str) -> list[onnx.NodeProto]:
    """``nodes`` preceded by a Cast to float32 of each tensor of the source (``available``) they read that
    is float16, or integer where ``built`` planned it as float32 (an explained input), and reading that
    instead."""
    types = _element_types(source, label)
    planned = {v.name: v.type.tensor_type.elem_type for v in [*built.graph.input, *built.graph.value_info]}
    produced = {o for n in nodes for o in n.output}
    taken = available | produced | {n.name for n in [*source.graph.node, *nodes]}
    read = sorted({i for n in nodes for i in n.input if i and i in available})
    unknown = [name for name in read if name not in types]
    if unknown:
        raise RlrpError(f"{label}: cannot tell the element type of {unknown[:5]}, which the relevance pass reads "
                        "(ONNX shape inference gives none)")
    widened = {name: _fresh(f"rlrp_float32/{name}", taken) for name in read
               if types[name] == HALF or (types[name] in INTEGER_TYPES and planned.get(name) == SINGLE)}
    casts = [onnx.helper.make_node("Cast", [name], [wide], name=wide, to=SINGLE) for name, wide in widened.items()]
    for node in nodes:
        node.input[:] = [widened.get(name, name) for name in node.input]
    return casts + nodes


def _element_types(model: onnx.ModelProto, label: str) -> dict[str, int]:
    """Element type of every tensor of the main graph whose type is declared, stored or inferred."""
    inferred = infer_shapes(weightless(model), label).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.output, *inferred.value_info]
             if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, primed until no tensor or node uses it; then taken."""
    while name in taken:
        name += "'"
    taken.add(name)
    return name

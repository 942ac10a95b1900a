"""Graft the relevance pass onto the untouched source model, so its own outputs stay bit-identical."""

from __future__ import annotations

import copy

import onnx

from .errors import RlrpError


def graft(source: onnx.ModelProto, built: onnx.ModelProto, new_nodes: set[str],
          new_inputs: list[str], new_outputs: list[str], label: str) -> onnx.ModelProto:
    """The source model plus the nodes named ``new_nodes`` of ``built`` (its canonical form with the
    relevance pass), the initializers they need that the source lacks, the shapes of their tensors
    that ``built`` knows, and the new inputs/outputs."""
    model = copy.deepcopy(source)
    graph = model.graph
    available = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    available |= {o for n in graph.node for o in n.output}
    nodes = [n for n in built.graph.node if n.name in new_nodes]
    produced = {o for n in nodes for o in n.output}
    needed = {i for n in nodes for i in n.input if i and i not in produced and i not in available}
    initializers = {t.name: t for t in built.graph.initializer}
    inputs = {t.name: t for t in built.graph.input}
    missing = sorted(needed - initializers.keys() - inputs.keys())
    if missing:
        raise RlrpError(f"{label}: internal error, the relevance pass reads tensors the source lacks: {missing[:5]}")
    graph.initializer.extend(initializers[name] for name in sorted(needed) if name in initializers)
    graph.node.extend(nodes)
    graph.value_info.extend(v for v in built.graph.value_info if v.name in produced)
    graph.input.extend(inputs[name] for name in new_inputs)
    outputs = {t.name: t for t in built.graph.output}
    graph.output.extend(outputs[name] for name in new_outputs)
    return model

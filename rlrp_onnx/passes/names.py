"""Names in a graph: unique node names for the planning graph, and every name an ONNX graph uses."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def unique_node_names(graph: gs.Graph) -> gs.Graph:
    """Name unnamed (or repeatedly named) nodes ``<op>#<position>``; named ones keep their name."""
    seen: set[str] = set()
    for position, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}#{position}"
        seen.add(node.name)
    return graph


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs ``node`` holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    return [graph for attribute in node.attribute
            for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []) + list(attribute.graphs)]


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every node and tensor name of ``graph`` and of the subgraphs its nodes hold."""
    names = {t.name for t in [*graph.input, *graph.output, *graph.initializer, *graph.value_info]}
    for node in graph.node:
        names |= {node.name, *node.input, *node.output}
        for inner in subgraphs(node):
            names |= all_names(inner)
    return names

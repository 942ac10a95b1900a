"""Give every node of the planning graph a unique name, so rules and messages can point at it."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def unique_node_names(graph: gs.Graph) -> gs.Graph:
    """Name unnamed (or repeatedly named) nodes ``<op>#<position>``; named ones keep their name."""
    seen: set[str] = set()
    for position, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}#{position}"
        seen.add(node.name)
    return graph

"""Reshapes that change no shape (tf2onnx's transpose optimizer writes them for Transposes of size-1
axes) are dropped from the canonical graph, so that patterns around them (a LayerNorm's mean) are seen
whole; planning only, the compiled model keeps them."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def drop_identity_reshapes(graph: gs.Graph) -> gs.Graph:
    """Rewire the readers of every shape-keeping Reshape (same rank, the same static sizes after the
    batch axis, so the same batch too) to its input."""
    outputs = {t.name for t in graph.outputs}
    for node in [n for n in graph.nodes if n.op == "Reshape"]:
        source, result = node.inputs[0], node.outputs[0]
        if result.name in outputs or not _keeps_shape(source.shape, result.shape):
            continue
        for reader in list(result.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is result:
                    reader.inputs[i] = source
    return graph.cleanup()


def _keeps_shape(before, after) -> bool:
    return before is not None and after is not None and len(before) == len(after) >= 1 \
        and all(isinstance(d, int) for d in before[1:]) and list(before[1:]) == list(after[1:])

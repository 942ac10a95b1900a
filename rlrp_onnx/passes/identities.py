"""Reshapes and Expands that change no shape (tf2onnx's transpose optimizer writes such Reshapes for
Transposes of size-1 axes; the dynamo exporter gives a reduction's axes back by a Reshape then an Expand to
the same shape) and Casts that change no type (a float16 model's float32 twin keeps the casts its exporter wrote
between float16 and float32 as float32 to float32) are dropped from the canonical graph, so that patterns
around them (a LayerNorm's mean, a variance computed on a float32 copy) are seen whole; planning only,
the compiled model keeps them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def drop_identities(graph: gs.Graph) -> gs.Graph:
    """Rewire the readers of every shape-keeping Reshape (same rank, the same static sizes after the
    batch axis, so the same batch too), of every Expand to its input's own shape (the batch too) and of
    every float32 Cast of a float32 tensor to its input."""
    outputs = {t.name for t in graph.outputs}
    for node in [n for n in graph.nodes if n.op in ("Reshape", "Expand", "Cast")]:
        source, result = node.inputs[0], node.outputs[0]
        if result.name in outputs or not _keeps(node, source, result):
            continue
        for reader in list(result.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is result:
                    reader.inputs[i] = source
    return graph.cleanup()


def _keeps(node, before, after) -> bool:
    if node.op == "Cast":
        return node.attrs.get("to") == onnx.TensorProto.FLOAT and before.dtype == np.float32
    before, after = before.shape, after.shape
    if node.op == "Expand" and (before is None or after is None or before[:1] != after[:1]):
        return False
    return before is not None and after is not None and len(before) == len(after) >= 1 \
        and all(isinstance(d, int) for d in before[1:]) and list(before[1:]) == list(after[1:])

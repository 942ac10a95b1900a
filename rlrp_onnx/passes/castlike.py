"""Replace CastLike by Cast where the target type is known, so constant folding can see through it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def castlike_to_cast(graph: gs.Graph) -> gs.Graph:
    """``CastLike(x, like)`` → ``Cast(x, to=dtype(like))``: the dynamo exporter casts constants
    (zero biases, Clip bounds) "like" a runtime tensor, which otherwise blocks folding."""
    for node in graph.nodes:
        if node.op == "CastLike" and node.inputs[1].dtype is not None:
            to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(node.inputs[1].dtype))
            node.op, node.attrs, node.inputs = "Cast", {"to": to}, [node.inputs[0]]
    return graph

"""SplitToSequence read back with SequenceAt at constant positions (the dynamo exporter's ``torch.split``)
→ one Split, each SequenceAt becoming an Identity (or Squeeze) of its piece: relevance rules see tensors,
not sequences."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def _sizes(node, length):
    """The piece sizes along the axis, or None if not constant."""
    split = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1].name else None
    if split is None:
        return [1] * length
    if not isinstance(split, gs.Constant):
        return None
    values = np.asarray(split.values).astype(np.int64)
    if values.ndim == 0:
        chunk = int(values)
        return [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    return values.tolist()


def split_to_sequence(graph: gs.Graph) -> gs.Graph:
    """Rewrite every SplitToSequence whose readers are all SequenceAt with a constant position."""
    opset = graph.opset
    for node in list(graph.nodes):
        if node.op != "SplitToSequence":
            continue
        x, readers = node.inputs[0], list(node.outputs[0].outputs)
        shape = list(x.shape or [])
        axis = int(node.attrs.get("axis", 0))
        if not shape or not isinstance(shape[axis], int) or not readers or any(
                r.op != "SequenceAt" or not isinstance(r.inputs[1], gs.Constant) for r in readers):
            continue
        axis %= len(shape)
        sizes = _sizes(node, shape[axis])
        if sizes is None:
            continue
        pieces = [gs.Variable(f"{node.name}_piece{i}", dtype=x.dtype) for i in range(len(sizes))]
        if opset >= 13:
            split = gs.Node("Split", f"{node.name}_split", {"axis": axis},
                            [x, gs.Constant(f"{node.name}_sizes", np.asarray(sizes, np.int64))], pieces)
        else:
            split = gs.Node("Split", f"{node.name}_split", {"axis": axis, "split": sizes}, [x], pieces)
        graph.nodes.append(split)
        squeeze = len(node.inputs) < 2 or not node.inputs[1].name
        squeeze = squeeze and not int(node.attrs.get("keepdims", 1))
        for reader in readers:
            piece = pieces[int(np.asarray(reader.inputs[1].values)) % len(pieces)]
            if squeeze and opset >= 13:
                reader.op, reader.attrs = "Squeeze", {}
                reader.inputs = [piece, gs.Constant(f"{reader.name}_axes", np.asarray([axis], np.int64))]
            elif squeeze:
                reader.op, reader.attrs, reader.inputs = "Squeeze", {"axes": [axis]}, [piece]
            else:
                reader.op, reader.attrs, reader.inputs = "Identity", {}, [piece]
        node.outputs.clear()
        node.inputs.clear()
    return graph.cleanup().toposort()

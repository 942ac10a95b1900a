"""Recognise the hard sigmoid written as ``Clip(x + 3, 0, 6) / 6`` (Keras through tf2onnx, and hand-written
``relu6(x + 3) / 6``) and make its last node a ``HardSigmoid(x, alpha=1/6, beta=1/2)`` writing the same
tensor, so that ``x · hard_sigmoid(x)`` (HardSwish) and hard-sigmoid squeeze-excitation meet the Mul gate
rule. HardSigmoid is a standard op at every supported opset; the canonical graph is only planned (gelu.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import clip_bounds, close, producer, scalar


def _x_plus_three(tensor):
    """x for ``tensor`` = x + 3."""
    node = producer(tensor)
    if node is None or node.op != "Add":
        return None
    for x, three in (node.inputs, node.inputs[::-1]):
        if scalar(x) is None and close(scalar(three), 3.0):
            return x
    return None


def _scaled_by_sixth(node):
    """Whether ``node`` multiplies by 1/6 or divides by 6."""
    if node.op == "Div":
        return close(scalar(node.inputs[1]), 6.0)
    return node.op == "Mul" and any(close(scalar(t), 1 / 6) for t in node.inputs)


def recognise_hard_sigmoid(graph: gs.Graph) -> gs.Graph:
    """Replace the scaling node of each matched pattern by ``HardSigmoid(x)`` writing the same tensor."""
    found = False
    for clip in list(graph.nodes):
        if clip.op != "Clip" or not clip.outputs or len(clip.outputs[0].outputs) != 1:
            continue
        low, high = clip_bounds(clip)
        x = _x_plus_three(clip.inputs[0])
        top = clip.outputs[0].outputs[0]
        if x is None or low != 0.0 or not close(high, 6.0) or not _scaled_by_sixth(top):
            continue
        top.op, top.attrs, top.inputs = "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [x]
        found = True
    return graph.cleanup().toposort() if found else graph

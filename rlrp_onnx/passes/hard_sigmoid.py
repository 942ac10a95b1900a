"""Recognise the hard sigmoid written as ``Clip(x + 3, 0, 6) / 6`` (Keras through tf2onnx, and hand-written
``relu6(x + 3) / 6``) and make its last node a ``HardSigmoid(x, alpha=1/6, beta=1/2)`` writing the same
tensor, so that ``x · hard_sigmoid(x)`` (HardSwish) and hard-sigmoid squeeze-excitation meet the Mul gate
rule; and HardSwish bracketed as ``(x · relu6(x + 3)) / 6`` (a common MobileNetV3 spelling, whose product
of two data tensors took the half rule), whose last node becomes ``HardSwish(x)``. Both are standard ops
from opsets before or at 14; the canonical graph is only planned (gelu.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import clip_bounds, close, only_user, producer, scalar


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
    """Replace the scaling node of each matched pattern by ``HardSigmoid(x)`` (or ``HardSwish(x)``) writing
    the same tensor."""
    found = False
    for clip in list(graph.nodes):
        top = only_user(clip) if clip.op == "Clip" else None
        if top is None:
            continue
        low, high = clip_bounds(clip)
        x = _x_plus_three(clip.inputs[0])
        if x is None or low != 0.0 or not close(high, 6.0):
            continue
        if _scaled_by_sixth(top):
            top.op, top.attrs, top.inputs = "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [x]
        elif top.op == "Mul" and any(t is x for t in top.inputs) and (scaled := only_user(top)) is not None \
                and _scaled_by_sixth(scaled):
            scaled.op, scaled.attrs, scaled.inputs = "HardSwish", {}, [x]
        else:
            continue
        found = True
    return graph.cleanup().toposort() if found else graph

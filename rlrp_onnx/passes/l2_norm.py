"""Recognise L2 normalization, ``x / max(‖x‖₂, ε)`` over some axes, as both torch exporters write
``F.normalize`` (ReduceL2 with keepdims, Clip(min=ε), Expand to x's shape, Div; cosine classifiers,
CLIP-style zero-shot heads), also with Max(·, ε) or without ε, and make its Div an ``LpNormalization``
node writing the same tensor, whose rule holds the norm constant. The node is only planned (gelu.py):
its axes and ε are in planned attributes.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..rules.normalization import PLANNED_AXES, PLANNED_EPSILON
from .gelu import clip_bounds, keepdims_axes, plan_divisions, producer, scalar


def _clamped(node: gs.Node) -> tuple[gs.Variable, float] | None:
    """(t, ε) for a node computing max(t, ε) with a constant ε: Clip with a min only, or Max."""
    if node.op == "Clip":
        low, high = clip_bounds(node)
        return (node.inputs[0], low) if low is not None and high is None and \
            (len(node.inputs) < 3 or not node.inputs[2].name) else None
    if node.op == "Max" and len(node.inputs) == 2:
        for t, bound in (node.inputs, node.inputs[::-1]):
            if scalar(bound) is not None and scalar(t) is None:
                return t, scalar(bound)
    return None


def _normalization(divisor, x):
    """("LpNormalization", its attributes) when ``divisor`` is max(‖x‖₂ over axes, ε) kept as dims of size 1
    (ε 0: no clamp), possibly expanded to x's shape; else None."""
    node = producer(divisor)
    if node is not None and node.op == "Expand":
        node = producer(node.inputs[0])
    epsilon = 0.0
    clamped = _clamped(node) if node is not None else None
    if clamped is not None:
        node, epsilon = producer(clamped[0]), clamped[1]
    if node is None or node.op != "ReduceL2" or node.inputs[0] is not x or x.shape is None:
        return None
    axes = keepdims_axes(node, len(x.shape))
    if axes == []:  # none named: all of them, unless the node is told to reduce none
        axes = None if node.attrs.get("noop_with_empty_axes", 0) else list(range(len(x.shape)))
    if axes is None:
        return None
    return "LpNormalization", {"axis": axes[0], "p": 2, PLANNED_AXES: axes, PLANNED_EPSILON: epsilon}


def recognise_l2_norm(graph: gs.Graph) -> gs.Graph:
    """Make the Div of each matched pattern ``LpNormalization(x)`` (p = 2) writing the same tensor."""
    return plan_divisions(graph, _normalization)

"""Recognise LayerNorm written out in arithmetic (torch's export below opset 17, which has no
LayerNormalization op) and replace it, in the canonical graph only, by one ``LayerNormalization`` node,
whose rule holds the statistics constant.

Form matched: ``m = ReduceMean(x)``, ``d = x − m``, ``σ = Sqrt(ReduceMean(d²) + ε)``, ``d / σ``, then
optionally ``· γ`` and ``+ β`` by constants, the means over the same trailing axes. Like ``gelu.py``,
the node is only planned, never run, so it is valid at any opset.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .gelu import producer, scalar


def recognise_layer_norm(graph: gs.Graph) -> gs.Graph:
    """Replace every matched decomposition by a LayerNormalization node writing its last tensor."""
    for div in [n for n in graph.nodes if n.op == "Div"]:
        found = _match(div)
        if found is None:
            continue
        x, axis, epsilon, last = found
        scale, bias, last = _affine(last, x, axis)
        out = last.outputs[0]
        last.outputs.clear()
        graph.nodes.append(gs.Node("LayerNormalization", f"{div.name}/layer_norm", {"axis": axis, "epsilon": epsilon},
                                   [x, scale] + ([bias] if bias is not None else []), [out]))
    return graph.cleanup().toposort()


def _mean_axes(node, rank: int) -> list[int] | None:
    """The axes of a keepdims ReduceMean (attribute or constant input), non-negative, or None."""
    if node is None or node.op != "ReduceMean" or not node.attrs.get("keepdims", 1):
        return None
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1:
        axes = node.inputs[1].values.tolist() if isinstance(node.inputs[1], gs.Constant) else None
    return sorted(a % rank for a in axes) if axes else None


def _only_read_by(tensor, *readers) -> bool:
    return sorted(id(n) for n in tensor.outputs) == sorted(id(n) for n in readers)


def _match(div):
    """(x, axis, ε, Div) when ``div`` is (x − mean(x)) / Sqrt(mean((x − mean(x))²) + ε)."""
    sub, sqrt = producer(div.inputs[0]), producer(div.inputs[1])
    if sub is None or sub.op != "Sub" or sqrt is None or sqrt.op != "Sqrt":
        return None
    x, d = sub.inputs[0], sub.outputs[0]
    mean = producer(sub.inputs[1])
    add = producer(sqrt.inputs[0])
    if x.shape is None or mean is None or mean.inputs[0] is not x or add is None or add.op != "Add":
        return None
    variance = [producer(t) for t in add.inputs if scalar(t) is None]
    epsilon = [scalar(t) for t in add.inputs if scalar(t) is not None]
    if len(variance) != 1 or len(epsilon) != 1 or variance[0] is None or variance[0].op != "ReduceMean":
        return None
    square = producer(variance[0].inputs[0])
    if square is None or square.op != "Pow" or square.inputs[0] is not d or scalar(square.inputs[1]) != 2.0:
        return None
    rank = len(x.shape)
    axes = _mean_axes(mean, rank)
    if axes is None or axes != _mean_axes(variance[0], rank) or axes != list(range(axes[0], rank)):
        return None
    if not (_only_read_by(mean.outputs[0], sub) and _only_read_by(d, square, div)
            and _only_read_by(square.outputs[0], variance[0]) and _only_read_by(variance[0].outputs[0], add)
            and _only_read_by(add.outputs[0], sqrt) and _only_read_by(sqrt.outputs[0], div)):
        return None
    if not all(isinstance(size, int) for size in x.shape[axes[0]:]):
        return None
    return x, axes[0], epsilon[0], div


def _affine(last, x, axis: int):
    """(γ, β, last node): the constant Mul and Add that follow ``last`` as its only readers (γ = ones
    when there is no Mul)."""
    scale = bias = None
    for op in ("Mul", "Add"):
        users = last.outputs[0].outputs
        if len(users) != 1 or users[0].op != op:
            break
        constants = [t for t in users[0].inputs if isinstance(t, gs.Constant)]
        if len(constants) != 1 or len(users[0].inputs) != 2 or constants[0].values.ndim > len(x.shape) - axis:
            break
        if op == "Mul":
            scale = constants[0]
        else:
            bias = constants[0]
        last = users[0]
    if scale is None:
        ones = np.ones(x.shape[axis:], dtype=np.float32)
        scale = gs.Constant(f"{last.name}/ones", ones)
    return scale, bias, last

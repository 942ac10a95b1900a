"""Recognise hard sigmoids written out: a clip of an affine map of x, then an affine map, ``c·clip(a·x + b,
lo, hi) + d`` (the clip a ``Clip`` or a ``Max`` and a ``Min`` by constants, as the dynamo exporter writes
``clamp`` unoptimized; a and b, c and d from products, quotients, sums and differences by constant
numbers), which is ``k·HardSigmoid(x; α, β) + m`` with α = a/(hi − lo), β = (b − lo)/(hi − lo),
k = c·(hi − lo), m = c·lo + d. It is planned as ``HardSigmoid`` (times k, plus m) writing the same tensor:

* where it is the standard hard sigmoid (k = 1, m = 0, α = 1/6, β = 1/2: Keras's ``Clip(x + 3, 0, 6) / 6``
  through tf2onnx, ``relu6(x + 3) / 6``, torch's documented ``clamp(x / 6 + 1/2, 0, 1)``), so that
  ``x · hard_sigmoid(x)`` and hard-sigmoid squeeze-excitation meet the Mul gate rule;
* where it multiplies another data tensor that is no gate's output, as a gate, also scaled or shifted
  (timm's hard Mish ``0.5·x·clamp(x + 2, 0, 2)``, a gate ``clamp(s + 3, 0, 6)`` divided by 6 after the
  product);
* and HardSwish bracketed as ``(x · relu6(x + 3)) / 6`` (a common MobileNetV3 spelling, whose product of
  two data tensors took the half rule) as ``HardSwish(x)``.

Other clips on the data path (ReLU6, hardtanh, ``clamp(2x, 0, 1)``) are left to the Clip rule. The ops are standard from
opsets before or at 14; the canonical graph is only planned (gelu.py).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .gelu import affine_step, clip_bounds, close, number_operand, only_user, producer

PRODUCTS = ("Mul", "MatMul", "Einsum")
VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Identity")


def recognise_hard_sigmoid(graph: gs.Graph) -> gs.Graph:
    """Plan each matched clip chain as HardSigmoid (or HardSwish), writing the chain's last tensor."""
    found = False
    for node in list(graph.nodes):
        bounded = _bounded(node)
        if bounded is None:
            continue
        source, low, high = bounded
        x, a, b = _affine_source(source)
        last, c, d = _affine_readers(node)
        if not high > low or a == 0.0:
            continue
        alpha, beta = a / (high - low), (b - low) / (high - low)
        k, m = c * (high - low), c * low + d
        swish = _bracketed_swish(last, x, k, m, alpha, beta)
        if swish is not None:
            swish.op, swish.attrs, swish.inputs = "HardSwish", {}, [x]
        elif last is node and source is x:  # a plain clip
            continue
        elif close(k, 1.0) and abs(m) < 1e-7 and close(alpha, 1 / 6) and close(beta, 0.5):
            last.op, last.attrs, last.inputs = "HardSigmoid", {"alpha": alpha, "beta": beta}, [x]
        elif _gates_data(last.outputs[0]):
            _plan_scaled(graph, last, x, alpha, beta, k, m)
        else:
            continue
        found = True
    return graph.cleanup().toposort() if found else graph


def _bounded(node):
    """(t, lo, hi) for ``node`` computing clip(t, lo, hi) with constant bounds: a Clip, or the last of a
    Max by lo (or Relu: 0) and a Min by hi, in either order, the first read only by the second."""
    if node.op == "Clip":
        low, high = clip_bounds(node)
        return None if low is None or high is None else (node.inputs[0], low, high)
    outer = _bound(node) if node.op in ("Max", "Min") else None
    first = producer(outer[0]) if outer is not None else None
    inner = _bound(first)
    if inner is None or only_user(first) is not node or {node.op, first.op} not in ({"Max", "Min"}, {"Relu", "Min"}):
        return None
    low, high = (outer[1], inner[1]) if node.op == "Max" else (inner[1], outer[1])
    return inner[0], low, high


def _bound(node):
    """(t, bound) for a Max or Min of a tensor t and a constant number (a Relu: t, 0), else None."""
    if node is None:
        return None
    if node.op == "Relu":
        return node.inputs[0], 0.0
    found = number_operand(node) if node.op in ("Max", "Min") else None
    return None if found is None else found[:2]


def _affine_source(tensor):
    """(x, a, b) with ``tensor`` = a·x + b through products, quotients, sums, differences and negations by
    constant numbers, x the first tensor not computed so."""
    a, b = 1.0, 0.0
    while (step := affine_step(producer(tensor))) is not None:
        tensor, (scale, shift) = step
        a, b = a * scale, b + a * shift  # a·(scale·t + shift) + b
    return tensor, a, b


def _affine_readers(node):
    """(last node, c, d): ``node``'s output followed through single readers that are affine by constant
    numbers to the last one's output, which is c·(node's output) + d."""
    c, d, last = 1.0, 0.0, node
    while (reader := only_user(last)) is not None and (step := affine_step(reader)) is not None:
        scale, shift = step[1]
        c, d, last = c * scale, d * scale + shift, reader
    return last, c, d


def _bracketed_swish(last, x, k, m, alpha, beta):
    """The node writing (x·g)/k where ``last`` writes g = k·HardSigmoid(x/6 + 1/2), read only by x·g, or None."""
    product = only_user(last)
    if product is None or product.op != "Mul" or abs(m) > 1e-7 or not close(alpha, 1 / 6) or not close(beta, 0.5) \
            or not any(t is x for t in product.inputs):
        return None
    scaled = only_user(product)
    step = affine_step(scaled)
    return scaled if step is not None and close(step[1][0] * k, 1.0) and step[1][1] == 0.0 else None


def _gates_data(tensor) -> bool:
    """Whether every reader of ``tensor`` multiplies it by a data tensor that is not a gate's output (then
    two gates would multiply, and relevance might reach this one's planned nodes, which the source lacks)."""
    return bool(tensor.outputs) and all(
        n.op in PRODUCTS and len(n.inputs) == 2 and not any(_constant_or_gate(t) for t in n.inputs if t is not tensor)
        for n in tensor.outputs)


def _constant_or_gate(tensor) -> bool:
    """Whether ``tensor`` is a constant, or a Sigmoid's, HardSigmoid's or Softmax's output, also viewed."""
    while (node := producer(tensor)) is not None and node.op in VIEWS:
        tensor = node.inputs[0]
    return isinstance(tensor, gs.Constant) or (node is not None and node.op in ("Sigmoid", "HardSigmoid", "Softmax"))


def _plan_scaled(graph, last, x, alpha, beta, k, m) -> None:
    """``last`` rewritten as k·HardSigmoid(x) + m, writing its tensor (whose name the new ones extend)."""
    name = last.outputs[0].name
    gate = gs.Variable(f"{name}/hard_sigmoid", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(gs.Node("HardSigmoid", f"{name}/hard_sigmoid", {"alpha": alpha, "beta": beta}, [x], [gate]))
    constant = lambda part, v: gs.Constant(f"{name}/{part}", np.asarray(v, dtype=np.float32))  # noqa: E731
    if abs(m) > 1e-7:
        scaled = gs.Variable(f"{name}/scaled", dtype=x.dtype, shape=x.shape)
        graph.nodes.append(gs.Node("Mul", f"{name}/scale", inputs=[gate, constant("k", k)], outputs=[scaled]))
        last.op, last.attrs, last.inputs = "Add", {}, [scaled, constant("m", m)]
    else:
        last.op, last.attrs, last.inputs = "Mul", {}, [gate, constant("k", k)]

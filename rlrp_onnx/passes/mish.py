"""Recognise Mish written out, ``x · tanh(softplus(x))`` (any operand order), as torch's TorchScript exporter
writes ``nn.Mish`` at every opset and code writes it (the dynamo exporter's softplus then has its threshold
branch, a Where), and make its Mul a ``Mish(x)`` writing the same tensor, whose rule holds
the gate tanh(softplus(x)) constant, as for the op the dynamo exporter writes. Read node by node, the
product took the half rule and Softplus the identity rule, whose pole near x = 0 dropped half of the
relevance there. The canonical graph is only planned, so the opset-18 op is valid at any opset (gelu.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import affine_step, producer, scalar

SOFTPLUS_LINEAR_FROM = 15.0  # softplus(t) = t in float32 from here: torch's default threshold, 20, is past it


def _gate_of(gate, x) -> bool:
    """Whether ``gate`` is tanh(softplus(x)), computed for this product only."""
    tanh = producer(gate)
    return (tanh is not None and tanh.op == "Tanh" and _is_softplus_of(tanh.inputs[0], x)
            and len(gate.outputs) == 1 and len(tanh.inputs[0].outputs) == 1)


def _is_softplus_of(tensor, x) -> bool:
    """Whether ``tensor`` is Softplus(x), or, as the dynamo exporter writes ``F.softplus`` with its
    threshold, Where(x > t, x, Softplus(x)) for a t where the two branches agree (the Softplus and the
    comparison read by that Where only; unoptimized, with softplus's β = 1 applied: x·1 compared and
    softened, Softplus(x·1) / 1)."""
    node = producer(tensor)
    if node is not None and node.op == "Where":
        above, softplus = producer(node.inputs[0]), producer(_by_one(node.inputs[2]))
        if above is None or above.op != "Greater" or _by_one(above.inputs[0]) is not x or node.inputs[1] is not x \
                or not (scalar(above.inputs[1]) or 0.0) >= SOFTPLUS_LINEAR_FROM \
                or softplus is None or len(node.inputs[0].outputs) != 1 or len(node.inputs[2].outputs) != 1:
            return False
        node = softplus
    return node is not None and node.op == "Softplus" and _by_one(node.inputs[0]) is x


def _by_one(tensor):
    """t for ``tensor`` = t·1 or t / 1, else ``tensor``."""
    node = producer(tensor)
    step = affine_step(node) if node is not None and node.op in ("Mul", "Div") else None
    return step[0] if step is not None and step[1] == (1.0, 0.0) else tensor


def recognise_mish(graph: gs.Graph) -> gs.Graph:
    """Replace each ``Mul(x, Tanh(Softplus(x)))`` by ``Mish(x)`` writing the same tensor."""
    found = False
    for mul in [n for n in graph.nodes if n.op == "Mul" and len(n.inputs) == 2]:
        x = next((x for x, gate in (mul.inputs, mul.inputs[::-1]) if _gate_of(gate, x)), None)
        if x is not None:
            mul.op, mul.attrs, mul.inputs = "Mish", {}, [x]
            found = True
    return graph.cleanup().toposort() if found else graph

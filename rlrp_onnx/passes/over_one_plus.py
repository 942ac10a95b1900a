"""Recognise activations written as ``x / (1 + g(x))`` (the Add in any operand order): Softsign,
``x / (|x| + 1)``, as both torch exporters write ``nn.Softsign`` (``F.softsign`` is that Python
expression), and SiLU written ``x / (1 + exp(−x))`` (Swish, ``x / (1 + exp(−α·x))``). The Div becomes a
``Softsign(x)``, read with its identity rule as one activation, or a ``Swish(x)``, whose gate σ(αx) is held
as for ``x·sigmoid(x)``. Read node by node, each was refused: a Div by a tensor computed at run time. The
canonical graph is only planned, so Swish (opset 24) is valid at any opset (gelu.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import only_user, plan_divisions, producer, scalar


def _softsign(node, x):
    """{} when ``node`` is Abs(x)."""
    return {} if node.op == "Abs" and node.inputs[0] is x else None


def _swish(node, x):
    """{"alpha": α} when ``node`` is Exp(−α·x) (a Neg of x, or x times −α), α > 0."""
    inner = producer(node.inputs[0]) if node.op == "Exp" else None
    if inner is None or only_user(inner) is not node:
        return None
    if inner.op == "Neg" and inner.inputs[0] is x:
        return {"alpha": 1.0}
    factors = [scalar(t) for t in inner.inputs] if inner.op == "Mul" and len(inner.inputs) == 2 else []
    if len(factors) == 2 and factors.count(None) == 1 and inner.inputs[factors.index(None)] is x \
            and factors[1 - factors.index(None)] < 0:
        return {"alpha": -factors[1 - factors.index(None)]}
    return None


FORMS = {"Softsign": _softsign, "Swish": _swish}  # op: (node computing g(x), x) → its attributes, or None


def _over_one_plus(tensor, x):
    """(op, attributes) when ``tensor`` is 1 + g(x) for one of FORMS, computed for this division only."""
    add = producer(tensor)
    if add is None or add.op != "Add" or len(add.inputs) != 2 or len(tensor.outputs) != 1:
        return None
    for term, one in (add.inputs, add.inputs[::-1]):
        node = producer(term)
        if scalar(one) == 1.0 and node is not None and only_user(node) is add:
            for op, form in FORMS.items():
                attrs = form(node, x)
                if attrs is not None:
                    return op, attrs
    return None


def recognise_over_one_plus(graph: gs.Graph) -> gs.Graph:
    """Replace each ``Div(x, 1 + g(x))`` of FORMS by that op on x, writing the same tensor."""
    return plan_divisions(graph, _over_one_plus)

"""Recognise activations written as ``x / (1 + g(x))`` (the Add in any operand order): Softsign,
``x / (|x| + 1)``, as both torch exporters write ``nn.Softsign`` (``F.softsign`` is that Python
expression), and SiLU written ``x / (1 + exp(−x))`` (Swish, ``x / (1 + exp(−α·x))``). The Div becomes a
``Softsign(x)``, read with its identity rule as one activation, or a ``Swish(x)``, whose gate σ(αx) is held
as for ``x·sigmoid(x)``. Read node by node, each was refused: a Div by a tensor computed at run time. The
canonical graph is only planned, so Swish (opset 24) is valid at any opset (gelu.py).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import affine_step, number_operand, only_user, plan_divisions, producer


def _softsign(node, x):
    """{} when ``node`` is Abs(x)."""
    return {} if node.op == "Abs" and node.inputs[0] is x else None


def _swish(node, x):
    """{"alpha": α} when ``node`` is Exp(−α·x) (a Neg of x, or x times −α), α > 0."""
    inner = producer(node.inputs[0]) if node.op == "Exp" else None
    if inner is None or only_user(inner) is not node:
        return None
    step = affine_step(inner) if inner.op in ("Neg", "Mul") else None
    if step is None or step[0] is not x or not step[1][0] < 0:
        return None
    return {"alpha": -step[1][0]}


FORMS = {"Softsign": _softsign, "Swish": _swish}  # op: (node computing g(x), x) → its attributes, or None


def _over_one_plus(tensor, x):
    """(op, attributes) when ``tensor`` is 1 + g(x) for one of FORMS, computed for this division only."""
    add = producer(tensor)
    found = number_operand(add) if add is not None and add.op == "Add" and len(tensor.outputs) == 1 else None
    node = producer(found[0]) if found is not None and found[1] == 1.0 else None
    if node is None or only_user(node) is not add:
        return None
    return next(((op, attrs) for op, form in FORMS.items() if (attrs := form(node, x)) is not None), None)


def recognise_over_one_plus(graph: gs.Graph) -> gs.Graph:
    """Replace each ``Div(x, 1 + g(x))`` of FORMS by that op on x, writing the same tensor."""
    return plan_divisions(graph, _over_one_plus)

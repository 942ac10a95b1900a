"""Recognise Softsign written out, ``x / (|x| + 1)`` (the Add in any operand order), as both torch exporters
write ``nn.Softsign`` (``F.softsign`` is that Python expression), and make its Div a ``Softsign(x)`` writing
the same tensor, whose identity rule reads it as one activation. Read node by node, it was refused: a Div by
a tensor computed at run time.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from .gelu import only_user, producer, scalar


def _denominator_of(tensor, x) -> bool:
    """Whether ``tensor`` is |x| + 1, computed for this division only."""
    add = producer(tensor)
    if add is None or add.op != "Add" or len(add.inputs) != 2 or len(tensor.outputs) != 1:
        return False
    for absolute, one in (add.inputs, add.inputs[::-1]):
        node = producer(absolute)
        if scalar(one) == 1.0 and node is not None and node.op == "Abs" and node.inputs[0] is x \
                and only_user(node) is add:
            return True
    return False


def recognise_softsign(graph: gs.Graph) -> gs.Graph:
    """Replace each ``Div(x, Add(Abs(x), 1))`` by ``Softsign(x)`` writing the same tensor."""
    found = False
    for div in [n for n in graph.nodes if n.op == "Div" and len(n.inputs) == 2]:
        x = div.inputs[0]
        if _denominator_of(div.inputs[1], x):
            div.op, div.attrs, div.inputs = "Softsign", {}, [x]
            found = True
    return graph.cleanup().toposort() if found else graph

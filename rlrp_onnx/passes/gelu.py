"""Recognise GELU written out in arithmetic and replace it, in the canonical graph only, by one ``Gelu``
node (ONNX opset-20 semantics, ``approximate`` "none" or "tanh"), whose rule holds the gate Φ(x) constant.

Forms matched (any operand order, the 1/2 anywhere in the product, x/√2 as Div or Mul):

* Erf:  ``0.5 · x · (1 + erf(x / √2))``  (both torch exporters, tf2onnx);
* Tanh: ``0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`` with x³ as Pow(x, 3) or x·(x·x), or the
  tanh's input as ``√(2/π) · x · (1 + 0.044715 · x²)`` (Hugging Face's FastGELU and ``gelu_new``).

The canonical graph is only planned, never run, so the node is valid at any opset: the compiled model is
the untouched source graph plus the relevance pass (graft.py), and the Gelu rule recomputes Φ(x) with Erf or
Tanh. The interior nodes of the pattern leave the canonical graph with cleanup.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

RTOL = 1e-3


def scalar(tensor) -> float | None:
    if isinstance(tensor, gs.Constant) and np.asarray(tensor.values).size == 1:
        return float(np.asarray(tensor.values).reshape(()))
    return None


def number_operand(node):
    """(t, c, i) when ``node`` has two inputs, a tensor t at index i and a constant number c, else None."""
    values = [scalar(t) for t in node.inputs] if node is not None else []
    if len(values) != 2 or values.count(None) != 1:
        return None
    i = values.index(None)
    return node.inputs[i], values[1 - i], i


def affine_step(node):
    """(t, (s, h)) when ``node`` computes s·t + h from one tensor t and constant numbers (Add, Sub, Mul, a
    Div by a number, Neg), else None."""
    if node is not None and node.op == "Neg":
        return node.inputs[0], (-1.0, 0.0)
    found = number_operand(node) if node is not None and node.op in ("Add", "Sub", "Mul", "Div") else None
    if found is None:
        return None
    tensor, value, i = found
    if node.op == "Add":
        return tensor, (1.0, value)
    if node.op == "Sub":
        return tensor, (1.0, -value) if i == 0 else (-1.0, value)
    if node.op == "Mul":
        return tensor, (value, 0.0)
    return (tensor, (1.0 / value, 0.0)) if i == 0 and value != 0.0 else None


def close(value, expected) -> bool:
    return value is not None and abs(value - expected) <= RTOL * abs(expected)


def producer(tensor):
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


def only_user(node):
    """The one node that reads ``node``'s first output, or None."""
    users = node.outputs[0].outputs if node.outputs else []
    return users[0] if len(users) == 1 else None


def plan_divisions(graph: gs.Graph, match) -> gs.Graph:
    """Make each ``Div(x, d)`` for which ``match(d, x)`` gives (op, attributes) that op on x, writing the same
    tensor (the recognisers of activations and normalizations written as a quotient)."""
    found = False
    for div in [n for n in graph.nodes if n.op == "Div" and len(n.inputs) == 2]:
        matched = match(div.inputs[1], div.inputs[0])
        if matched is not None:
            div.op, div.attrs, div.inputs = matched[0], matched[1], [div.inputs[0]]
            found = True
    return graph.cleanup().toposort() if found else graph


def keepdims_axes(node, rank: int) -> list[int] | None:
    """The axes a Reduce* node reduces while keeping them (an attribute, or a constant input from opset
    18), non-negative and sorted; [] when it names none; None when it drops them or its axes are
    computed at run time."""
    return reduced_axes(node, rank) if node.attrs.get("keepdims", 1) else None


def reduced_axes(node, rank: int) -> list[int] | None:
    """The axes a Reduce* node names (kept or not), as ``keepdims_axes``."""
    axes = node.attrs.get("axes")
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = node.inputs[1].values.reshape(-1).tolist() if isinstance(node.inputs[1], gs.Constant) else None
    return None if axes is None else sorted(int(a) % rank for a in axes)


def clip_bounds(node) -> list:
    """[min, max] of a Clip node (attributes below opset 11, inputs from it): numbers, None where absent
    or computed at run time."""
    if len(node.inputs) > 1:
        return [scalar(t) if t.name else None for t in node.inputs[1:3]] + [None] * (3 - len(node.inputs))
    return [node.attrs.get("min"), node.attrs.get("max")]


def factors(tensor, stop) -> tuple[Counter, float]:
    """``tensor`` as a product c·Π leaf^k through Mul, Div by a constant and Pow by a constant integer,
    not looking inside the tensors of ``stop``: returns ({leaf name: k}, c)."""
    if tensor.name in stop:
        return Counter({tensor.name: 1}), 1.0
    value = scalar(tensor)
    if value is not None:
        return Counter(), value
    node = producer(tensor)
    if node is not None and node.op == "Mul":
        (fa, ca), (fb, cb) = (factors(t, stop) for t in node.inputs)
        return fa + fb, ca * cb
    if node is not None and node.op == "Div" and scalar(node.inputs[1]):
        f, c = factors(node.inputs[0], stop)
        return f, c / scalar(node.inputs[1])
    if node is not None and node.op == "Pow" and scalar(node.inputs[1]) in (2.0, 3.0):
        k = int(scalar(node.inputs[1]))
        f, c = factors(node.inputs[0], stop)
        return Counter({name: n * k for name, n in f.items()}), c**k
    return Counter({tensor.name: 1}), 1.0


def _operand(node):
    """The single non-constant input of a binary node with one scalar constant."""
    variables = [t for t in node.inputs if scalar(t) is None]
    return variables[0] if len(variables) == 1 else None


def _erf_input(core):
    """x for an Erf whose input is x/√2."""
    node = producer(core.inputs[0])
    if node is None or node.op not in ("Div", "Mul"):
        return None
    x = _operand(node)
    if x is None:
        return None
    f, c = factors(core.inputs[0], {x.name})
    return x if f == Counter({x.name: 1}) and close(c, 1 / math.sqrt(2)) else None


def _tanh_input(core):
    """x for a Tanh whose input is √(2/π)·(x + 0.044715·x³), or √(2/π)·x·(1 + 0.044715·x²)."""
    f, c = factors(core.inputs[0], set())
    tensors = _upstream(core.inputs[0])
    sums = [name for name in f if (node := producer(tensors[name])) is not None and node.op == "Add"]
    if len(sums) != 1 or f[sums[0]] != 1 or not close(c, math.sqrt(2 / math.pi)):
        return None
    add, rest = producer(tensors[sums[0]]), f - Counter({sums[0]: 1})
    for a, b in (add.inputs, add.inputs[::-1]):
        if not rest:  # x + 0.044715·x³
            f, c = factors(b, {a.name})
            if f == Counter({a.name: 3}) and close(c, 0.044715):
                return a
        elif rest.total() == 1 and close(scalar(a), 1.0):  # x·(1 + 0.044715·x²)
            (x,) = rest
            f, c = factors(b, {x})
            if f == Counter({x: 2}) and close(c, 0.044715):
                return tensors[x]
    return None


def _upstream(tensor) -> dict:
    """The tensors ``factors`` may name for ``tensor`` (through Mul, Div and Pow), by name."""
    found, stack = {}, [tensor]
    while stack:
        t = stack.pop()
        if t.name not in found:
            found[t.name] = t
            node = producer(t)
            stack.extend(node.inputs if node is not None and node.op in ("Mul", "Div", "Pow") else [])
    return found


def _one_plus(core):
    """The Add node computing 1 + core, if that is core's only use."""
    add = only_user(core)
    if add is None or add.op != "Add":
        return None
    other = [t for t in add.inputs if t is not core.outputs[0]]
    return add if len(other) == 1 and close(scalar(other[0]), 1.0) else None


def _product_top(gate, x):
    """The Mul whose output is 0.5·x·gate, climbing single-use Muls from ``gate`` (at most 3)."""
    tensor = gate
    for _ in range(3):
        users = tensor.outputs
        if len(users) != 1 or users[0].op != "Mul":
            return None
        top = users[0]
        f, c = factors(top.outputs[0], {x.name, gate.name})
        if f == Counter({x.name: 1, gate.name: 1}) and close(c, 0.5):
            return top
        tensor = top.outputs[0]
    return None


FORMS = {"Erf": (_erf_input, "none"), "Tanh": (_tanh_input, "tanh")}


def recognise_gelu(graph: gs.Graph) -> gs.Graph:
    """Replace each matched GELU subgraph by ``Gelu(x)`` writing the same output tensor."""
    found = False
    for core in list(graph.nodes):
        if core.op not in FORMS or not core.outputs:
            continue
        find_x, approximate = FORMS[core.op]
        x = find_x(core)
        add = _one_plus(core) if x is not None else None
        top = _product_top(add.outputs[0], x) if add is not None else None
        if top is None:
            continue
        top.op, top.attrs, top.inputs = "Gelu", {"approximate": approximate}, [x]
        found = True
    return graph.cleanup().toposort() if found else graph

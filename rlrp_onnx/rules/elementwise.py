"""Elementwise arithmetic: bias and residual sums, scaling by constants, products of two data tensors."""

from __future__ import annotations

import numpy as np

from .registry import LINEAR, rule
from .statistics import REDUCTIONS, is_centred, is_statistic_behind, is_statistic_of, reduce_axes

GATES = {"Sigmoid", "HardSigmoid", "Softmax"}
RESHAPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose",  # move values, change none
             "Identity", "Dropout"}  # (attention dropout: Identity in dynamo's unoptimized export)
PRODUCTS = {"Mul", "MatMul", "Einsum"}  # what a gate may multiply
AFFINE = {"Add", "Sum", "Mean", "Sub", "Mul", "Div", "Neg"}  # with constants: x + c, c − x, x·c, x / c, −x


def affine_input(ctx, node) -> int | None:
    """The index of the one data input of an elementwise op whose other inputs are constants (an affine
    map of that input: a shift, a scale), or None."""
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    others = [t for i, t in enumerate(node.inputs) if i not in data]
    if node.op in AFFINE and len(data) == 1 and all(ctx.constant(t) is not None for t in others):
        return data[0]
    return None


@rule("Add", "Sum", "Mean", kind=LINEAR)
def add(ctx, node, rho):
    """rho_u = rho_v = rho_y (Mean of n: rho_y / n): a constant addend is a bias whose share stays behind; a
    skip splits R ∝ u, v."""
    y, r = node.outputs[0], rho[0]
    if node.op == "Mean":
        r = ctx.emit.mul(r, ctx.emit.const(1.0 / len(node.inputs)))
    return {i: ctx.unbroadcast(r, t, ctx.shape(y)) for i, t in enumerate(node.inputs) if ctx.is_data(t)}


@rule("Sub", kind=LINEAR)
def sub(ctx, node, rho):
    """rho_u = rho_y, rho_v = −rho_y."""
    y, result = node.outputs[0], {}
    if ctx.is_data(node.inputs[0]):
        result[0] = ctx.unbroadcast(rho[0], node.inputs[0], ctx.shape(y))
    if ctx.is_data(node.inputs[1]):
        result[1] = ctx.unbroadcast(ctx.emit.op("Neg", [rho[0]]), node.inputs[1], ctx.shape(y))
    return result


def _is_gate(ctx, tensor) -> bool:
    """Whether ``tensor`` is a gate's output, also reshaped, broadcast, split, sliced, tiled, resized or
    concatenated with other gates on the way (SENet's Sigmoid → view(N, C, 1, 1) → expand_as(x);
    ResNeSt's split softmax; GhostNetV2's upsampled gate), scaled or shifted by constants
    (``h·(2·sigmoid(s))`` and ``h·(1 + sigmoid(s))``, which then explain as ``2·(h·sigmoid(s))`` and
    ``h + h·sigmoid(s))``), or replaced by a constant where a condition holds (torch's attention with a
    boolean mask below opset 23: ``Where(IsNaN(w), 0, w)``)."""
    producer = ctx.producer(tensor)
    if producer is None:
        return False
    sources = _gate_sources(ctx, producer)
    return producer.op in GATES or bool(sources) and all(_is_gate(ctx, producer.inputs[i]) for i in sources)


GATE_MOVES = {"Split", "Slice", "Tile", "Resize", "Pad", "Gather", "GatherND", "GatherElements",
              "DepthToSpace", "SpaceToDepth", "AveragePool", "MaxPool"}  # from input 0: a gate's values (mixed)


GATE_COMBINATIONS = {"Mul", "Add", "Sum", "Sub", "Mean", "Max", "Min", "Clip"}  # of gates and input-free tensors
GATE_POWERS = {"Pow", "Sqrt"}  # of a gate, by a constant exponent: a gate (σ(s)²)


def _gate_sources(ctx, node) -> list[int]:
    """The inputs a gate passes through ``node`` from, where ``node`` keeps it a gate, else []: also a
    product or sum of gates and tensors that do not depend on the input (``σ(a)·σ(b)``; ConViT's
    ``(1 − σ(λ))·softmax(q·kᵀ) + σ(λ)·softmax(p)``, p a function of positions) and a gate divided by such
    a tensor or by a statistic of it (ConViT then divides by the sum over the keys), a power of a gate, and a
    gate reduced over axes other than the batch (its mean over the channels, attention averaged over heads)."""
    if node.op in RESHAPING or node.op in GATE_MOVES:
        return [0]
    if node.op in GATE_POWERS and all(ctx.constant(t) is not None for t in node.inputs[1:]):
        return [0]
    if node.op in REDUCTIONS:
        axes = reduce_axes(ctx, node)
        return [0] if axes and 0 not in axes else []
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    if node.op == "Concat" or node.op in GATE_COMBINATIONS and data:
        return data
    if node.op == "Div" and data[:1] == [0] and (data == [0] or is_statistic_of(ctx, node.inputs[1], node.inputs[0])):
        return [0]
    if node.op == "Where" and not ctx.is_data(node.inputs[0]):
        data = [i for i in (1, 2) if ctx.is_data(node.inputs[i])]
        return data if len(data) == 1 and ctx.constant(node.inputs[3 - data[0]]) is not None else []
    index = affine_input(ctx, node)
    return [] if index is None else [index]


def _softmax_check(ctx, node):
    """A Softmax that only gates products is held constant there and never reaches the relevance path
    (plan._relevance_path, ``held_operand``); one on the path is read otherwise: refused."""
    return ("Softmax inside the network is supported only as a gate (its output multiplies a data tensor, "
            "by Mul, MatMul or Einsum)")


@rule("Softmax", check=_softmax_check)
def softmax(ctx, node, rho):
    """Never called: every Softmax on the relevance path is refused (``_softmax_check``)."""
    return {}


@rule("Neg", kind=LINEAR)
def neg(ctx, node, rho):
    """rho_x = −rho_y."""
    return {0: ctx.emit.op("Neg", [rho[0]])}


@rule("Mul", kind=LINEAR)
def mul(ctx, node, rho):
    """By a constant: rho_x = c·rho_y. Two data tensors (``product``): a gate, or a statistic of the other
    operand, is held constant (rho_u = v·rho_y, rho_v = 0), otherwise each operand takes half
    (rho_u = v·rho_y/2, rho_v = u·rho_y/2)."""
    emit, y = ctx.emit, node.outputs[0]
    data = [ctx.is_data(t) for t in node.inputs]

    def adjoint(i, r):
        return ctx.unbroadcast(emit.mul(r, node.inputs[1 - i]), node.inputs[i], ctx.shape(y))

    if not all(data):
        return {data.index(True): adjoint(data.index(True), rho[0])}
    return product(ctx, node, rho[0], adjoint)


def held_operand(ctx, node) -> int | None:
    """The operand index of a product of two data tensors (PRODUCTS) held constant as a gate, or of a Mul
    or Div as a statistic of the other operand (``statistics``), which no relevance reaches (with two
    gates, operand 1), or None."""
    if node.op not in {*PRODUCTS, "Div"} or len(node.inputs) != 2 \
            or not all(ctx.is_data(t) for t in node.inputs):
        return None
    if node.op == "Div":
        return 1 if _held_statistic(ctx, node.inputs[1], node.inputs[0]) else None
    if node.op == "Mul":  # a statistic of the other operand first: of a gate, the gate takes relevance
        statistics = [_held_statistic(ctx, t, node.inputs[1 - i]) for i, t in enumerate(node.inputs)]
        if all(statistics):  # two statistics of one tensor (a.mean(1) · a.mean((2, 3))): neither is held
            return None
        if any(statistics):
            return statistics.index(True)
    gates = [_is_gate(ctx, t) for t in node.inputs]
    if not any(gates):
        return None
    return 1 - (gates.index(False) if not all(gates) else 0)


def _held_statistic(ctx, s, u) -> bool:
    return is_statistic_behind(ctx, s, u) and not is_centred(ctx, u)


def product(ctx, node, rho, adjoint) -> dict:
    """Relative relevance of both data operands of a product y = u ∘ v (PRODUCTS), ``adjoint(i, r)``
    being the adjoint in operand i with the other held: a gate is held constant and the other operand
    takes all (rho_u = adjoint(0, rho_y), rho_v = 0); otherwise each operand takes half."""
    held = held_operand(ctx, node)
    if held is not None:
        return {1 - held: adjoint(1 - held, rho)}
    half = ctx.emit.mul(rho, ctx.emit.const(0.5))
    return {i: adjoint(i, half) for i in (0, 1)}


def _div_check(ctx, node):
    if ctx.constant(node.inputs[1]) is None and held_operand(ctx, node) is None:
        if is_statistic_of(ctx, node.inputs[1], node.inputs[0]):
            return ("Div of a centred tensor by a statistic of it: a LayerNorm written in a form passes/layer_norm.py "
                    "does not recognise (it would hold σ but not the mean) is not supported")
        return ("Div by a tensor computed at run time is not supported (except by a statistic of the "
                "dividend or of a tensor it is computed from: a norm or mean over non-batch axes)")
    return None


@rule("Div", check=_div_check, kind=LINEAR)
def div(ctx, node, rho):
    """x / c: rho_x = rho_y·(1/c), the reciprocal taken at compile time (no Div in the relevance pass).
    x / s for a statistic s of x, held constant (``statistics``): rho_x = rho_y / s."""
    if ctx.constant(node.inputs[1]) is None:
        return {0: ctx.unbroadcast(ctx.emit.op("Div", [rho[0], node.inputs[1]]), node.inputs[0],
                                   ctx.shape(node.outputs[0]))}
    divisor = ctx.constant(node.inputs[1])
    inverse = (1.0 / divisor.astype(np.float64)).astype(divisor.dtype)
    scaled = ctx.emit.mul(rho[0], ctx.emit.const(inverse, divisor.dtype))
    return {0: ctx.unbroadcast(scaled, node.inputs[0], ctx.shape(node.outputs[0]))}

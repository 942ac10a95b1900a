"""Piecewise-linear activations (also Max/Min of tensors and constants): rho_x = s(x)·rho_y, a mask or
slope read off the output."""

from __future__ import annotations

import functools

import numpy as np

from .pooling import relu_masked_by_pools
from .registry import ACTIVATION, rule


@rule("Relu", kind=ACTIVATION)
def relu(ctx, node, rho):
    """rho_x = [y > 0]·rho_y (the mask reads the output, so Conv+Relu fusion stays intact; read off the
    pooled output when only MaxPools read y, which then apply it)."""
    emit = ctx.emit
    if relu_masked_by_pools(ctx, node):
        return {0: rho[0]}
    return {0: emit.gate(rho[0], node.outputs[0], low=0.0)}


@rule("LeakyRelu", "Abs", kind=ACTIVATION)
def leaky_relu(ctx, node, rho):
    """rho_x = rho_y where x > 0, alpha·rho_y elsewhere (the sign read off y when alpha > 0); Abs is the
    LeakyRelu of slope −1."""
    emit = ctx.emit
    alpha = -1.0 if node.op == "Abs" else float(node.attrs.get("alpha", 0.01))
    signed = node.outputs[0] if alpha > 0 else node.inputs[0]
    positive = emit.op("Greater", [signed, emit.const(0.0)])
    return {0: emit.masked(positive, rho[0], alpha)}


def _prelu_check(ctx, node):
    if ctx.is_data(node.inputs[1]):
        return "PRelu with a slope computed from the input is not supported"
    return None


@rule("PRelu", check=_prelu_check, kind=ACTIVATION)
def prelu(ctx, node, rho):
    """rho_x = rho_y where x > 0, slope·rho_y elsewhere (the sign read off y when every slope is > 0)."""
    emit = ctx.emit
    slope = ctx.constant(node.inputs[1])
    signed = node.outputs[0] if slope is not None and np.all(slope > 0) else node.inputs[0]
    positive = emit.op("Greater", [signed, emit.const(0.0)])
    return {0: emit.masked(positive, rho[0], node.inputs[1])}


def _clip_bounds(ctx, node):
    """The constant (min, max) of a Clip node, None for an absent bound."""
    if len(node.inputs) > 1:
        bounds = [ctx.constant(t) if t.name else None for t in node.inputs[1:3]]
        bounds += [None] * (2 - len(bounds))
        return [None if b is None else float(b) for b in bounds]
    return [node.attrs.get("min"), node.attrs.get("max")]


def _clip_check(ctx, node):
    for t in node.inputs[1:3]:
        if t.name and ctx.constant(t) is None:
            return "Clip with bounds computed at run time is not supported"
    return None


@rule("Clip", check=_clip_check, kind=ACTIVATION)
def clip(ctx, node, rho):
    """rho_x = [min < x < max]·rho_y: where Clip saturates, the output is constant, like a bias."""
    low, high = _clip_bounds(ctx, node)
    return {0: ctx.emit.gate(rho[0], node.outputs[0], low, high)}


def _bound(ctx, tensor) -> np.ndarray | None:
    """The values of a constant bound: a constant (one value, or per channel as FRN's learned threshold
    ``torch.maximum(x, τ)``), or a tensor filled with one value at run time (``torch.zeros_like(x)``:
    ConstantOfShape of x's shape, or from the dynamo exporter an Expand of one number to it), else None."""
    value, producer = ctx.constant(tensor), ctx.producer(tensor)
    if value is None and producer is not None and producer.op == "ConstantOfShape":
        filler = producer.attrs.get("value")
        value = np.zeros(1, np.float32) if filler is None else np.asarray(getattr(filler, "values", filler))
    elif value is None and producer is not None and producer.op == "Expand":
        value = ctx.constant(producer.inputs[0])
        value = value if value is not None and value.size == 1 else None
    return None if value is None else np.asarray(value, np.float32)


def _extremum_check(ctx, node):
    if any(_bound(ctx, t) is None for t in node.inputs if not ctx.is_data(t)):
        return f"{node.op} with a bound computed at run time is not supported"
    return None


@rule("Max", "Min", check=_extremum_check, kind=ACTIVATION)
def extremum(ctx, node, rho):
    """Max or Min of tensors x_i and constants c. The constants are a Clip with one bound
    (``torch.maximum(x, 0)``, also against ``torch.zeros_like(x)``, is a ReLU; a bound per channel, as
    FRN's thresholded linear unit ``max(x, τ)``): rho_y passes where y > max c (Min: y < min c), elementwise.
    There it goes to the first x_i in input order that attains y (a maxout's winner; ties
    to the first, as a MaxPool's first maximum), summed over the axes along which x_i was broadcast. The
    winner is found by comparing the x_i with each other, never with y: in a float16 model y is rounded,
    and the relevance pass may read an x_i before its rounding."""
    emit, y = ctx.emit, node.outputs[0]
    bounds = [_bound(ctx, t) for t in node.inputs if not ctx.is_data(t)]
    r = rho[0]
    if bounds and all(b.size == 1 for b in bounds):
        values = [float(b.reshape(())) for b in bounds]
        low, high = (max(values), None) if node.op == "Max" else (None, min(values))
        r = emit.gate(r, y, low, high)
    elif bounds:
        bound = functools.reduce(np.maximum if node.op == "Max" else np.minimum, bounds)
        r = emit.masked(emit.op("Greater" if node.op == "Max" else "Less", [y, emit.const(bound)]), r)
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    best, shares = node.inputs[data[0]], {data[0]: 1.0}  # the extremum so far, and who holds it
    for n, i in enumerate(data[1:], start=2):
        ahead = emit.op("Greater" if node.op == "Max" else "Less", [node.inputs[i], best])  # strictly: ties stay
        shares = {j: emit.choose(ahead, 0.0, share) for j, share in shares.items()}
        shares[i] = emit.choose(ahead, 1.0)
        if n < len(data):
            best = emit.op(node.op, [best, node.inputs[i]])
    return {i: ctx.unbroadcast(r if isinstance(share, float) else emit.mul(r, share), node.inputs[i], ctx.shape(y))
            for i, share in shares.items()}

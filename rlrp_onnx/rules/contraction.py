"""More linear maps with constant weights: ConvTranspose (adjoint: Conv with the same weights) and Einsum
with one data operand (adjoint: the Einsum that contracts rho_y with the other operands); an Einsum of two
data operands (attention written with einsum) is a product with those adjoints."""

from __future__ import annotations

import re

from ..ir import text
from .elementwise import product
from .registry import LAYER, rule


def _conv_transpose_check(ctx, node):
    if ctx.constant(node.inputs[1]) is None:
        return "ConvTranspose with weights computed at run time is not supported"
    if text(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID") or "output_shape" in node.attrs:
        return "ConvTranspose with auto_pad SAME or output_shape is not supported (export with explicit pads)"
    return None


@rule("ConvTranspose", check=_conv_transpose_check, kind=LAYER)
def conv_transpose(ctx, node, rho):
    """rho_x = Conv(rho_y, W) with the same strides, dilations, pads and groups: the output_padding rows
    of y are never read, and the bias share stays behind."""
    w = node.inputs[1]
    rank = len(w.shape) - 2
    attrs = {"strides": node.attrs.get("strides", [1] * rank), "dilations": node.attrs.get("dilations", [1] * rank),
             "pads": node.attrs.get("pads", [0] * (2 * rank)), "group": node.attrs.get("group", 1),
             "kernel_shape": list(w.shape[2:])}
    return {0: ctx.emit.op("Conv", [rho[0], w], attrs)}


def _terms(ctx, node):
    """(input terms, output term) of the Einsum equation, the implicit output made explicit."""
    equation = text(node.attrs["equation"]).replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if not arrow:
        letters = re.sub(r"\.\.\.", "", inputs.replace(",", ""))
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        output = ("..." if "..." in inputs else "") + "".join(once)
    return terms, output


def _letters(term: str) -> list[str]:
    return re.findall(r"\.\.\.|[A-Za-z]", term)


def _einsum_check(ctx, node):
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    if len(node.inputs) != 2 or not data:
        return "Einsum is supported with two operands"
    terms, output = _terms(ctx, node)
    for index in data:
        mine = _letters(terms[index])
        if len(set(mine)) != len(mine):
            return "Einsum taking a diagonal of the input is not supported"
        if ("..." in mine) != ("..." in output):
            return "Einsum summing over '...' is not supported"
    if len(data) == 1 and "..." in terms[1 - data[0]]:
        return "Einsum broadcasting '...' against a constant operand is not supported"
    if len(data) == 2 and "..." in output:
        return "Einsum broadcasting '...' between two data operands is not supported"
    return None


@rule("Einsum", check=_einsum_check, kind=LAYER)
def einsum(ctx, node, rho):
    """One data operand: rho_x = einsum(out, other -> x); indices summed in x alone are broadcast back
    (Expand). Two (``elementwise.product``): a gate (attention weights) is held, else each takes half."""
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    if len(data) == 2:
        return product(ctx, node, rho[0], lambda index, r: _einsum_adjoint(ctx, node, index, r))
    return {data[0]: _einsum_adjoint(ctx, node, data[0], rho[0])}


def _einsum_adjoint(ctx, node, index: int, r):
    """The adjoint in operand ``index`` with the other operand held, applied to ``r`` (shaped like y)."""
    emit = ctx.emit
    terms, output = _terms(ctx, node)
    others = [t for i, t in enumerate(terms) if i != index]
    mine = _letters(terms[index])
    reachable = set(_letters(output)) | {c for t in others for c in _letters(t)}
    kept = [c for c in mine if c in reachable]
    equation = ",".join([output] + others) + "->" + "".join(kept)
    operands = [r] + [t for i, t in enumerate(node.inputs) if i != index]
    adjoint = emit.op("Einsum", operands, {"equation": equation})
    extra = len(ctx.shape(node.inputs[index])) - len(mine)  # axes of '...' beyond the one letter slot
    ellipsis = mine.index("...") if "..." in mine else len(mine)
    missing = [p + (extra if p > ellipsis else 0) for p, c in enumerate(mine) if c not in reachable]
    if missing:
        adjoint = emit.expand_like(emit.unsqueeze(adjoint, missing), node.inputs[index])
    return adjoint

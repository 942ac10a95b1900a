"""Gated activations y = x·g(x): the gate is held constant, rho_x = g(x)·rho_y (identity rule, R_x = R_y).

SiLU exported as ``Mul(x, Sigmoid(x))`` and HardSwish as ``Mul(x, HardSigmoid(x))`` meet the Mul gate rule
(rules/elementwise.py), which is this rule; GELU decomposed into Erf or Tanh arithmetic is turned into a
``Gelu`` node by passes/gelu.py. The gate g(x) is recomputed from x with ops of every opset >= 11.
"""

from __future__ import annotations

import math

from ..ir import NO_CUDA_SOFTPLUS, text
from .registry import ACTIVATION, rule


def _gelu_gate(emit, node, x):
    """Φ(x) = (1 + erf(x/√2))/2, or with approximate="tanh" (1 + tanh(√(2/π)·(x + 0.044715·x³)))/2."""
    if text(node.attrs.get("approximate", "none")) == "tanh":
        cube = emit.mul(emit.mul(x, x), x)
        inner = emit.op("Add", [x, emit.mul(cube, emit.const(0.044715))])
        core = emit.op("Tanh", [emit.mul(inner, emit.const(math.sqrt(2.0 / math.pi)))])
    else:
        core = emit.op("Erf", [emit.mul(x, emit.const(1.0 / math.sqrt(2.0)))])
    return emit.mul(emit.op("Add", [core, emit.const(1.0)]), emit.const(0.5))


def _mish_gate(emit, node, x):
    """tanh(softplus(x)); from opset NO_CUDA_SOFTPLUS on, softplus(x) as relu(x) + log(1 + exp(−|x|))."""
    if emit.opset < NO_CUDA_SOFTPLUS:
        softplus = emit.op("Softplus", [x])
    else:
        tail = emit.op("Exp", [emit.op("Neg", [emit.op("Abs", [x])])])
        softplus = emit.op("Add", [emit.op("Relu", [x]), emit.op("Log", [emit.op("Add", [tail, emit.const(1.0)])])])
    return emit.op("Tanh", [softplus])


GATES = {
    "HardSwish": lambda emit, node, x: emit.op("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "Swish": lambda emit, node, x: emit.op(
        "Sigmoid", [emit.mul(x, emit.const(float(node.attrs.get("alpha", 1.0))))]),
    "Mish": _mish_gate,
    "Gelu": _gelu_gate,
}


@rule(*GATES, kind=ACTIVATION)
def gated(ctx, node, rho):
    """rho_x = g(x)·rho_y: HardSwish g = HardSigmoid(x/6 + 1/2), Swish g = sigmoid(αx), Mish g = tanh(softplus(x)),
    Gelu g = Φ(x) (exact or tanh form)."""
    return {0: ctx.emit.mul(rho[0], GATES[node.op](ctx.emit, node, node.inputs[0]))}

"""Other elementwise activations inside the network: the identity rule R_x = R_y, so rho_x = rho_y·y/x.

This is the one rule of shared/RLRP.md that divides by a forward value. Near x = 0 the quotient y/x is
either a removable singularity (f(0) = 0: Tanh, Elu, Selu, Celu, Softsign, HardSigmoid with beta 0, x^p
for p ≥ 1) or a pole (f(0) ≠ 0: Sigmoid, Softplus, HardSigmoid; x^p for 0 < p < 1). Where |x| < TINY:

* removable: y/x is replaced by its one-sided limit f'(0⁻) or f'(0⁺) (they differ for Elu with alpha ≠ 1,
  Selu and HardSigmoid). float32 ``y / x``
  is wrong there: 0/0 at x = 0, and ONNX Runtime's Elu/Selu/Celu compute exp(x) − 1, which cancels
  (measured y/x = 1.19 at x = −1e−7 and 0 at −1e−8 for Elu, where the limit is 1). With TINY = 1e-4 the
  substituted limit is off by at most |f''|·TINY/2 ≈ 5e-5 (Elu), and the quotient just above the
  threshold by about float32 eps / TINY ≈ 1e-4;
* pole: the ratio is set to 0, so those elements pass no relevance: their R_y stays behind like a bias
  share. Any finite stand-in would be arbitrary, and an unbounded one (y/x reaches 1/(2·TINY) = 5000
  for Sigmoid at the threshold) would carry the division blow-up of LRP-0 (P1) into the layers below.

The divisor is replaced by 1 where masked, so no inf or NaN is ever formed.
"""

from __future__ import annotations

from .registry import ACTIVATION, rule

TINY = 1e-4

SELU_ALPHA = 1.67326319217681884765625  # ONNX defaults
SELU_GAMMA = 1.05070102214813232421875


def _hard_sigmoid_limits(node):
    """HardSigmoid(x) = clip(alpha·x + beta, 0, 1): removable (slopes 0 | alpha) only when beta = 0."""
    return (0.0, float(node.attrs.get("alpha", 0.2))) if float(node.attrs.get("beta", 0.5)) == 0.0 else None


def _exponent(node) -> float | None:
    """The constant scalar exponent of a Pow node, or None."""
    values = getattr(node.inputs[1], "values", None)
    return float(values.reshape(())) if values is not None and values.size == 1 else None


def _pow_limits(node):
    """x^p for p > 0 (squared ReLU, MetaFormer's StarReLU, GeM pooling): y/x = x^(p − 1), removable (limit 0,
    or 1 for p = 1) for p ≥ 1, a pole below."""
    p = _exponent(node)
    return ((1.0, 1.0) if p == 1.0 else (0.0, 0.0)) if p >= 1.0 else None


def _pow_check(ctx, node):
    if node.op == "Pow" and not (_exponent(node) or 0.0) > 0.0:
        return "Pow is supported with a constant positive exponent only"
    return None


# op -> (f'(0⁻), f'(0⁺)) where f(0) = 0, or None for a pole at 0
LIMITS = {
    "Tanh": lambda node: (1.0, 1.0),
    "Softsign": lambda node: (1.0, 1.0),
    "Celu": lambda node: (1.0, 1.0),
    "Elu": lambda node: (float(node.attrs.get("alpha", 1.0)), 1.0),
    "Selu": lambda node: (float(node.attrs.get("alpha", SELU_ALPHA)) * float(node.attrs.get("gamma", SELU_GAMMA)),
                          float(node.attrs.get("gamma", SELU_GAMMA))),
    "Sigmoid": lambda node: None,
    "Softplus": lambda node: None,
    "HardSigmoid": _hard_sigmoid_limits,
    "Pow": _pow_limits,
}


@rule(*LIMITS, check=_pow_check, kind=ACTIVATION)
def identity_rule(ctx, node, rho):
    """rho_x = rho_y·y/x for |x| ≥ TINY; below it the one-sided limit, or 0 at a pole (module docstring)."""
    emit = ctx.emit
    x, y = node.inputs[0], node.outputs[0]
    small = emit.op("Less", [emit.op("Abs", [x]), emit.const(TINY)])
    ratio = emit.op("Div", [y, emit.choose(small, 1.0, x)])
    below, above = LIMITS[node.op](node) or (0.0, 0.0)
    limit = above if below == above else emit.choose(emit.op("Less", [x, emit.const(0.0)]), below, above)
    return {0: emit.mul(rho[0], emit.choose(small, limit, ratio))}

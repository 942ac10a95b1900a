"""Choosing the explanation method: R-LRP, one classical rule for every layer, or a composite."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from .errors import RlrpError
from .rules import RULES
from .rules.classical import (LayerRule, alphabeta, bounds_fit, classical_rules, epsilon, flat, gamma, lrp0, wsquare,
                              zbox, zplus)

RLRP = "rlrp"
DENSE, CONVOLUTION, FIRST = "dense", "convolution", "first"
CATEGORY = {"Conv": CONVOLUTION, "ConvTranspose": CONVOLUTION, "Gemm": DENSE, "MatMul": DENSE, "Einsum": DENSE}


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the relevance pass computes in float32
EPSILON_MAX = FLOAT32_MAX / 4  # the stabilizer adds ε and subtracts 2ε (rules/classical.py, _stabilized)


PARAMETERS = ("epsilon", "gamma", "alpha", "beta", "low", "high")


@dataclass(frozen=True, init=False)
class Options:
    """Rule parameters, with the defaults of shared/RLRP.md; all finite in float32, ε > 0 there too,
    γ, α and β >= 0; numpy numbers are stored as Python floats, bounds as one float or a list of floats.
    ``given`` names the parameters passed, at their default value too: those a method must take. Built
    again from its fields with ``given`` (``dataclasses.replace``), those it names stay given and the
    others are given where their value is not the default."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: object = None   # z^B bounds of the values entering the layer: scalars or one value per channel
    high: object = None
    given: tuple = ()

    def __init__(self, epsilon=None, gamma=None, alpha=None, beta=None, low=None, high=None, given=None):
        passed = dict(zip(PARAMETERS, (epsilon, gamma, alpha, beta, low, high)))
        defaults = {parameter.name: parameter.default for parameter in fields(self)}
        for name, value in passed.items():
            object.__setattr__(self, name, defaults[name] if value is None else value)
        named = [name for name, value in passed.items()
                 if value is not None and (given is None or name in given or value != defaults[name])]
        object.__setattr__(self, "given", tuple(named))
        self.__post_init__()

    def __post_init__(self):
        for name in ("gamma", "alpha", "beta"):
            given = getattr(self, name)
            value = _float32_number(given)
            if value is None or value < 0:
                raise RlrpError(f"{name} must be a number >= 0 that float32 holds (finite), got {reprlib.repr(given)}")
            object.__setattr__(self, name, value)
        value = _float32_number(self.epsilon)  # ε = 0 would be the lrp0 rule
        if value is None or not (np.float32(value) > 0 and value <= EPSILON_MAX):
            smallest = np.finfo(np.float32).smallest_subnormal
            raise RlrpError(f"epsilon must be a number > 0 that float32 holds, from {smallest:.2g} to {EPSILON_MAX:.2g} "
                            f"(the stabilizer doubles it), got {reprlib.repr(self.epsilon)}")
        object.__setattr__(self, "epsilon", value)
        for name in ("low", "high"):
            given = getattr(self, name)
            if given is not None:
                object.__setattr__(self, name, _bound_values(name, given))


def _float32_number(value) -> float | None:
    """``value`` (a Python, numpy or 0-d array number, not a bool or text) as a Python float if float32
    holds it, else None."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and abs(value) <= FLOAT32_MAX else None


def _bound_values(name: str, given):
    """A z^B bound as one float, or a list of floats (one per channel); RlrpError for anything else."""
    values = np.asarray(given, dtype=object)
    floats = [_float32_number(v) for v in values.reshape(-1)] if values.ndim <= 1 and values.size else [None]
    if any(v is None for v in floats):
        raise RlrpError(f"{name} must be one number or a list of numbers, one per channel, each finite in float32; "
                        f"got {reprlib.repr(given)}")
    return floats[0] if values.ndim == 0 else floats


RULE_NAMES: dict[str, Callable[[Options], LayerRule]] = {
    "lrp0": lambda o: lrp0(),
    "epsilon": lambda o: epsilon(o.epsilon),
    "gamma": lambda o: gamma(o.gamma),
    "alphabeta": lambda o: alphabeta(o.alpha, o.beta),
    "zplus": lambda o: zplus(),
    "zbox": lambda o: zbox(*_bounds(o)),
    "flat": lambda o: flat(),
    "wsquare": lambda o: wsquare(),
}

COMPOSITES: dict[str, Callable[[Options], dict[str, LayerRule]]] = {
    "epsilon_plus": lambda o: {DENSE: epsilon(o.epsilon), CONVOLUTION: zplus()},
    "epsilon_plus_flat": lambda o: {DENSE: epsilon(o.epsilon), CONVOLUTION: zplus(), FIRST: flat()},
    "epsilon_alpha2_beta1": lambda o: {DENSE: epsilon(o.epsilon), CONVOLUTION: alphabeta(2.0, 1.0)},
    "epsilon_alpha2_beta1_flat": lambda o: {DENSE: epsilon(o.epsilon), CONVOLUTION: alphabeta(2.0, 1.0),
                                            FIRST: flat()},
    "epsilon_gamma_box": lambda o: {DENSE: epsilon(o.epsilon), CONVOLUTION: gamma(o.gamma), FIRST: zbox(*_bounds(o))},
}


BOUNDED = ("zbox", "epsilon_gamma_box")  # the rule and composite with a zbox layer: they need --low/--high


def _bounds(options: Options):
    if options.low is None or options.high is None:
        raise RlrpError("the z^B (zbox) rule needs the input bounds low and high (--low, --high)")
    try:
        inverted = np.any(np.asarray(options.low, np.float64) > np.asarray(options.high, np.float64))
    except ValueError:  # shapes that do not broadcast
        raise RlrpError(f"the zbox bounds --low {options.low} and --high {options.high} differ in length") from None
    if inverted:
        raise RlrpError(f"the zbox bounds need --low <= --high, got {options.low} and {options.high}")
    return options.low, options.high


@dataclass
class Method:
    """What the compiled relevance pass computes, and with which rule set."""

    name: str
    relative: bool
    rules: dict
    layer_rules: dict[str, LayerRule] = field(default_factory=dict)
    by_category: dict[str, LayerRule] = field(default_factory=dict)

    def assign(self, nodes, ctx, label: str) -> None:
        """Give every weighted layer on the relevance path its rule ("first" = no layer upstream), noting in
        ``ctx.after_layers`` the tensors downstream of a layer; an RlrpError where zbox bounds do not fit a
        layer's input channels."""
        if self.relative:
            return
        upstream = ctx.after_layers
        for node in nodes:
            before = any(t.name in upstream for t in node.inputs)
            if ctx.is_layer(node):
                first = not before and FIRST in self.by_category
                self.layer_rules[node.name] = self.by_category[FIRST if first else CATEGORY[node.op]]
                upstream.update(t.name for t in node.outputs)
            elif before:
                upstream.update(t.name for t in node.outputs)
        misfits = [f"{node.name} ({channels} channels)" for node in nodes if node.name in self.layer_rules
                   and (channels := _input_channels(ctx, node)) is not None
                   and not bounds_fit(self.layer_rules[node.name], channels)]
        if misfits:
            raise RlrpError(f"{label}: the zbox bounds (--low, --high) need one value, or one per input channel "
                            "of each layer they apply to; layers with other channel counts: " + ", ".join(misfits))

    def metadata(self) -> dict[str, str]:
        """What the compiled model records of the method."""
        described = {key: rule.describe() for key, rule in self.by_category.items()}
        return {"rlrp.rule": self.name, **{f"rlrp.rule.{k}": v for k, v in sorted(described.items())}}


def choose(rule: str | None = RLRP, composite: str | None = None, options: Options | None = None) -> Method:
    """The method for ``rule`` (None: R-LRP) or ``composite``, which overrides it; RlrpError for unknown
    names, and for an option set to a value none of the method's rules takes (it would be ignored)."""
    if options is not None and not isinstance(options, Options):
        raise RlrpError(f"options must be rlrp_onnx.Options(...), e.g. Options(epsilon=0.1); got {options!r}")
    options = options or Options()
    if composite is not None:
        if composite not in COMPOSITES:
            raise RlrpError(f"unknown composite '{composite}': choose one of {', '.join(COMPOSITES)}")
        method = Method(composite, False, classical_rules(), by_category=_checked(COMPOSITES[composite], options))
    elif rule in (None, RLRP):
        method = Method(RLRP, True, RULES)
    elif rule not in RULE_NAMES:
        raise RlrpError(f"unknown rule '{rule}': choose one of {', '.join([RLRP, *RULE_NAMES])}")
    else:
        chosen = _checked(lambda o: {DENSE: RULE_NAMES[rule](o)}, options)[DENSE]
        method = Method(rule, False, classical_rules(), by_category={DENSE: chosen, CONVOLUTION: chosen})
    used = [r.params for r in method.by_category.values()]
    given = {name: getattr(options, name) for name in options.given}
    unused = [f"{name}={value}" for name, value in given.items() if not any(p.get(name) == value for p in used)]
    if unused:
        raise RlrpError(f"{method.name} does not use {', '.join(unused)}")
    return method


def _checked(make, options):
    try:
        return make(options)
    except ValueError as error:
        raise RlrpError(str(error)) from None


def _input_channels(ctx, node):
    """Axis 1 of a layer's data input (None where its shape is unknown: ``inspect`` plans unchecked)."""
    shape = ctx.shape(next(t for t in node.inputs[:2] if ctx.is_data(t)))
    return shape[1] if len(shape) > 1 else None

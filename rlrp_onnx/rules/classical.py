"""Classical LRP rules (shared/RLRP.md, "Comparators") as configurations of one mechanism.

A layer ``y = A(x; W, b)`` propagates absolute relevance ``R`` as

    R_x = Σ_groups c · Σ_parts sign · in(x) ⊙ Aᵀ_{W'}( gate ⊙ R / stab(Σ_parts sign · A(in(x); W', b')) )

where each part modifies the input (``in``), the weights (``W'``) and the bias (``b'``), and each group
has a coefficient ``c`` and an optional gate on the sign of the layer's own output. ``Aᵀ`` is the
adjoint the R-LRP rule of the op already emits, applied with the modified weights, so no rule writes
its own backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from .elementwise import affine_input
from .registry import ACTIVATION, LAYER, LINEAR, NORMALIZATION, RULES, Rule

FIXED_EPSILON = 1e-6


@dataclass(frozen=True)
class Part:
    """One term: modifiers of the input, the weights and the bias (None: no bias), and its sign."""

    inputs: str = "x"
    weights: str = "W"
    bias: str | None = "b"
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Parts sharing one denominator; ``gate`` keeps R where the layer output is "pos" or "neg"."""

    parts: tuple[Part, ...]
    coefficient: float = 1.0
    gate: str | None = None


@dataclass(frozen=True)
class LayerRule:
    """A classical rule: its groups, stabilizer ε (None: no stabilizer) and parameters."""

    name: str
    groups: tuple[Group, ...]
    epsilon: float | None = FIXED_EPSILON
    params: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({values})" if values else self.name


PLAIN = (Part(),)
POSITIVE = (Part("pos", "pos", "pos"), Part("neg", "neg", None))
NEGATIVE = (Part("pos", "neg", "neg"), Part("neg", "pos", None))


def epsilon(eps: float = 1e-6) -> LayerRule:
    return LayerRule("epsilon", (Group(PLAIN),), eps, {"epsilon": eps})


def lrp0() -> LayerRule:
    return LayerRule("lrp0", (Group(PLAIN),), None)


def zplus() -> LayerRule:
    return LayerRule("zplus", (Group(POSITIVE),))


def alphabeta(alpha: float = 2.0, beta: float = 1.0) -> LayerRule:
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-9:
        raise ValueError(f"alpha-beta needs alpha - beta = 1 and both >= 0 (got {alpha}, {beta})")
    return LayerRule("alphabeta", (Group(POSITIVE, alpha), Group(NEGATIVE, -beta)), params={"alpha": alpha, "beta": beta})


def gamma(g: float = 0.25) -> LayerRule:
    up = (Part("pos", "up", "up"), Part("neg", "down", None))
    down = (Part("pos", "down", "down"), Part("neg", "up", None))
    return LayerRule("gamma", (Group(up, gate="pos"), Group(down, gate="neg")), params={"gamma": g})


def zbox(low, high) -> LayerRule:
    parts = (Part(), Part("low", "pos", "pos", -1.0), Part("high", "neg", "neg", -1.0))
    return LayerRule("zbox", (Group(parts),), params={"low": low, "high": high})


def bounds_fit(rule: LayerRule, channels) -> bool:
    """Whether ``rule``'s input bounds (zbox's low and high: one value, or one per channel of axis 1) fit
    a layer input with ``channels`` channels."""
    return all(np.size(rule.params[key]) in (1, channels) for key in ("low", "high") if key in rule.params)


def flat() -> LayerRule:
    return LayerRule("flat", (Group((Part("ones", "ones", None),)),))


def wsquare() -> LayerRule:
    return LayerRule("wsquare", (Group((Part("ones", "square", "square"),)),))


FIXED = epsilon(FIXED_EPSILON)  # average pooling, residual sums and other weightless linear ops


def _modified(emit, tensor, how: str, rule: LayerRule):
    """Weights or bias under a modifier, computed in the graph from the shared tensor (ONNX Runtime
    folds these constant subgraphs once, when the session is created), so the file stores no copy."""
    if how in ("W", "b"):
        return tensor
    pos = lambda: emit.op("Relu", [tensor])  # noqa: E731
    neg = lambda: emit.op("Min", [tensor, emit.const(0.0)])  # noqa: E731
    gamma = lambda part: emit.op("Add", [tensor, emit.mul(part, emit.const(rule.params["gamma"]))])  # noqa: E731
    table = {
        "pos": pos, "neg": neg,
        "ones": lambda: emit.expand_like(emit.const(1.0), tensor),
        "square": lambda: emit.mul(tensor, tensor),
        "up": lambda: gamma(pos()),
        "down": lambda: gamma(neg()),
    }
    out = table[how]()
    out.dtype, out.shape = tensor.dtype, list(tensor.shape)
    return out


class Layer:
    """The data, weight and bias inputs of a linear node, and how to re-run it with modified ones."""

    def __init__(self, ctx, node):
        self.ctx, self.node = ctx, node
        self._constants: dict[tuple, object] = {}
        data = [i for i, t in enumerate(node.inputs[:2]) if ctx.is_data(t)]
        self.weighted = ctx.is_layer(node)
        if self.weighted:
            self.x_index = data[0]
            self.w_index = 1 - self.x_index
            has_bias = len(node.inputs) > 2 and node.inputs[2].name
            self.bias = node.inputs[2] if has_bias else None
            self.weights = node.inputs[self.w_index]

    def data_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.node.inputs) if self.ctx.is_data(t)]

    def _constant(self, tensor, how: str, rule: LayerRule):
        """The modified weights or bias, made once per layer and modifier."""
        key = (tensor.name, how)
        if key not in self._constants:
            self._constants[key] = _modified(self.ctx.emit, tensor, how, rule)
        return self._constants[key]

    def view(self, part: Part, rule: LayerRule, inputs=None) -> SimpleNamespace:
        """The node with modified weights/bias and, if given, other data inputs: what rules read."""
        node = self.node
        new_inputs = list(inputs if inputs is not None else node.inputs)
        if self.weighted:
            new_inputs[self.w_index] = self._constant(self.weights, part.weights, rule)
            new_inputs = new_inputs[:2]
            if self.bias is not None and part.bias is not None:
                new_inputs.append(self._constant(self.bias, part.bias, rule))
        return SimpleNamespace(op=node.op, name=node.name, attrs=node.attrs, inputs=new_inputs,
                               outputs=node.outputs)

    def forward(self, view: SimpleNamespace):
        """A(in; W', b'), emitted as a copy of the node (a MatMul with a bias, ``passes.layer_bias``, as
        MatMul and Add)."""
        emit = self.ctx.emit
        if view.op == "MatMul" and len(view.inputs) > 2:
            return emit.op("Add", [emit.op("MatMul", view.inputs[:2]), view.inputs[2]])
        return emit.op(view.op, view.inputs, dict(view.attrs))


def _input(ctx, x, how: str, rule: LayerRule):
    """The input modifier, emitted at run time."""
    emit = ctx.emit
    if how == "x":
        return x
    if how == "pos":
        return emit.op("Relu", [x])
    if how == "neg":
        return emit.op("Min", [x, emit.const(0.0)])
    if how == "ones":
        return emit.expand_like(emit.const(1.0), x)
    bound = np.asarray(rule.params[how], dtype=np.float32)
    if bound.ndim == 1:  # per channel
        bound = bound.reshape([-1] + [1] * (len(ctx.shape(x)) - 2))
    return emit.expand_like(emit.const(bound), x)


def _stabilized(emit, z, eps: float | None):
    """stab(z) = z + ε·(sign(z) + [z = 0]) = z + ε − 2ε·[z < 0]: zero moves to +ε (no Sign, which has
    no CUDA kernel before opset 13)."""
    if eps is None:
        return z
    negative = emit.choose(emit.op("Less", [z, emit.const(0.0)]), -2.0 * eps)
    return emit.op("Add", [z, emit.op("Add", [negative, emit.const(eps)])])


def propagate(ctx, node, relevance, rule: LayerRule) -> dict:
    """Absolute relevance of the node's data inputs under ``rule`` (the formula in the module docstring)."""
    emit, layer = ctx.emit, Layer(ctx, node)
    y = node.outputs[0]
    totals: dict[int, list] = {}
    for group in rule.groups:
        parts = []
        for part in group.parts:
            inputs = list(node.inputs)
            for i in layer.data_indices():
                inputs[i] = _input(ctx, node.inputs[i], part.inputs, rule)
            z = y if part == Part() else layer.forward(layer.view(part, rule, inputs))
            parts.append((part, inputs, z if part.sign > 0 else emit.op("Neg", [z])))
        z = emit.total([p[2] for p in parts])
        r = relevance
        if group.gate:
            r = emit.masked(emit.op("Greater" if group.gate == "pos" else "Less", [y, emit.const(0.0)]), r)
        s = emit.op("Div", [r, _stabilized(emit, z, rule.epsilon)])
        for part, inputs, _ in parts:
            factor = part.sign * group.coefficient
            for i, rho in RULES[node.op].backward(ctx, layer.view(part, rule), [s]).items():
                share = emit.mul(inputs[i], rho)
                if factor != 1.0:
                    share = emit.mul(share, emit.const(factor))
                totals.setdefault(i, []).append(share)
    return {i: emit.total(shares) for i, shares in totals.items()}


def _layer(ctx, node, relevance):
    return propagate(ctx, node, relevance[0], ctx.layer_rules[node.name] if ctx.is_layer(node) else FIXED)


def _weightless(ctx, node, relevance):
    """A weightless linear map: the z-rule with the fixed stabilizer (a constant addend is a bias that keeps
    its share, as where it is folded into the next layer's bias), except before any layer: there an
    elementwise op of one data input and constants preprocesses the image — a BatchNormalization written
    out, as a model normalizing its own input writes (x − mean) / std — and passes R unchanged like that
    op (RLRP.md), summed over the axes it broadcast x along, for the first layer's rule (flat, w², z^B)
    gives the pixels their relevance (the z-rule gave a pixel near the mean x / (x − mean) times its own)."""
    index = affine_input(ctx, node)
    if index is not None and node.inputs[index].name not in ctx.after_layers:
        x = node.inputs[index]
        return {index: ctx.unbroadcast(relevance[0], x, ctx.shape(node.outputs[0]))}
    return propagate(ctx, node, relevance[0], FIXED)


def _unchanged(ctx, node, relevance):
    """R_x = R_y for the op's one data input (``Min(0.5, x)``: input 1); an op of several (a maxout's
    Max) routes R as its R-LRP rule routes rho."""
    data = [i for i, t in enumerate(node.inputs) if ctx.is_data(t)]
    if len(data) > 1:
        return RULES[node.op].backward(ctx, node, relevance)
    return {data[0]: relevance[0]}


CLASSICAL_BACKWARD = {LAYER: _layer, LINEAR: _weightless, ACTIVATION: _unchanged, NORMALIZATION: _unchanged}


def classical_rules() -> dict[str, Rule]:
    """The rule set for absolute relevance: each op's R-LRP rule re-read by its kind."""
    return {op: replace(r, backward=CLASSICAL_BACKWARD.get(r.kind, r.backward)) for op, r in RULES.items()}

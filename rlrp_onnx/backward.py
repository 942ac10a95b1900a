"""Build the relevance pass: walk the planned nodes in reverse order and apply each op's rule."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .ir import Emitter, Tensor
from .rules.registry import LAYER

ONNX_DOMAINS = {"", "ai.onnx", None}


class Context:
    """What a rule may ask about the forward graph, and the emitter it writes with."""

    def __init__(self, graph: gs.Graph, data: set[str], rules: dict, layer_rules: dict | None = None,
                 relative: bool = True):
        self.graph = graph
        self.relative = relative  # R-LRP's relative relevance (else a classical rule's absolute one)
        self.emit = Emitter(graph)
        self.rules = rules
        self.layer_rules = layer_rules if layer_rules is not None else {}
        self.after_layers: set[str] = set()  # tensors a layer computes, or computed from one (Method.assign)
        self.data = data
        self._forward_nodes = {id(node) for node in graph.nodes}

    def is_data(self, tensor: Tensor) -> bool:
        """Whether relevance flows into ``tensor`` (it depends on an explained input)."""
        return tensor.name in self.data

    def rule(self, node: gs.Node):
        """The rule for ``node``'s op, or None; ops of other domains than ONNX's own (ONNX Runtime's
        ``com.microsoft`` contrib ops, custom ops) have none, even where they share an ONNX op's name."""
        return self.rules.get(node.op) if node.domain in ONNX_DOMAINS else None

    def is_layer(self, node: gs.Node) -> bool:
        """Whether ``node`` is a layer with weights (its rule of kind LAYER, one data operand): a MatMul of
        two data tensors (attention) is a product instead."""
        rule = self.rule(node)
        return rule is not None and rule.kind == LAYER and sum(self.is_data(t) for t in node.inputs[:2]) == 1

    @staticmethod
    def constant(tensor: Tensor) -> np.ndarray | None:
        """The value of a constant tensor, or None for a runtime tensor."""
        return tensor.values if isinstance(tensor, gs.Constant) else None

    @staticmethod
    def shape(tensor: Tensor) -> list:
        """The statically known shape (ints, or str/None for dynamic dims)."""
        return list(tensor.shape) if tensor.shape is not None else []

    def spatial(self, tensor: Tensor) -> list[int]:
        """The static sizes of axes 2.. of an N, C, spatial... tensor."""
        return [int(d) for d in self.shape(tensor)[2:]]

    def readers(self, tensor: Tensor) -> list[gs.Node]:
        """The forward nodes that read ``tensor`` (not the relevance pass's own)."""
        return [node for node in tensor.outputs if id(node) in self._forward_nodes]

    @staticmethod
    def producer(tensor: Tensor) -> gs.Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    def unbroadcast(self, rho: Tensor, operand: Tensor, shape: list) -> Tensor:
        """Sum ``rho`` (of ``shape``) over the axes along which ``operand`` was broadcast to it."""
        out_shape, in_shape = shape, self.shape(operand)
        lead = len(out_shape) - len(in_shape)
        axes = [i + lead for i, (a, b) in enumerate(zip(in_shape, out_shape[lead:])) if a == 1 and b != 1]
        if axes:
            rho = self.emit.reduce_sum(rho, axes, keepdims=True)
        if lead:
            rho = self.emit.reduce_sum(rho, list(range(lead)), keepdims=False)
        return rho


def relevance_pass(ctx: Context, nodes: Sequence[gs.Node], seeds: dict[str, Tensor],
                   wanted: Sequence[Tensor]) -> dict[str, Tensor | None]:
    """Propagate relative relevance from ``seeds`` back through ``nodes`` (forward topological order).

    Returns the summed relevance of each ``wanted`` tensor (None where none arrived).
    """
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for name, seed in seeds.items():
        parts[name].append(seed)
    totals: dict[str, Tensor] = {}

    def total(tensor: Tensor) -> Tensor | None:
        if tensor.name not in totals and parts.get(tensor.name):
            totals[tensor.name] = _shaped_like(ctx.emit.total(parts[tensor.name]), tensor)
        return totals.get(tensor.name)

    for node in reversed(nodes):
        rho_out = [total(t) for t in node.outputs]
        if all(r is None for r in rho_out):
            continue
        for index, rho in ctx.rule(node).backward(ctx, node, rho_out).items():
            parts[node.inputs[index].name].append(_shaped_like(rho, node.inputs[index]))
    return {tensor.name: total(tensor) for tensor in wanted}


def _shaped_like(rho: Tensor, tensor: Tensor) -> Tensor:
    """``rho`` declared with ``tensor``'s shape (the compiled file records it: ONNX Runtime keeps the
    relevance pass in its blocked layout only where it can see that two operands have equal shapes)."""
    if isinstance(rho, gs.Variable) and rho.shape is None and tensor.shape is not None:
        rho.shape, rho.dtype = list(tensor.shape), tensor.dtype or np.float32
    return rho

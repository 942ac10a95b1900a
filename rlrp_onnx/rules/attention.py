"""The Attention op (opset 23; torch's dynamo exporter writes ``F.scaled_dot_product_attention`` as it):
Y = P·V with the attention weights P = softmax(q·kᵀ·scale + bias) held constant as a gate, as for attention
written out in MatMuls (``elementwise.product``): V takes all of the relevance, rho_V = Pᵀ·rho_Y; Q, K and
the mask only compute the gate and take none. P is recomputed from Q and K as the operator's definition
computes it: heads split from 3-D inputs, key heads repeated for grouped-query attention, Q and K each
scaled by √scale, the soft cap, then the mask and the causal bias added."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .registry import LINEAR, rule

Q, K, V, MASK, PAST_KEY, PAST_VALUE, NONPAD = range(7)


@dataclass(frozen=True)
class _Layout:
    """Head counts and sizes of an Attention node; ``split``: Q, K, V and Y are 3-D, [N, S, heads·size]."""

    split: bool
    q_heads: int
    kv_heads: int
    head_size: int  # of Q and K
    value_size: int  # of V
    lengths: tuple  # of Q and K (static or not)

    @classmethod
    def of(cls, ctx, node) -> _Layout:
        q, k, v = (ctx.shape(node.inputs[i]) for i in (Q, K, V))
        split = len(q) == 3
        heads = ((int(node.attrs["q_num_heads"]), int(node.attrs["kv_num_heads"])) if split
                 else (int(q[1]), int(k[1])))
        sizes = (int(q[-1]) // heads[0], int(v[-1]) // heads[1]) if split else (int(q[-1]), int(v[-1]))
        return cls(split, *heads, *sizes, (q[-2], k[-2]))


def _given(node, index) -> bool:
    return len(node.inputs) > index and bool(node.inputs[index].name)


# what the rule reads (qk_matmul_output_mode only shapes an output it refuses to be read)
KNOWN_ATTRIBUTES = {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale", "softcap",
                    "softmax_precision"}


def _check(ctx, node):
    unknown = sorted(node.attrs.keys() - KNOWN_ATTRIBUTES)
    if unknown:
        return f"Attention with the attribute {unknown[0]} (a later opset's) is not supported"
    if any(_given(node, i) for i in (PAST_KEY, PAST_VALUE, NONPAD)):
        return "Attention with a key/value cache (past_key, past_value, nonpad_kv_seqlen) is not supported"
    if any(ctx.readers(t) for t in node.outputs[1:] if t.name):
        return "Attention's present_key, present_value and qk_matmul_output outputs are not supported"
    shapes = [ctx.shape(node.inputs[i]) for i in (Q, K, V)]
    if len(shapes[0]) not in (3, 4) or any(not s or not isinstance(s[-1], int) for s in shapes):
        return "Attention with a dynamic head or hidden size is not supported"
    if len(shapes[0]) == 4 and not all(isinstance(s[1], int) for s in shapes):
        return "Attention with a dynamic number of heads is not supported"
    if len(shapes[0]) == 3 and not {"q_num_heads", "kv_num_heads"} <= node.attrs.keys():
        return "Attention on 3-D inputs without q_num_heads and kv_num_heads"
    lengths = _Layout.of(ctx, node).lengths
    if node.attrs.get("is_causal", 0) and not all(isinstance(n, int) for n in lengths):
        return "causal Attention over a dynamic sequence length is not supported"
    if _given(node, MASK) and ctx.shape(node.inputs[MASK])[-1:] not in ([1], [lengths[1]]):
        return "Attention with a mask shorter than the key sequence is not supported"
    return None


def _heads(emit, tensor, layout: _Layout, heads: int):
    """[N, S, heads·size] as [N, heads, S, size] when the layout is split; else as it is."""
    if not layout.split:
        return tensor
    split = emit.op("Reshape", [tensor, emit.ints([0, 0, heads, -1])])
    return emit.op("Transpose", [split], {"perm": [0, 2, 1, 3]})


def _weights(ctx, node, layout: _Layout):
    """P = softmax(softcap(√s·Q·(√s·K)ᵀ) + mask + causal bias), [N, q_heads, S_q, S_kv]; 0 in the rows the
    mask closes entirely, as the operator defines them."""
    emit = ctx.emit
    root = emit.const(math.sqrt(float(node.attrs.get("scale", 1.0 / math.sqrt(layout.head_size)))))
    q = emit.mul(_heads(emit, node.inputs[Q], layout, layout.q_heads), root)
    k = emit.mul(_heads(emit, node.inputs[K], layout, layout.kv_heads), root)
    group = layout.q_heads // layout.kv_heads
    if group > 1:  # each key head serves ``group`` query heads in a row
        copies = emit.op("Expand", [emit.unsqueeze(k, [2]), emit.ints([1, 1, group, 1, 1])])
        k = emit.op("Reshape", [copies, emit.ints([0, layout.q_heads, -1, layout.head_size])])
    scores = emit.op("MatMul", [q, emit.op("Transpose", [k], {"perm": [0, 1, 3, 2]})])
    softcap = float(node.attrs.get("softcap", 0.0))
    if softcap > 0:
        scores = emit.mul(emit.op("Tanh", [emit.mul(scores, emit.const(1.0 / softcap))]), emit.const(softcap))
    if _given(node, MASK):
        mask = node.inputs[MASK]
        if mask.dtype == np.bool_:
            mask = emit.op("Where", [mask, emit.const(0.0), emit.const(-np.inf)])
        scores = emit.op("Add", [scores, mask])
    if node.attrs.get("is_causal", 0):
        above = np.triu(np.ones(layout.lengths, bool), k=1)
        scores = emit.op("Add", [scores, emit.const(np.where(above, -np.inf, 0.0))])
    weights = emit.op("Softmax", [scores], {"axis": -1})
    if _given(node, MASK):  # a row the mask closes entirely is all −inf, whose softmax is NaN: P is 0 there
        weights = emit.op("Where", [emit.op("IsNaN", [weights]), emit.const(0.0), weights])
    return weights


@rule("Attention", check=_check, kind=LINEAR, held=(Q, K, MASK))
def attention(ctx, node, rho):
    """rho_V = Pᵀ·rho_Y, summed over the query heads that share a key/value head."""
    emit, layout = ctx.emit, _Layout.of(ctx, node)
    r = _heads(emit, rho[0], layout, layout.q_heads)
    r = emit.op("MatMul", [emit.op("Transpose", [_weights(ctx, node, layout)], {"perm": [0, 1, 3, 2]}), r])
    group = layout.q_heads // layout.kv_heads
    if group > 1:
        grouped = emit.op("Reshape", [r, emit.ints([0, layout.kv_heads, group, -1, layout.value_size])])
        r = emit.reduce_sum(grouped, [2], keepdims=False)
    if layout.split:
        r = emit.op("Reshape", [emit.op("Transpose", [r], {"perm": [0, 2, 1, 3]}), emit.ints([0, 0, -1])])
    return {V: r}

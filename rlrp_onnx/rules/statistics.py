"""Statistics of a tensor that scale it, held constant as the normalizations hold theirs (normalization.py):
in ``u · s`` or ``u / s`` where ``s`` is computed from ``u`` alone, through reductions over axes other than
the batch and then elementwise arithmetic and reshapes (ConvNeXt V2's global response normalization
``x · (‖x‖ / mean ‖x‖)``; ``x / (‖x‖ + ε)``), or from a tensor ``u`` is computed from
(``F.cosine_similarity`` as TorchScript writes it, ``Σ x·w / (‖x‖·‖w‖)``), ``s`` takes no relevance:
rho_u = s·rho_y, or rho_y / s.
Not where ``u`` is itself centred by a statistic (``is_centred``): a LayerNorm holds its mean as well."""

from __future__ import annotations

import numpy as np

REDUCTIONS = {"ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
              "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Abs", "Neg", "Max", "Min", "Clip", "Exp",
              "Log", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Identity"}


def reduce_axes(ctx, node) -> list[int] | None:
    """The reduced axes (non-negative) of a Reduce* node (a global pool: the spatial axes), or None if not
    constant."""
    rank = len(ctx.shape(node.inputs[0]))
    if node.op.startswith("Global"):
        return list(range(2, rank))
    if len(node.inputs) > 1 and node.inputs[1].name:
        axes = ctx.constant(node.inputs[1])
        if axes is None:
            return None
        axes = axes.tolist()
    else:
        axes = node.attrs.get("axes")
    if not axes:
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def is_statistic_of(ctx, s, u) -> bool:
    """Whether ``s`` is computed from ``u`` alone with a reduction over non-batch axes on every way back to
    it (``u`` itself, or ``u`` with elementwise arithmetic only, is not a statistic of ``u``)."""
    seen: dict[tuple[str, bool], bool] = {}

    def computed(t, reduced: bool) -> bool:
        if t is u:
            return reduced
        if not ctx.is_data(t):
            return True
        key = (t.name, reduced)
        if key not in seen:
            seen[key] = False  # (a cycle cannot occur; this only bounds the walk)
            node = ctx.producer(t)
            if node is not None and node.op in REDUCTIONS:
                axes = reduce_axes(ctx, node)
                ok = axes is not None and axes != [] and 0 not in axes
                seen[key] = ok and all(computed(i, True) for i in node.inputs[:1])
            elif node is not None and node.op in ARITHMETIC and _keeps_batch_axis(ctx, node):
                seen[key] = all(computed(i, reduced) for i in node.inputs if i.name)
        return seen[key]

    return s is not u and computed(s, False)


def is_statistic_behind(ctx, s, u) -> bool:
    """Whether ``s`` is a statistic of ``u`` or of a tensor ``u`` is computed from (``is_statistic_of``), not
    of one ``u`` is computed from *through* ``s`` (``u = GAP(h)`` gated by ``σ(fc(u))``: ``u`` is a
    statistic of h, which the gate is computed from, but the gate is computed from ``u``)."""
    if is_statistic_of(ctx, s, u):
        return True
    sources = {t.name for t in _reduced(ctx, s) if is_statistic_of(ctx, s, t)}
    if not sources:
        return False
    behind = _computed_from(ctx, u)
    return s.name not in behind and bool(sources & behind)


def _computed_from(ctx, u) -> set[str]:
    """The names of the data tensors ``u`` is computed from, ``u`` included."""
    seen, stack = set(), [u]
    while stack:
        t = stack.pop()
        if t.name in seen or not ctx.is_data(t):
            continue
        seen.add(t.name)
        node = ctx.producer(t)
        if node is not None:
            stack.extend(i for i in node.inputs if i.name)
    return seen


def _reduced(ctx, s, limit: int = 16) -> list:
    """The tensors ``s`` may be a statistic of: the inputs of the first reductions behind it (through
    arithmetic), and what each is computed from alone by one-input ops (x·x of x; x of its mean) or by
    centring (x of x − mean(x): a standard deviation is a statistic of x)."""
    found, stack, seen = [], [s], set()
    while stack and len(seen) < limit:
        t = stack.pop()
        node = ctx.producer(t) if ctx.is_data(t) and t.name not in seen else None
        seen.add(t.name)
        if node is not None and node.op in REDUCTIONS:
            found.append(node.inputs[0])
        elif node is not None and node.op in ARITHMETIC:
            stack.extend(i for i in node.inputs if i.name)
    chain = []
    for t in found:
        for _ in range(limit):
            chain.append(t)
            node = ctx.producer(t)
            data = [i for i in (node.inputs if node is not None else []) if ctx.is_data(i)]
            if len({i.name for i in data}) == 1:
                t = data[0]
            elif node is not None and node.op in ("Sub", "Add") and len(data) == 2 \
                    and is_statistic_of(ctx, data[1], data[0]):
                t = data[0]
            else:
                break
    return chain


def is_centred(ctx, u) -> bool:
    """Whether ``u`` is ``a − m`` or ``a + (−m)`` (possibly after ops of one data input: scaled, reshaped,
    sliced, rectified; not through a layer that mixes values, MIXING) with m a statistic of a (or a of m):
    a LayerNorm's centred input, whose mean the normalization holds too. Held as a statistic of it, σ
    alone would be held and relevance go through the mean: such LayerNorms are planned whole by
    passes/layer_norm.py where it recognises them, and refused otherwise."""
    for _ in range(16):
        node = ctx.producer(u)
        data = [t for t in node.inputs if ctx.is_data(t)] if node is not None else []
        if node is None or len(data) == 0:
            return False
        if node.op in ("Sub", "Add") and len(data) == 2:  # x − m, also x + (−m)
            return is_statistic_of(ctx, data[1], data[0]) or is_statistic_of(ctx, data[0], data[1])
        if len(data) != 1 or node.op in MIXING:
            return False
        u = data[0]  # (through other one-input ops: a ReLU or a slice of x − m is centred as well)
    return False


MIXING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}  # after which x − m is centred no more


def _keeps_batch_axis(ctx, node) -> bool:
    """Whether ``node`` keeps each sample's values at the same place on axis 0 (a Transpose, Reshape or
    Flatten could move the batch axis elsewhere, and a reduction past it would mix the samples)."""
    if node.op == "Transpose":
        return list(node.attrs.get("perm", [1]))[:1] == [0]
    if node.op == "Flatten":
        return node.attrs.get("axis", 1) != 0
    if node.op in ("Reshape", "Squeeze", "Unsqueeze"):  # the same batch size, or as many values per sample
        before, after = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
        if not before or not after:
            return False
        return before[0] == after[0] or all(isinstance(d, int) for d in [*before[1:], *after[1:]]) \
            and int(np.prod(before[1:])) == int(np.prod(after[1:]))
    return True

"""Statistics of a tensor that scale it, held constant as the normalizations hold theirs (normalization.py):
in ``u · s`` or ``u / s`` where ``s`` is computed from ``u`` alone, through reductions over axes other than
the batch and then elementwise arithmetic and reshapes (ConvNeXt V2's global response normalization
``x · (‖x‖ / mean ‖x‖)``; ``x / (‖x‖ + ε)``), ``s`` takes no relevance: rho_u = s·rho_y, or rho_y / s."""

from __future__ import annotations

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


def _keeps_batch_axis(ctx, node) -> bool:
    """Whether ``node`` keeps each sample's values at the same place on axis 0 (a Transpose, Reshape or
    Flatten could move the batch axis elsewhere, and a reduction past it would mix the samples)."""
    if node.op == "Transpose":
        return list(node.attrs.get("perm", [1]))[:1] == [0]
    if node.op == "Flatten":
        return node.attrs.get("axis", 1) != 0
    if node.op in ("Reshape", "Squeeze", "Unsqueeze"):
        before, after = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
        return bool(before) and bool(after) and before[0] == after[0]
    return True

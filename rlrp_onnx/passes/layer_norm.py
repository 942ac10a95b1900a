"""Recognise LayerNorm and RMSNorm written out in arithmetic, and torch's GroupNorm written around an
InstanceNormalization, and replace each, in the canonical graph only, by one ``LayerNormalization``,
``RMSNormalization`` or ``GroupNormalization`` node, whose rule holds the statistics constant.

LayerNorm's statistics are ``m = mean(x)``, ``d = x − m``, ``σ = Sqrt(c·mean(d²) + ε)`` (means over the
same axes, as ReduceMean or, on the last axis of a rank-3 tensor, GlobalAveragePool; d² as Pow 2 or d·d;
c = n/(n − 1) for torch's unbiased ``x.var()``, else 1, its factors also computed from static sizes; the
means, or σ after its root, possibly reduced without keepdims and given the axes back, as the dynamo
exporter writes ``x.var()`` and code writes ``x.mean(-1)[..., None]`` or ``x.std(-1).unsqueeze(-1)``),
or ``σ = Sqrt(c·mean(d²)) + ε`` (torch's ``x.std() + ε``: planned with c in PLANNED_STD_SCALE; an ε
inside the root is planned as ε/c with γ/√c), then:

* torch below opset 17, which has no LayerNormalization op, and code written with torch's ``std`` or
  ``var`` (tutorials, the Annotated Transformer): ``d / σ``, or ``d' / σ`` and ``γ·d' / σ`` with d' x
  centred by a mean of its own, then optionally ``· γ`` and ``+ β``;
* Keras through tf2onnx (at every opset): ``inv = Reciprocal(σ)``, optionally ``· γ``, then
  ``x · inv + (−m · inv``, optionally ``+ β)``; its transpose optimizer may compute the last step on a
  transpose of x, with inv [· γ] and −m moved alike (by Transposes, or Reshapes that move axes of size 1),
  as in an MLP-Mixer's LayerNorms; the LayerNormalization is then planned on that transpose.

RMSNorm's (torch's ``nn.RMSNorm``, which only the dynamo exporter exports, and the form LLaMA-style code
writes out) is ``σ = Sqrt(mean(x²) + ε)``, then ``x · inv`` with ``inv = Reciprocal(σ)`` or ``1 / σ``
(``torch.rsqrt``), or ``x / σ``, optionally ``· γ``.

torch's GroupNorm below opset 21 is a Reshape to [N, groups, −1], an InstanceNormalization with scale 1
and bias 0, a Reshape back, then optionally ``· γ`` and ``+ β`` per channel.

Like ``gelu.py``, the node is only planned, never run, so it is valid at any opset; axes other than the
last ones (ConvNeXt's channels_first LayerNorm over axis 1; Keras' GroupNormalization, over every axis
of a [N, H, W, groups, C/groups] view but the batch and the groups) are recorded in its attribute
PLANNED_AXES.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..rules.normalization import PLANNED_AXES, PLANNED_STD_SCALE
from .gelu import keepdims_axes, producer, reduced_axes, scalar
from .reshape_targets import static_number


MOVES = ("Transpose", "Reshape", "Unsqueeze", "Squeeze")  # what may move axes of size 1


def recognise_layer_norm(graph: gs.Graph) -> gs.Graph:
    """Replace every matched decomposition by a LayerNormalization (RMSNormalization where the mean is
    not subtracted) node writing its last tensor."""
    for sqrt in [n for n in graph.nodes if n.op == "Sqrt"]:
        statistics = _statistics(sqrt)
        if statistics is None:
            continue
        x, mean, axes, epsilon, sub, c, sigma, outside = statistics
        if sub is None:
            found = _rms_form(sigma, x)
        else:
            found = _torch_form(sigma, x, mean, sub, axes)
            for like, perm in _layouts(x) if not found else []:
                found = _keras_form(sigma, x, like, perm, mean, sub)
                if found:
                    axes = sorted(perm.index(a) for a in axes)
                    break
        if not found:
            continue
        scale, bias, last, x = found
        if scale is None:
            ones = [x.shape[a] if a in axes else 1 for a in range(axes[0], len(x.shape))]
            scale = gs.Constant(f"{sqrt.name}/ones", np.ones(ones, dtype=np.float32))
        attrs = {"axis": axes[0], "epsilon": epsilon}
        if outside:
            attrs[PLANNED_STD_SCALE] = c
        elif c != 1.0:  # √(c·Var + ε) = √c·√(Var + ε/c)
            attrs["epsilon"] = epsilon / c
            scale = gs.Constant(f"{sqrt.name}/scale", np.asarray(scale.values / np.sqrt(c), scale.values.dtype))
        if axes != list(range(axes[0], len(x.shape))):
            attrs[PLANNED_AXES] = axes
        out = last.outputs[0]
        last.outputs.clear()
        op = "LayerNormalization" if sub is not None else "RMSNormalization"
        graph.nodes.append(gs.Node(op, f"{sqrt.name}/layer_norm", attrs,
                                   [x, scale] + ([bias] if bias is not None else []), [out]))
    return graph.cleanup().toposort()


def recognise_group_norm(graph: gs.Graph) -> gs.Graph:
    """Replace torch's GroupNorm as exported below opset 21 (Reshape to [N, groups, −1], an
    InstanceNormalization with scale 1 and bias 0, a Reshape back, then optionally ``· γ`` and ``+ β`` per
    channel) by one GroupNormalization node writing its last tensor, the op the dynamo exporter writes from
    opset 21: both exports then get the same relevance under every rule (the classical rules pass it
    through the whole affine norm, as through LayerNorm)."""
    for norm in [n for n in graph.nodes if n.op == "InstanceNormalization"]:
        found = _group_norm(norm)
        if found is None:
            continue
        x, groups, scale, bias, last = found
        out = last.outputs[0]
        last.outputs.clear()
        attrs = {"num_groups": groups, "epsilon": float(norm.attrs.get("epsilon", 1e-5))}
        graph.nodes.append(gs.Node("GroupNormalization", f"{norm.name}/group_norm", attrs, [x, scale, bias], [out]))
    return graph.cleanup().toposort()


def _group_norm(norm):
    """(x, groups, γ, β, last node) for Reshape(x) → ``norm`` → Reshape back [· γ] [+ β], γ and β as
    constants per channel (ones and zeros where absent)."""
    grouping = producer(norm.inputs[0])
    if grouping is None or grouping.op != "Reshape" or not _only_read_by(norm.inputs[0], norm) \
            or not all(_all_equal(t, value) for t, value in zip(norm.inputs[1:], (1.0, 0.0))):
        return None
    x, grouped, readers = grouping.inputs[0], norm.inputs[0].shape, norm.outputs[0].outputs
    if x.shape is None or grouped is None or len(x.shape) < 2 or len(grouped) != 3 or len(readers) != 1 \
            or readers[0].op != "Reshape" or list(readers[0].outputs[0].shape or []) != list(x.shape) \
            or not all(isinstance(d, int) for d in [*x.shape[1:], *grouped[1:]]):
        return None
    groups = grouped[1]
    if grouped[0] != x.shape[0] or x.shape[1] % groups or groups * grouped[2] != np.prod(x.shape[1:]):
        return None
    scale, last = _per_channel(readers[0], "Mul", x, 1.0)
    bias, last = _per_channel(last, "Add", x, 0.0)
    return x, groups, scale, bias, last


def _all_equal(tensor, value: float) -> bool:
    return isinstance(tensor, gs.Constant) and bool(np.all(np.asarray(tensor.values) == value))


def _per_channel(node, op: str, x, neutral: float):
    """(a [C] constant, its node) when ``node``'s output is read only by ``op`` with a constant that varies
    along x's channel axis only, else (``neutral`` per channel, ``node``)."""
    constant, reader = _by_constant(node, op, x)
    channels = x.shape[1]
    if constant is not None:
        values = constant.values.reshape((1,) * (len(x.shape) - constant.values.ndim) + constant.values.shape)
        if all(d == 1 for axis, d in enumerate(values.shape) if axis != 1):
            per_channel = np.broadcast_to(values.reshape(-1), (channels,))
            return gs.Constant(f"{reader.name}/per_channel", np.ascontiguousarray(per_channel)), reader
    return gs.Constant(f"{node.name}/{op}_neutral", np.full(channels, neutral, x.dtype or np.float32)), node


def _statistics(sqrt):
    """(x, mean node, axes, ε, Sub node, c, σ, outside) when ``sqrt`` is the root of c·mean((x − mean(x))²):
    σ = Sqrt(c·Var + ε) (ε 0 without the Add), or, where an Add of ε is the root's only reader,
    σ = Sqrt(c·Var) + ε (``outside``: ``x.std() + ε``); for RMSNorm's mean(x²), mean and Sub None. c is the
    product of constant factors (n/(n − 1): torch's unbiased var and std); the mean of squares may be
    reduced without keepdims and reshaped or expanded back (the dynamo exporter)."""
    sigma = _moved_back(sqrt.outputs[0])
    radicand, epsilon, outside, root_moved = sqrt.inputs[0], 0.0, False, sigma is not sqrt.outputs[0]
    add = producer(radicand)
    terms = [t for t in add.inputs if scalar(t) is None] if add is not None and add.op == "Add" else []
    if len(terms) == 1 and _only_read_by(add.outputs[0], sqrt):
        radicand, epsilon = terms[0], next(scalar(t) for t in add.inputs if scalar(t) is not None)
    elif len(sigma.outputs) == 1 and sigma.outputs[0].op == "Add":
        added = [scalar(t) for t in sigma.outputs[0].inputs if t is not sigma]
        if len(added) == 1 and added[0] is not None:
            epsilon, sigma, outside = added[0], sigma.outputs[0].outputs[0], True
    found = _mean_of_squares(radicand)
    if found is None:
        return None
    variance, c, squared, moved = found
    moved = moved or root_moved
    sub = producer(squared)
    mean = _reduction_behind(sub.inputs[1])[0] if sub is not None and sub.op == "Sub" else None
    if mean is None or mean.inputs[0] is not sub.inputs[0]:  # no mean subtracted: RMSNorm's statistics
        if sub is not None and sub.op == "Sub" and (_depends_on(sub.inputs[1], sub.inputs[0])
                                                    or _depends_on(sub.inputs[0], sub.inputs[1])):
            return None  # x centred by a mean written otherwise (x − m, m − x): no RMSNorm of it
        if sub is not None and sub.op == "Add" \
                and any(_is_negated_mean_of(a, b) for a, b in (sub.inputs, sub.inputs[::-1])):
            return None  # x + (−m): likewise
        sub = mean = None
    x = sub.inputs[0] if sub is not None else squared
    if x.shape is None:
        return None
    rank = len(x.shape)
    axes = _mean_axes(variance, rank) or (reduced_axes(variance, rank) if variance.op != "GlobalAveragePool" else None)
    kept = [1 if a in (axes or []) else d for a, d in enumerate(x.shape)]
    if not axes or (mean is not None and axes != _mean_of(sub.inputs[1], x)) \
            or not all(isinstance(x.shape[a], int) for a in axes) \
            or (moved and list(sigma.shape or [])[1:] != kept[1:]):
        return None
    return x, mean, axes, epsilon, sub, c, sigma, outside


def _depends_on(tensor, x, limit: int = 64) -> bool:
    """Whether ``tensor`` is computed from ``x`` (within ``limit`` nodes back)."""
    seen, queue = set(), [tensor]
    while queue and len(seen) < limit:
        t = queue.pop()
        if t is x:
            return True
        node = producer(t)
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            queue.extend(node.inputs)
    return False


def _mean_of_squares(tensor):
    """(the mean node, c, d, moved) when ``tensor`` is c·mean(d²) (ReduceMean or GlobalAveragePool; or
    ReduceSum, its c counting the elements summed; d² as Pow 2 or d·d), c a positive product of constant
    factors and divisors (also computed from static sizes), ``moved`` when reduced without keepdims or
    reshaped or expanded on the way."""
    node, c, moved = producer(tensor), 1.0, False
    while node is not None and node.op in ("Reshape", "Expand", "Unsqueeze", "Mul", "Div"):
        if node.op in ("Mul", "Div"):
            scaled = _constant_factor(node)
            if scaled is None:
                return None
            c, node = c * scaled[0], producer(scaled[1])
        else:
            node, moved = producer(node.inputs[0]), True
    if node is None or node.op not in ("ReduceMean", "GlobalAveragePool", "ReduceSum") or not c > 0:
        return None
    moved = moved or not node.attrs.get("keepdims", 1)
    if node.op == "ReduceSum":  # c·Σ d² = c·n·mean(d²)
        n = _reduced_size(node)
        if n is None:
            return None
        c *= n
    square = producer(node.inputs[0])
    if square is None or not ((square.op == "Pow" and scalar(square.inputs[1]) == 2.0)
                              or (square.op == "Mul" and square.inputs[0] is square.inputs[1])):
        return None
    return node, c, square.inputs[0], moved


def _centred(node, x, axes) -> bool:
    """Whether ``node`` computes x − mean(x) (``_mean_of``; over ``axes`` unless None)."""
    if node is None or node.op != "Sub" or node.inputs[0] is not x or x.shape is None:
        return False
    found = _mean_of(node.inputs[1], x)
    return found is not None and (axes is None or found == axes)


def _torch_form(sigma, x, mean, sub, axes):
    """(γ, β, last node, x) for ``d / σ`` [· γ] [+ β], or (LayerNorm written with torch's std or var)
    ``d'`` or ``γ·d'`` divided by σ (``_divided``: also times ``rsqrt``) [· γ] [+ β], with d' x centred by
    a mean of its own over the same axes."""
    divided = _divided(sigma)
    if divided is None:
        return None
    node, dividend = divided
    if dividend is sub.outputs[0] and node.op == "Div":
        if not _only_reaches(mean.outputs[0], sub) or len(_readers(sub.outputs[0])) != 2:
            return None
        scale, last = _by_constant(node, "Mul", x)
    else:
        numerator, scale, last = producer(dividend), None, node
        if numerator is not None and numerator.op == "Mul" and len(numerator.outputs[0].outputs) == 1:
            constants = [t for t in numerator.inputs if isinstance(t, gs.Constant)]
            data = [t for t in numerator.inputs if not isinstance(t, gs.Constant)]
            if len(constants) == 1 and len(data) == 1 and _broadcasts_within(constants[0], x):
                scale, numerator = constants[0], producer(data[0])
        if numerator is not sub and not _centred(numerator, x, axes):
            return None
        if scale is None:
            scale, last = _by_constant(node, "Mul", x)
    bias, last = _by_constant(last, "Add", x)
    return scale, bias, last, x


def _layouts(x):
    """(x, identity) and (x transposed, its perm) for each Transpose of x keeping the batch axis: what
    tf2onnx's transpose optimizer may scale instead of x, with the statistics, the mean and the scale
    moved the same way (a Keras LayerNorm over (H, W, C) computed on the N, C, H, W tensor; the
    token-mixing blocks of an MLP-Mixer)."""
    rank = len(x.shape)
    transposes = [n for n in x.outputs if n.op == "Transpose" and list(n.attrs.get("perm", []))[:1] == [0]]
    return [(x, list(range(rank)))] + [(n.outputs[0], list(n.attrs["perm"])) for n in transposes]


def _keras_form(sigma, x, like, perm, mean, sub):
    """(γ, β, last node, ``like``) for inv = 1/σ [· γ], x · inv + (−m · inv [+ β]), computed on ``like``,
    ``x`` moved by ``perm``: inv [· γ] and −m reach the products moved the same way (by a Transpose, or,
    where only axes of size 1 move, a Reshape), or broadcast alike in both layouts."""
    reciprocal = sigma.outputs
    if len(reciprocal) != 1 or reciprocal[0].op != "Reciprocal" or len(_readers(sub.outputs[0])) != 1 \
            or sigma.shape is None or mean.outputs[0].shape is None:
        return None
    scale, inverse = _by_constant(reciprocal[0], "Mul", x)
    moved = _moved(inverse.outputs[0], perm)
    if moved is not None:  # inv [· γ] in the statistics' layout, then moved
        scale, inverse = scale if scale is None else _permuted(scale, perm), moved
        if scale is None:
            scale, inverse = _by_constant(inverse, "Mul", like)
    elif _moved_shape(sigma.shape, perm) == list(sigma.shape)[1:]:
        scale, inverse = _by_constant(reciprocal[0], "Mul", like)
    else:
        return None
    negated = _negated_mean(mean, sub, perm)
    if negated is None:
        return None
    products = inverse.outputs[0].outputs
    scaled = [n for n in products if n.op == "Mul" and like in n.inputs]
    shifted = [n for n in products if n.op == "Mul" and negated.outputs[0] in n.inputs]
    if len(products) != 2 or len(scaled) != 1 or len(shifted) != 1 \
            or not _only_read_by(negated.outputs[0], shifted[0]):
        return None
    bias, shift = _by_constant(shifted[0], "Add", like)
    total = scaled[0].outputs[0].outputs
    if len(total) != 1 or total[0].op != "Add" or not _only_read_by(shift.outputs[0], total[0]) \
            or shift.outputs[0] not in total[0].inputs:
        return None
    return scale, bias, total[0], like


def _negated_mean(mean, sub, perm):
    """The one Neg of the mean m moved by ``perm``, where m reaches only it and ``sub`` (unmoved), also
    through Transposes and Reshapes that only move axes of size 1 (the same values)."""
    shape = mean.outputs[0].shape
    aliases = _size_one_moves(mean.outputs[0])
    readers = [n for t in aliases for n in t.outputs]
    negated = [n for n in readers if n.op == "Neg"]
    if len(negated) != 1 or list(negated[0].inputs[0].shape)[1:] != _moved_shape(shape, perm) \
            or sub.inputs[1] not in aliases or list(sub.inputs[1].shape)[1:] != list(shape)[1:] \
            or any(n is not sub and n is not negated[0] and n.outputs[0] not in aliases for n in readers):
        return None
    return negated[0]


def _moved(tensor, perm):
    """The one reader of ``tensor``, if any, that moves its axes by ``perm`` (not the identity): a
    Transpose with that perm, or a Reshape that only moves axes of size 1 that way."""
    if perm == sorted(perm) or len(tensor.outputs) != 1:
        return None
    reader = tensor.outputs[0]
    if reader.op == "Transpose" and list(reader.attrs.get("perm", [])) == perm:
        return reader
    if reader.op == "Reshape" and _moves_only_size_one_axes(reader, tensor) \
            and list(reader.outputs[0].shape)[1:] == _moved_shape(tensor.shape, perm):
        return reader
    return None


def _unmoved(tensor):
    """The tensor ``tensor`` was reached from by Transposes and Reshapes that only move axes of size 1."""
    while (before := producer(tensor)) is not None and _moves_only_size_one_axes(before, before.inputs[0]):
        tensor = before.inputs[0]
    return tensor


def _size_one_moves(tensor):
    """``tensor`` and every tensor reached from it by Transposes and Reshapes that only move its axes
    of size 1 (the same values, whatever the shape)."""
    found, queue = [], [tensor]
    while queue:
        t = queue.pop()
        found.append(t)
        queue.extend(n.outputs[0] for n in t.outputs if _moves_only_size_one_axes(n, t))
    return found


def _moves_only_size_one_axes(node, tensor) -> bool:
    """Whether ``node`` is a Transpose, Reshape, Unsqueeze or Squeeze of ``tensor`` that only moves axes of
    size 1 (its output holds the same values in the same order), all non-batch sizes known."""
    out = node.outputs[0]
    if node.op not in MOVES or out.shape is None or tensor.shape is None \
            or not all(isinstance(d, int) for d in [*out.shape[1:], *tensor.shape[1:]]):
        return False
    if node.op == "Transpose":
        return _moves_size_one_axes(tensor.shape, list(node.attrs.get("perm", [])))
    return [d for d in out.shape[1:] if d != 1] == [d for d in tensor.shape[1:] if d != 1]


def _moved_shape(shape, perm) -> list:
    """The non-batch sizes of ``shape`` moved by ``perm``."""
    return [shape[p] for p in perm][1:]


def _moves_size_one_axes(shape, perm) -> bool:
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


def _permuted(constant, perm):
    """A constant broadcast against the statistics' layout, moved by ``perm``."""
    values = constant.values.reshape((1,) * (len(perm) - constant.values.ndim) + constant.values.shape)
    return gs.Constant(f"{constant.name}/moved", np.ascontiguousarray(values.transpose(perm)))


def _rms_form(sigma, x):
    """(γ, None, last node, x) for ``x / σ`` or ``x · inv`` (``_divided``); [· γ]."""
    divided = _divided(sigma)
    if divided is None or divided[1] is not x:
        return None
    scale, last = _by_constant(divided[0], "Mul", x)
    return scale, None, last, x


def _divided(sigma):
    """(the node, its dividend) for the one node that divides a tensor by ``σ``: ``t / σ``, or ``t · inv``
    with inv = Reciprocal(σ) or 1 / σ (``torch.rsqrt``) read by it alone; else None."""
    readers = sigma.outputs
    if len(readers) != 1:
        return None
    step = readers[0]
    inverts = step.op == "Reciprocal" or (step.op == "Div" and scalar(step.inputs[0]) == 1.0)
    if step.op == "Div" and step.inputs[1] is sigma and not inverts:
        return step, step.inputs[0]
    if not inverts:
        return None
    users, inverse = step.outputs[0].outputs, step.outputs[0]
    while len(users) == 1 and users[0].op == "Mul" and any(scalar(t) == 1.0 for t in users[0].inputs):
        users, inverse = users[0].outputs[0].outputs, users[0].outputs[0]  # TorchScript's 1.0 / σ: · 1.0
    if len(users) != 1 or users[0].op != "Mul" or len(users[0].inputs) != 2 or inverse not in users[0].inputs:
        return None
    others = [t for t in users[0].inputs if t is not inverse]
    return (users[0], others[0]) if len(others) == 1 else None


def _by_constant(node, op: str, x):
    """(constant, its node) when ``node``'s output is read only by ``op`` with a constant that broadcasts
    within x's shape, else (None, ``node``)."""
    users = node.outputs[0].outputs
    if len(users) != 1 or users[0].op != op or len(users[0].inputs) != 2:
        return None, node
    constants = [t for t in users[0].inputs if isinstance(t, gs.Constant)]
    if len(constants) != 1 or not _broadcasts_within(constants[0], x):
        return None, node
    return constants[0], users[0]


def _broadcasts_within(constant, x) -> bool:
    """Whether ``constant`` broadcasts against x without growing it."""
    shape = constant.values.shape
    return len(shape) <= len(x.shape) and all(c in (1, d) for c, d in zip(shape[::-1], x.shape[::-1]))


def _mean_axes(node, rank: int) -> list[int] | None:
    """The axes of a keepdims mean (ReduceMean, axes an attribute or a constant input; GlobalAveragePool),
    non-negative, or None."""
    if node is not None and node.op == "GlobalAveragePool":
        return list(range(2, rank))
    if node is None or node.op != "ReduceMean":
        return None
    return keepdims_axes(node, rank) or None


def _mean_of(tensor, x) -> list[int] | None:
    """The axes over which ``tensor`` is the mean of ``x`` with keepdims, or reduced without and given the
    kept axes back by Unsqueezes or Reshapes (``x.mean(-1)[..., None]``), or a sum divided by the count
    (``x.sum(-1, keepdim=True) / n``), else None."""
    mean, scale = _reduction_behind(tensor)
    rank = len(x.shape)
    if mean is None or mean.inputs[0] is not x or mean.op not in ("ReduceMean", "GlobalAveragePool", "ReduceSum"):
        return None
    axes = _mean_axes(mean, rank) or (reduced_axes(mean, rank) if mean.op != "GlobalAveragePool" else None)
    if mean.op == "ReduceSum":
        n = _reduced_size(mean)
        scale *= n if n is not None else float("nan")
    kept = [1 if a in (axes or []) else d for a, d in enumerate(x.shape)]
    same = abs(scale - 1.0) <= 1e-6
    return axes if axes and same and list(tensor.shape or [])[1:] == kept[1:] else None


def _is_negated_mean_of(tensor, x) -> bool:
    """Whether ``tensor`` is −mean(x) (a Neg, or a product by −1, of a mean of x over some axes)."""
    node = producer(tensor)
    if node is None or node.op not in ("Neg", "Mul"):
        return False
    if node.op == "Mul":
        scaled = _constant_factor(node)
        return scaled is not None and scaled[0] == -1.0 and _mean_of(scaled[1], x) is not None
    return _mean_of(node.inputs[0], x) is not None


def _reduction_behind(tensor):
    """(the reduction node, the constant factor) for ``tensor`` reached from a reduction's output by moves
    of axes of size 1 and at most one product or quotient by a constant (a sum divided by its count);
    (None, 1.0) when no node writes it."""
    node = producer(_unmoved(tensor))
    scaled = _constant_factor(node)
    if scaled is None:
        return node, 1.0
    return producer(_unmoved(scaled[1])), scaled[0]


def _constant_factor(node):
    """(f, t) when ``node`` computes f·t from a tensor t and a constant number f (t·f, f·t, t / c as f = 1/c),
    else None."""
    if node is None or node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    factors = [static_number(t) for t in node.inputs]
    if node.op == "Div":
        return (1.0 / factors[1], node.inputs[0]) if factors[1] else None
    if factors.count(None) != 1:
        return None
    return factors[1 - factors.index(None)], node.inputs[factors.index(None)]


def _reduced_size(node) -> int | None:
    """The number of elements a Reduce* node reduces together, where static."""
    shape = node.inputs[0].shape
    axes = reduced_axes(node, len(shape)) if shape is not None else None
    if not axes or not all(isinstance(shape[a], int) for a in axes):
        return None
    return int(np.prod([shape[a] for a in axes]))


def _moved_back(tensor):
    """The output of the one reader of ``tensor`` that only moves axes of size 1 (the σ of ``x.std(-1)``
    given its axis back after the root), or ``tensor``."""
    readers = tensor.outputs
    if len(readers) == 1 and readers[0].op in MOVES and _moves_only_size_one_axes(readers[0], tensor):
        return readers[0].outputs[0]
    return tensor


def _only_reaches(tensor, reader) -> bool:
    """Whether ``tensor``'s values reach no node but ``reader``, also through moves of axes of size 1 and
    products or quotients by constants (a sum divided by its count)."""
    chain, queue = [], [tensor]
    while queue:
        t = queue.pop()
        chain.append(t)
        for n in t.outputs:
            scaled = _constant_factor(n)
            if _moves_only_size_one_axes(n, t) or scaled is not None and scaled[1] is t:
                queue.append(n.outputs[0])
    readers = [n for t in chain for n in t.outputs]
    return all(n is reader or n.outputs[0] in chain for n in readers) and reader in readers


def _readers(tensor) -> set[int]:
    """The nodes reading ``tensor`` (once each, whichever inputs)."""
    return {id(n) for n in tensor.outputs}


def _only_read_by(tensor, *readers) -> bool:
    return _readers(tensor) == {id(n) for n in readers}

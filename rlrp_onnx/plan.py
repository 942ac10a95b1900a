"""Decide what is explained and which nodes relevance crosses; report every uncovered node at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .backward import ONNX_DOMAINS, Context
from .contract import holds_class_scores
from .errors import RlrpError
from .methods import Method
from .rules.elementwise import held_operand

TRAILING = {"Softmax", "LogSoftmax", "Sigmoid"}  # at the output: the explained logit is their input
NORMALIZATION_HINT = ("; part of a normalization written out? LayerNorm and RMSNorm are recognised as torch "
                      "and tf2onnx write them (passes/layer_norm.py)")
QUANTIZED_HINT = "; quantized models are not supported: explain the float model they were quantized from"
QUANTIZING = ("QuantizeLinear", "DynamicQuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
              "ConvInteger", "MatMulInteger")
HINTS = {"Sqrt": NORMALIZATION_HINT, "Reciprocal": NORMALIZATION_HINT, **dict.fromkeys(QUANTIZING, QUANTIZED_HINT)}
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's own ops, which its graph optimizations write


@dataclass
class Plan:
    """The inputs explained, the logits tensor seeded, and the nodes on the relevance path."""

    inputs: list[gs.Variable]
    explained_output: gs.Variable
    logits: gs.Variable
    nodes: list[gs.Node]
    context: Context


def _element_type(tensor) -> np.dtype | None:
    try:
        return np.dtype(tensor.dtype) if tensor.dtype is not None else None
    except TypeError:  # a sequence or map (skl2onnx's ZipMap output), or an undefined type
        return None


def _is_float(tensor) -> bool:
    return _element_type(tensor) == np.float32


def _read(node: gs.Node) -> list:
    """The tensors ``node`` reads: its inputs and, for If/Loop/Scan, what its subgraphs read."""
    tensors = list(node.inputs)
    for value in node.attrs.values():
        for graph in value if isinstance(value, list) else [value]:
            if isinstance(graph, gs.Graph):
                tensors += [t for inner in graph.nodes for t in _read(inner)]
    return tensors


def _carries_relevance(tensor) -> bool:
    """A float32 tensor with elements (an empty one, from a slice that takes nothing, carries none)."""
    return _is_float(tensor) and not (tensor.shape is not None and 0 in tensor.shape)


def data_tensors(graph: gs.Graph, inputs: list[gs.Variable], carries=_carries_relevance) -> set[str]:
    """Float tensors that depend on an explained input (integer tensors such as shapes carry no relevance);
    a control-flow node's outputs depend on what its subgraphs read. ``carries``: which tensors pass the
    dependence on (default float32 ones with elements)."""
    data = {t.name for t in inputs}
    for node in graph.nodes:
        if any(t.name in data for t in _read(node)):
            data.update(t.name for t in node.outputs if carries(t))
    return data


def _wider_float_between(graph: gs.Graph, inputs: list[gs.Variable], logits: gs.Variable):
    """The first tensor of another float type (double) through which ``logits`` depends on ``inputs``,
    or None."""
    reached = data_tensors(graph, inputs, lambda t: _is_float(t) or _is_other_float(t))
    if logits.name not in reached:
        return None
    return next(t for node in graph.nodes for t in node.outputs if t.name in reached and _is_other_float(t))


def _is_other_float(tensor) -> bool:
    dtype = _element_type(tensor)
    return dtype is not None and dtype.kind == "f" and dtype != np.float32 or _is_bfloat16(tensor)


def _is_bfloat16(tensor) -> bool:
    """bfloat16, which numpy has no type for: onnx-graphsurgeon keeps the ONNX type number."""
    return isinstance(tensor.dtype, int) and tensor.dtype == onnx.TensorProto.BFLOAT16


def _is_scores(tensor) -> bool:
    return _is_float(tensor) and holds_class_scores(tensor.shape)


def explained_output(graph: gs.Graph, label: str, name: str | None) -> gs.Variable:
    """The graph output holding class scores ``[N, K]`` (or ``[N, K, 1, …]``): the one named, or the only
    such float one, or the one that holds the logits of all such (beside their softmax)."""
    described = ", ".join(f"'{t.name}' {np.dtype(t.dtype).name if t.dtype else '?'} {t.shape}"
                          for t in graph.outputs)
    # a ZipMap (scikit-learn's per-sample {class: probability} maps) stands for the scores it reads
    outputs = [(t, t.inputs[0].inputs[0] if t.inputs and t.inputs[0].op == "ZipMap" else t)
               for t in graph.outputs]
    if name is not None:
        chosen = [scores for t, scores in outputs if t.name == name]
        if not chosen:
            raise RlrpError(f"{label}: no output named '{name}' (outputs: {described})")
    else:  # [N, K] first: beside it, an [N, C, 1, 1] output holds pooled features
        chosen = [t for _, t in outputs if _is_scores(t) and len(t.shape) == 2] or [
            t for _, t in outputs if _is_scores(t)]
        if not chosen:
            raise RlrpError(f"{label}: no output holds class scores [N, K] or [N, K, 1, …] (outputs: {described})")
        shared = _logits_of_all(chosen, graph.opset) if len(chosen) > 1 else None
        if shared is not None:
            chosen = [shared]
        if len(chosen) > 1:
            names = ", ".join(t.name for t in chosen)
            raise RlrpError(f"{label}: several outputs could be class scores ({names}); "
                            "choose one with --output (output_name= in Python)")
    output = chosen[0]
    if not _is_scores(output):
        raise RlrpError(f"{label}: output '{output.name}' is not class scores [N, K] or [N, K, 1, …] ({described})")
    return output


def _logits_of_all(outputs: list[gs.Variable], opset: int) -> gs.Variable | None:
    """The one of ``outputs`` that holds the logits of them all (``fc`` beside ``prob = Softmax(fc)``), or None."""
    def logits(output):
        try:
            return logits_of(output, opset)
        except RlrpError:
            return None
    return next((t for t in outputs if all(logits(o) is t for o in outputs)), None)


def logits_of(output: gs.Variable, opset: int = 17, label: str = "<model>") -> gs.Variable:
    """The pre-activation scores: the input of a trailing Softmax/LogSoftmax/Sigmoid (seen through
    Identity, as skl2onnx writes it, through the two Transposes that move the classes to the last axis
    and back, as torch writes a softmax over axis 1 of [N, K, 1, …] below opset 13, and through the
    Flatten, Reshape, Squeeze or Unsqueeze that only add or drop axes of size 1 after it), else the
    output. Refused where such scores are shaped otherwise than [N, K, 1, …] ([N, 1, K])."""
    scores = output
    while True:
        found = _before_trailing(scores, opset)
        if found is not scores:
            if not (holds_class_scores(found.shape) and found.shape[1] == output.shape[1]):
                raise RlrpError(f"{label}: the trailing {_producer(scores).op} acts on scores shaped "
                                f"{found.shape}: only [N, K] or [N, K, 1, …] scores are explained before it")
            return found
        producer = _producer(scores)
        if producer is None or producer.op not in SIZE_ONE_MOVES or not _same_scores(producer.inputs[0], output):
            return output
        scores = producer.inputs[0]


SIZE_ONE_MOVES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}


def _same_scores(tensor, output) -> bool:
    """Whether ``tensor`` holds the K scores of ``output`` with axes of size 1 added or removed."""
    axis = _class_axis(tensor)
    return axis is not None and holds_class_scores(output.shape) and tensor.shape[axis] == output.shape[1]


def _class_axis(tensor) -> int | None:
    """The one axis past the batch of ``tensor`` whose size is not 1, or None."""
    shape = tensor.shape or []
    axes = [a for a, d in enumerate(shape[1:], start=1) if d != 1]
    return axes[0] if len(axes) == 1 and isinstance(shape[axes[0]], int) else None


def _before_trailing(scores: gs.Variable, opset: int) -> gs.Variable:
    """The input of a Softmax/LogSoftmax/Sigmoid writing ``scores``, also between two Transposes; a
    softmax only over the classes (opset 13's default axis: −1; below, the axes from ``axis`` on); z of
    a log-softmax written ``z − logsumexp(z)`` over the classes of [N, K] scores."""
    producer = _producer(scores)
    if producer is not None and producer.op == "Sub" and _is_log_sum_exp_of(producer.inputs[1], producer.inputs[0]):
        return producer.inputs[0]
    moved = producer is not None and producer.op == "Transpose" and _moves_classes_last(producer)
    trailing = _producer(producer.inputs[0]) if moved else producer
    if trailing is None or trailing.op not in TRAILING:
        return scores
    if not moved:
        rank, classes = len(scores.shape), _class_axis(scores) if len(scores.shape) > 2 else 1
        axis = trailing.attrs.get("axis", 1 if opset < 13 else -1) % rank
        over_classes = trailing.op == "Sigmoid" or classes is not None and (
            axis == classes or opset < 13 and 1 <= axis <= classes)
        return trailing.inputs[0] if over_classes else scores
    before = _producer(trailing.inputs[0])
    if before is not None and before.op == "Transpose" and before.attrs["perm"] == producer.attrs["perm"] \
            and trailing.attrs.get("axis", -1) in (-1, len(scores.shape) - 1):
        return before.inputs[0]
    return scores


def _is_log_sum_exp_of(tensor, z) -> bool:
    """Whether ``tensor`` is ReduceLogSumExp of [N, K] scores ``z`` over the classes, keeping the axis."""
    node = _producer(tensor)
    if node is None or node.op != "ReduceLogSumExp" or node.inputs[0] is not z or len(z.shape or []) != 2 \
            or not node.attrs.get("keepdims", 1):
        return False
    axes = node.inputs[1].values.tolist() if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant) \
        else node.attrs.get("axes")
    return axes is not None and [a % 2 for a in axes] == [1]


def _producer(tensor):
    """The node writing ``tensor``, seen through Identity."""
    producer = tensor.inputs[0] if tensor.inputs else None
    while producer is not None and producer.op == "Identity" and producer.inputs[0].inputs:
        producer = producer.inputs[0].inputs[0]
    return producer


def _moves_classes_last(transpose) -> bool:
    """A Transpose that swaps axis 1 and the last one (its own inverse), keeping the batch axis."""
    perm = list(transpose.attrs.get("perm", []))
    return len(perm) > 2 and perm[0] == 0 and perm[1] == len(perm) - 1 and perm[-1] == 1 \
        and perm[2:-1] == list(range(2, len(perm) - 1))


def _relevance_path(context: Context, logits: gs.Variable) -> list[gs.Node]:
    """Nodes (forward order) through which relevance flows from ``logits`` back to the inputs. A gate or a
    statistic held constant by a product receives none: what only computes gates (attention scores,
    squeeze-excitation branches) or statistics (a global response normalization's) needs no rule."""
    reached, path = {logits.name}, []
    for node in reversed(context.graph.nodes):
        if any(t.name in reached for t in node.outputs):
            path.append(node)
            rule = context.rule(node)
            held = {held_operand(context, node), *(rule.held if rule else ())}
            reached.update(t.name for i, t in enumerate(node.inputs) if context.is_data(t) and i not in held)
    path.reverse()
    return path


def gap(context: Context, node: gs.Node) -> str | None:
    """Why no rule covers ``node`` (None when one does)."""
    rule = context.rule(node)
    if rule is None and node.domain == CONTRIB_DOMAIN:
        return "an ONNX Runtime op (com.microsoft) from a model it optimized: compile the model as exported"
    if rule is None and node.domain not in ONNX_DOMAINS:
        return f"an op of the domain '{node.domain}', not of ONNX's own"
    if rule is None:
        return "no relevance rule" + HINTS.get(node.op, "")
    unknown = [t.name for t in (node.inputs[0], node.outputs[0]) if rule.spatial
               and not all(isinstance(d, int) for d in context.shape(t)[2:])]
    if unknown:
        return (f"the spatial size of '{unknown[0]}' is unknown to ONNX shape inference (a reshape to a size "
                "computed at run time?)")
    return rule.check(context, node) if rule.check else None


def analyse(graph: gs.Graph, label: str, inputs: list[gs.Variable], method: Method,
            output_name: str | None = None) -> Plan:
    """Find the explained output, its logits and the relevance path, without checking coverage."""
    output = explained_output(graph, label, output_name)
    logits = logits_of(output, graph.opset, label)
    data = data_tensors(graph, inputs)
    if logits.name not in data:
        wider = _wider_float_between(graph, inputs, logits)
        quantizer = None
        if wider is None and logits.name in data_tensors(graph, inputs, carries=lambda t: True):
            quantizer = next((n for n in graph.nodes if n.op in QUANTIZING and any(t.name in data for t in n.inputs)),
                             None)
        untyped = next((n for n in graph.nodes if any(t.name in data for t in n.inputs)
                        and any(t.dtype is None and (t.outputs or t in graph.outputs) for t in n.outputs)), None)
        if wider is not None:
            kind = "bfloat16" if _is_bfloat16(wider) else _element_type(wider).name
            reason = (f" except through '{wider.name}', a {kind} tensor; only float32 and "
                      "float16 are supported: convert the model to float32")
        elif quantizer is not None:
            reason = f" except through the integers of {quantizer.op} '{quantizer.name}'{QUANTIZED_HINT}"
        elif untyped is not None:
            domain = f", domain '{untyped.domain}'" if untyped.domain not in ONNX_DOMAINS else ""
            reason = (f" as far as types tell: neither ONNX nor ONNX Runtime can infer the type of the output of "
                      f"{untyped.op} '{untyped.name}'{domain}")
        else:
            reason = ""
        raise RlrpError(f"{label}: output '{output.name}' does not depend on any float input{reason}")
    context = Context(graph, data, method.rules, method.layer_rules, method.relative)
    return Plan(inputs, output, logits, _relevance_path(context, logits), context)


def make_plan(graph: gs.Graph, label: str, inputs: list[gs.Variable], method: Method,
              output_name: str | None = None) -> Plan:
    """Plan the relevance pass; raise one RlrpError listing every node no rule covers."""
    plan = analyse(graph, label, inputs, method, output_name)
    unknown = [t.name for n in plan.nodes for t in n.outputs if plan.context.is_data(t) and t.shape is None]
    if unknown:
        raise RlrpError(f"{label}: ONNX shape inference cannot tell the shape of {len(unknown)} tensor(s) relevance "
                        f"crosses ({', '.join(unknown[:3])}{', …' if len(unknown) > 3 else ''}): a reshape to a "
                        "size computed at run time it does not follow (exporting with a newer opset may avoid it)")
    gaps = [f"{node.name or '<unnamed>'} ({node.op}: {reason})"
            for node in plan.nodes if (reason := gap(plan.context, node))]
    if gaps:
        raise RlrpError(f"{label}: {len(gaps)} node(s) not covered: " + "; ".join(gaps))
    method.assign(plan.nodes, plan.context, label)
    return plan

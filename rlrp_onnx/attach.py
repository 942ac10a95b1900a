"""Attach the contract (shared/RLRP.md) to a plan: target input, seed, relevance pass, new outputs."""

import numpy as np
import onnx_graphsurgeon as gs

from .backward import relevance_pass
from .contract import (CLASS_OUTPUT, LAYER_OUTPUT_PREFIX, LOGITS_OUTPUT, SCORE_OUTPUT, TARGET_INPUT,
                       relevance_output_name)


def attach(plan, relative: bool, expose=()) -> list:
    """Add the target input, the seed, the relevance pass and the contract outputs to the plan's graph.

    ``relative``: the pass carries relative relevance rho (R-LRP; R_input = x ⊙ rho_x), else absolute
    relevance R (classical rules). Either way the explained logit seeds it: R_logits = f_c·e_c.
    ``expose`` holds (name, tensor name) pairs: the inner tensors whose relevance becomes an extra output
    ``rlrp_relevance/<name>``.
    Returns the new graph outputs (relevance per explained input, class, score, every class's logit as
    ``rlrp_logits`` [N, K], the ranking the class is chosen from, exposed tensors).
    """
    graph, emit, logits = plan.context.graph, plan.context.emit, plan.logits
    batch, classes = logits.shape[:2]
    if not isinstance(batch, int):  # the inputs' name for it, where shape inference made up another
        batch = plan.inputs[0].shape[0]
    target = gs.Variable(TARGET_INPUT, np.int64, [batch])
    graph.inputs.append(target)
    scores = logits if len(logits.shape) == 2 else emit.op("Flatten", [logits], {"axis": 1})  # [N, K, 1, …]
    argmax = emit.op("ArgMax", [scores], {"axis": 1, "keepdims": 0})
    negative = emit.op("Less", [target, emit.const(0, np.int64)])
    chosen = emit.op("Where", [negative, argmax, target])
    one_hot = emit.op("OneHot", [chosen, emit.scalar_int(classes), emit.const([0.0, 1.0])], {"axis": -1})
    score = emit.squeeze(emit.op("GatherElements", [scores, emit.unsqueeze(chosen, [1])], {"axis": 1}), [1])
    seed = one_hot if relative else emit.mul(one_hot, scores)
    if scores is not logits:
        seed = emit.op("Reshape", [seed, emit.ints([0, classes, *logits.shape[2:]])])
    tensors = {t.name: t for n in plan.nodes for t in n.outputs}
    inner = [(name, tensors[tensor]) for name, tensor in expose]
    reached = relevance_pass(plan.context, plan.nodes, {logits.name: seed}, plan.inputs + [t for _, t in inner])
    reached[logits.name] = seed

    def copy(tensor):
        # A copy under another name; as a product with one because ONNX Runtime's CUDA provider has no
        # Identity kernel for opsets 21 and later.
        return emit.mul(tensor, emit.const(1.0))

    def absolute(tensor, name):
        arrived = reached[tensor.name]
        if arrived is None:
            relevance = emit.mul(tensor, emit.const(0.0))
        else:
            relevance = emit.mul(tensor, arrived) if relative else copy(arrived)
        _name_output(relevance, name, np.float32, tensor.shape)
        return relevance

    outputs = [absolute(t, relevance_output_name(t.name, len(plan.inputs))) for t in plan.inputs]
    _name_output(chosen, CLASS_OUTPUT, np.int64, [batch])
    _name_output(score, SCORE_OUTPUT, np.float32, [batch])
    ranked = copy(scores)
    _name_output(ranked, LOGITS_OUTPUT, np.float32, [batch, classes])
    return outputs + [chosen, score, ranked] + [absolute(t, LAYER_OUTPUT_PREFIX + name) for name, t in inner]


def _name_output(tensor, name, dtype, shape) -> None:
    tensor.name, tensor.dtype, tensor.shape = name, dtype, list(shape)

"""Fold BatchNormalization into the Conv, Gemm or MatMul before it, for the classical rules (RLRP.md)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

FOLDABLE = {"Conv", "Gemm", "MatMul"}


def fold_batchnorm(graph: gs.Graph) -> gs.Graph:
    """``BN(Conv(x, W, b))`` → ``Conv(x, W·f, (b − mean)·f + B)`` with ``f = scale/√(var+ε)``, where the
    Conv (Gemm, or MatMul of a 2-D ``x``, then written as a Gemm: torch's ``Linear(bias=False)`` and
    ``BatchNorm1d``) feeds only the BN and every parameter is constant. The planning graph only: the
    compiled model keeps the source's forward nodes."""
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        layer = bn.inputs[0].inputs[0] if bn.inputs[0].inputs else None
        params = [getattr(t, "values", None) for t in bn.inputs[1:5]]
        if (layer is None or layer.op not in FOLDABLE or len(bn.inputs[0].outputs) != 1
                or any(p is None for p in params) or bn.attrs.get("training_mode", 0)
                or not all(isinstance(t, gs.Constant) for t in layer.inputs[1:])
                or (layer.op == "MatMul" and not _is_dense(layer))):
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        weights = layer.inputs[1].values
        out_axis = 1 if layer.op == "MatMul" or (layer.op == "Gemm" and not layer.attrs.get("transB", 0)) else 0
        bias = layer.inputs[2].values if len(layer.inputs) > 2 else np.zeros(weights.shape[out_axis], weights.dtype)
        if layer.op == "Gemm":
            bias = bias * float(layer.attrs.get("beta", 1.0))
            layer.attrs["beta"] = 1.0
        if layer.op == "MatMul":
            layer.op = "Gemm"  # its weight as B ([in, out]: transB=0), with the bias below
        shape = [1] * weights.ndim
        shape[out_axis] = -1
        folded_w = (weights * factor.reshape(shape)).astype(weights.dtype)
        folded_b = ((bias - mean) * factor + shift).astype(weights.dtype)
        absorb(layer, bn, [layer.inputs[0], gs.Constant(f"{layer.name}_bn_weight", folded_w),
                           gs.Constant(f"{layer.name}_bn_bias", folded_b)])
    graph.cleanup().toposort()
    return graph


def _is_dense(matmul: gs.Node) -> bool:
    """A MatMul of a 2-D ``x`` and a 2-D weight: a Gemm without bias."""
    return matmul.inputs[1].values.ndim == 2 and len(matmul.inputs[0].shape or []) == 2


def absorb(layer: gs.Node, follower: gs.Node, inputs: list) -> None:
    """``layer`` reads ``inputs`` and writes ``follower``'s output, which is left without outputs (for
    ``graph.cleanup()`` to remove): a fold of ``follower`` into ``layer``."""
    y = follower.outputs[0]
    layer.inputs.clear()
    layer.inputs.extend(inputs)
    layer.outputs.clear()
    follower.outputs.clear()
    layer.outputs.append(y)

"""Give each linear layer its whole bias and scale, for the classical rules (RLRP.md: a layer is
``A(x; W, b)``, "Conv, Gemm, MatMul+bias"; its rule modifies W and b together)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .batchnorm import absorb


def fold_layer_constants(graph: gs.Graph) -> gs.Graph:
    """``Add(Conv(x, W[, b]), c)`` with ``c`` constant per channel → ``Conv(x, W, b + c)``;
    ``Add(MatMul(x, W), c)`` with a constant 2-D ``W`` and ``c`` per output feature → ``Gemm(x, W, c)``
    for a 2-D ``x``, else (tokens, [N, T, D]) ``MatMul(x, W, c)``, a MatMul with a bias as only the
    classical rules read it (``rules.classical.Layer.forward``); a Gemm's ``alpha``/``beta`` multiplied
    into its constant ``B``/``C``. The layer must feed only the Add. The planning graph only: the compiled
    model keeps the source's forward nodes."""
    for gemm in [n for n in graph.nodes if n.op == "Gemm"]:
        _fold_gemm_scalars(gemm)
    for add in [n for n in graph.nodes if n.op == "Add"]:
        constants = [t for t in add.inputs if isinstance(t, gs.Constant)]
        data = [t for t in add.inputs if not isinstance(t, gs.Constant)]
        if len(constants) != 1 or len(data) != 1 or not data[0].inputs or len(data[0].outputs) != 1:
            continue
        layer, bias = data[0].inputs[0], constants[0].values
        if layer.op == "Conv":
            _into_conv(layer, add, bias)
        elif layer.op == "MatMul":
            _into_matmul_layer(layer, add, bias)
    graph.cleanup().toposort()
    return graph


def _fold_gemm_scalars(gemm: gs.Node) -> None:
    for name, index in (("alpha", 1), ("beta", 2)):
        factor = float(gemm.attrs.get(name, 1.0))
        tensor = gemm.inputs[index] if len(gemm.inputs) > index else None
        if factor != 1.0 and isinstance(tensor, gs.Constant):
            scaled = (tensor.values * factor).astype(tensor.values.dtype)
            gemm.inputs[index] = gs.Constant(f"{gemm.name}_{name}_folded", scaled)
            gemm.attrs[name] = 1.0


def _channel_vector(bias: np.ndarray, rank: int, channels: int, axis: int) -> np.ndarray | None:
    """``bias`` as a vector along ``axis`` of a rank-``rank`` output with ``channels`` there, if it is
    constant along every other axis (broadcast), else None."""
    if bias.ndim > rank:
        return None
    full = bias.reshape((1,) * (rank - bias.ndim) + bias.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis) or full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,))


def _into_conv(conv: gs.Node, add: gs.Node, bias: np.ndarray) -> None:
    weights = conv.inputs[1]
    old = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
    rank = len(add.outputs[0].shape or [])
    if rank < 3 or not isinstance(weights, gs.Constant) or not isinstance(old, (gs.Constant, type(None))):
        return
    vector = _channel_vector(bias, rank, weights.values.shape[0], 1)
    if vector is None:
        return
    total = vector + (old.values if old is not None else 0)
    folded = gs.Constant(f"{conv.name}_add_bias", total.astype(weights.values.dtype))
    absorb(conv, add, [conv.inputs[0], weights, folded])


def _into_matmul_layer(matmul: gs.Node, add: gs.Node, bias: np.ndarray) -> None:
    x, weights = matmul.inputs
    rank = len(x.shape or [])
    if not isinstance(weights, gs.Constant) or weights.values.ndim != 2 or rank < 2:
        return
    vector = _channel_vector(bias, rank, weights.values.shape[1], rank - 1)
    if vector is None:
        return
    if rank == 2:
        matmul.op = "Gemm"
    folded = gs.Constant(f"{matmul.name}_add_bias", vector.astype(weights.values.dtype))
    absorb(matmul, add, [x, weights, folded])

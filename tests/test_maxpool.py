"""MaxPool relevance where windows tie: each window's relevance goes to its first winner, as in torch's
(and ONNX Runtime's) max-pool gradient, whether windows overlap or not, at opsets 11, 17 and 22; a Relu
read only by MaxPools has its mask applied at the pooled resolution. ReduceMax over any axes and
GlobalMaxPool route to the first maximum too.

Ties are made on purpose: the images are piecewise constant, so a convolution gives equal outputs all
over a flat patch, positive (bias > 0) or zero (cut by the Relu).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from onnx import TensorProto, helper

from rlrp_onnx import compile_model

from onnx_builders import make_model
from oracle import input_times_gradient
from test_rule_configs import compare, export

TOLERANCE = 1e-5
POOLS = {
    "disjoint_2x2": dict(kernel_size=2, stride=2),
    "overlapping_3x3_s2_pad1": dict(kernel_size=3, stride=2, padding=1),
    "overlapping_2x2_s1": dict(kernel_size=2, stride=1),
    "disjoint_3x2_ceil": dict(kernel_size=(3, 2), stride=(3, 2), ceil_mode=True),
    "disjoint_3x3_rows_left_out": dict(kernel_size=3, stride=3),  # 16 -> 5 (one row/column unused), 5 -> 1
}


class PoolNet(nn.Module):
    """Conv → Relu → MaxPool → Conv → Relu → MaxPool → Linear; with ``side``, the first Relu's output is
    also read by an average pool added to the first max pool's output (not only MaxPools read it)."""

    def __init__(self, pool: dict, side: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv1.bias.uniform_(-0.2, 0.5)
        self.pool1, self.pool2 = nn.MaxPool2d(**pool), nn.MaxPool2d(**pool)
        self.side = nn.AvgPool2d(**{k: v for k, v in pool.items() if k != "ceil_mode"}, ceil_mode=pool.get(
            "ceil_mode", False)) if side else None
        self.head = nn.LazyLinear(5)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        h = self.pool1(y) + (self.side(y) if self.side is not None else 0)
        h = self.pool2(torch.relu(self.conv2(h)))
        return self.head(h.flatten(1))


def blocky_images(batch: int = 3, size: int = 16) -> np.ndarray:
    """Images made of 4x4 constant blocks (some black): many exactly equal conv outputs."""
    rng = np.random.default_rng(11)
    blocks = rng.uniform(-1, 1, (batch, 3, size // 4, size // 4)).astype(np.float32)
    blocks[:, :, :1] = 0.0
    return np.kron(blocks, np.ones((4, 4), np.float32))


def exported(tmp_path, pool: dict, side: bool = False, opset: int = 17):
    model = PoolNet(pool, side).eval()
    x = blocky_images()
    model(torch.from_numpy(x))  # materialise the lazy head
    return model, x, export(model, x, tmp_path / "pool.onnx", opset)


def check(model, x, path) -> None:
    """The compiled model's class, score and relevance against torch autograd (``compare``)."""
    targets = [0, -1, 3]
    compare(compile_model(path), path, input_times_gradient(model, x, targets), x, targets, TOLERANCE)


def stamped(path, opset: int) -> onnx.ModelProto:
    """The model at ``path`` declared at ``opset`` (17 to 22 give every op it holds the same meaning)."""
    model = onnx.load(path)
    model.opset_import[0].version, model.ir_version = opset, 10
    return model


@pytest.mark.parametrize("opset", [11, 17, 22])
@pytest.mark.parametrize("side", [False, True], ids=["pools_only", "relu_read_elsewhere"])
@pytest.mark.parametrize("pool", list(POOLS.values()), ids=list(POOLS))
def test_ties_go_to_the_first_winner(tmp_path, pool, side, opset):
    """Windows that tile the input route by cells at every opset; the others at opset 17 through
    MaxPool's indices, at 22 through ArgMax over the windows' cells (no MaxPool: ONNX Runtime's CUDA
    provider has no MaxPool-22 kernel), at 11 (no summing scatter) overlapping windows through that
    ArgMax and a one-hot Conv's adjoint; exported at 11 and 17, stamped 22."""
    model, x, path = exported(tmp_path, pool, side, opset=min(opset, 17))
    if opset > 17:
        onnx.save(stamped(path, opset), path)
    y = torch.relu(model.conv1(torch.from_numpy(x))).detach().numpy()
    assert np.mean(y[:, :, 4:-4, 4:-4] == np.roll(y, 1, axis=3)[:, :, 4:-4, 4:-4]) > 0.4  # ties exist
    check(model, x, path)


@pytest.mark.parametrize("opset", [11, 17, 22])
def test_tiling_windows_route_by_cells(tmp_path, opset):
    """No MaxPool with Indices, no ArgMax (but the explained class's) and no scatter where the windows
    tile the input (also with rows left over); the scatter stays for windows that pad, and for windows
    that overlap from opset 16 on."""
    for name, pool in POOLS.items():
        _, _, path = exported(tmp_path, pool, opset=min(opset, 17))
        source = stamped(path, opset) if opset > 17 else onnx.load(path)
        ops = Counter(n.op_type for n in compile_model(source).graph.node[len(source.graph.node):])
        routing = {op for op in ("MaxPool", "ScatterElements") if ops[op]} | ({"ArgMax"} if ops["ArgMax"] > 1 else set())
        if name.startswith("disjoint") and not pool.get("ceil_mode"):
            assert routing == set(), name
        elif opset < 16 and name.startswith("overlapping"):
            assert routing == {"ArgMax"}, name
        else:
            assert routing == {"MaxPool" if opset < 22 else "ArgMax", "ScatterElements"}, name


def test_relu_mask_moves_to_the_pooled_output(tmp_path):
    """The first Relu's output is read by the relevance pass only through its MaxPool: no mask over it."""
    _, _, path = exported(tmp_path, POOLS["disjoint_2x2"])
    source = onnx.load(path)
    relu_outputs = {n.output[0] for n in source.graph.node if n.op_type == "Relu"}
    pool_outputs = {n.output[0] for n in source.graph.node if n.op_type == "MaxPool"}
    nodes = compile_model(path).graph.node
    steps = {n.input[0] for n in nodes if n.op_type == "HardSigmoid"}  # Emitter.step: Conv, HardSigmoid
    masked = {n.input[0] for n in nodes if n.op_type == "Greater" or (n.op_type == "Conv" and n.output[0] in steps)}
    assert not masked & relu_outputs and pool_outputs <= masked


# ReduceMax over these axes (keepdims), or the GlobalMaxPool op, after Conv → Relu; then Flatten → Gemm
MAXIMA = {
    "global_reduce_max": ("ReduceMax", [2, 3], 1),  # the dynamo exporter's AdaptiveMaxPool2d(1)
    "global_max_pool_op": ("GlobalMaxPool", [2, 3], 1),
    "channels_dropped": ("ReduceMax", [1], 0),
    "channels_and_columns": ("ReduceMax", [1, 3], 1),
}


class Function(nn.Module):
    """A function as a module, for ``input_times_gradient``."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, image):
        return self.function(image)


def first_maximum(y: torch.Tensor, axes: list[int], keepdims: int) -> torch.Tensor:
    """The maximum over ``axes`` as torch.max takes it along one axis: its gradient goes to the first
    maximum (row-major over ``axes``)."""
    kept = [a for a in range(y.dim()) if a not in axes]
    moved = y.permute(*kept, *axes)
    values = moved.reshape(*moved.shape[:len(kept)], -1).max(dim=-1).values
    return values.reshape([1 if a in axes else y.shape[a] for a in range(y.dim())]) if keepdims else values


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("case", list(MAXIMA))
def test_reduce_max_routes_to_the_first_maximum(case, opset):
    """Against torch input × gradient through torch.max on blocky images (ties: an even split among them,
    as torch.amax's gradient gives, fails all but the channel case); the global case also against
    torch's own adaptive max pool. From opset 18 ReduceMax reads its axes as an input."""
    op, axes, keepdims = MAXIMA[case]
    rng = np.random.default_rng(4)
    conv_w, conv_b = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.uniform(-0.2, 0.5, 4).astype(np.float32)
    x = blocky_images()
    pooled_size = int(np.prod([1 if a in axes else n for a, n in enumerate((1, 4, 16, 16))]))
    dense = rng.normal(size=(5, pooled_size)).astype(np.float32)
    if op == "GlobalMaxPool":
        pool, extra = helper.make_node(op, ["r"], ["m"]), {}
    elif opset >= 18:
        pool, extra = helper.make_node(op, ["r", "axes"], ["m"], keepdims=keepdims), {"axes": np.array(axes)}
    else:
        pool, extra = helper.make_node(op, ["r"], ["m"], axes=axes, keepdims=keepdims), {}
    source = make_model(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), pool, helper.make_node("Flatten", ["m"], ["f"]),
         helper.make_node("Gemm", ["f", "dense"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        {"cw": conv_w, "cb": conv_b, "dense": dense, **extra}, opset=opset)

    def network(image, maximum=lambda y: first_maximum(y, axes, keepdims)):
        y = torch.relu(nn.functional.conv2d(image, torch.from_numpy(conv_w), torch.from_numpy(conv_b), padding=1))
        return maximum(y).flatten(1) @ torch.from_numpy(dense).T

    targets = [0, -1, 3]
    references = [network]
    if axes == [2, 3]:
        references.append(lambda image: network(image, lambda y: nn.functional.adaptive_max_pool2d(y, 1)))
    for reference in references:
        compare(compile_model(source), source, input_times_gradient(Function(reference), x, targets), x, targets,
                TOLERANCE)

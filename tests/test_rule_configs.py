"""Each linear/pooling/structure rule under the configurations exporters produce, against torch autograd.

Small one-purpose torch modules are exported with the TorchScript exporter (opset 17); graphs no
exporter emits (auto_pad, Gemm flags) are built by hand and checked against the same computation
written in torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper

from rlrp_onnx import compile_model
from rlrp_onnx.compiler import plan_model
from rlrp_onnx.methods import choose
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT

from onnx_builders import make_model
from oracle import input_times_gradient, relative_l2_error
from test_oracle import run

TOLERANCE = 1e-4


def export(module: nn.Module, x: np.ndarray, path, opset: int = 17) -> str:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    return str(path)


def compare(compiled: onnx.ModelProto, source, reference, x: np.ndarray, targets,
            tolerance: float = TOLERANCE) -> None:
    """Run ``compiled`` and check class, score and relevance against ``reference`` (relevance, classes, scores)."""
    out = run(compiled, {"x": x, TARGET_INPUT: np.asarray(targets, np.int64)})
    assert np.array_equal(out["logits"], run(source, {"x": x})["logits"])
    relevance, classes, scores = reference
    np.testing.assert_array_equal(out[CLASS_OUTPUT], classes)
    np.testing.assert_allclose(out[SCORE_OUTPUT], scores, rtol=1e-5, atol=1e-5)
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    assert np.all(errors < tolerance), errors
    source_nodes = {n.name for n in (source if isinstance(source, onnx.ModelProto) else onnx.load(source)).graph.node}
    added = {n.op_type for n in compiled.graph.node if n.name not in source_nodes}
    assert not added & {"Div", "Reciprocal"}, "the relevance pass divides"


def check_module(module: nn.Module, shape, tmp_path, targets=(1, -1), opset: int = 17):
    """Export at opset 17 (stamped ``opset`` afterwards: the ops these modules export mean the same up
    to opset 22), compile, compare with torch's input × gradient."""
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    x = np.random.default_rng(1).standard_normal((len(targets), *shape)).astype(np.float32)
    path = export(module, x, tmp_path / "m.onnx")
    if opset != 17:
        model = onnx.load(path)
        model.opset_import[0].version, model.ir_version = opset, 10
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, path)
    compare(compile_model(path), path, input_times_gradient(module, x, list(targets)), x, targets)


class Head(nn.Module):
    """``body`` then flatten and a dense layer to 5 classes."""

    def __init__(self, body: nn.Module, features: int):
        super().__init__()
        self.body, self.fc = body, nn.Linear(features, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


def conv_then(pool: nn.Module, dims: int = 2, channels: int = 3) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return nn.Sequential(conv(channels, 4, 3, padding=1), pool)


CASES = {
    # name: (body, input shape (without batch), flattened features)
    "maxpool_3x3_s2_ceil_odd": (conv_then(nn.MaxPool2d(3, 2, 1, ceil_mode=True)), (3, 15, 15), 4 * 8 * 8),
    "maxpool_overlap_s1": (conv_then(nn.MaxPool2d(2, 1)), (3, 9, 9), 4 * 8 * 8),
    "maxpool_dilated": (conv_then(nn.MaxPool2d(3, 2, dilation=2)), (3, 13, 13), 4 * 5 * 5),
    "avgpool_ceil_include_pad": (conv_then(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)),
                                 (3, 14, 14), 4 * 8 * 8),
    "avgpool_ceil_exclude_pad": (conv_then(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
                                 (3, 14, 14), 4 * 8 * 8),
    "avgpool_nonsquare": (conv_then(nn.AvgPool2d((2, 3), (1, 2), (1, 1))), (3, 8, 9), 4 * 9 * 5),
    "conv_stride_remainder": (nn.Conv2d(3, 4, 3, stride=2), (3, 16, 16), 4 * 7 * 7),
    "conv_grouped_strided": (nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=2, groups=2)),
                             (4, 11, 11), 6 * 7 * 7),
    "conv_asymmetric_kernel": (nn.Conv2d(3, 4, (1, 5), stride=(2, 1), padding=(0, 2)), (3, 9, 9), 4 * 5 * 9),
    "conv_depthwise_strided_dilated": (nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=4),
                                       (4, 11, 11), 4 * 6 * 6),
    "conv_depthwise_multiplier_strided": (nn.Conv2d(4, 8, 5, stride=2, padding=2, groups=4), (4, 12, 12), 8 * 6 * 6),
    "conv_depthwise_stride3_remainder": (nn.Conv2d(4, 4, 3, stride=3, groups=4), (4, 10, 10), 4 * 3 * 3),
    "conv_depthwise_pad_past_reach": (nn.Conv2d(4, 4, 3, stride=2, padding=3, groups=4), (4, 9, 9), 4 * 7 * 7),
    "conv1d_depthwise_strided": (nn.Conv1d(4, 4, 3, stride=2, padding=1, groups=4), (4, 15), 4 * 8),
    "conv_1x1_strided": (nn.Conv2d(4, 6, 1, stride=2), (4, 9, 9), 6 * 5 * 5),
    "conv_1x1_strided_padded": (nn.Conv2d(4, 6, 1, stride=2, padding=1), (4, 8, 8), 6 * 5 * 5),
    "conv_1x1_grouped_uneven_strides": (nn.Conv2d(4, 6, 1, stride=(2, 3), groups=2), (4, 9, 10), 6 * 5 * 4),
    "conv1d_pools": (nn.Sequential(nn.Conv1d(3, 4, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool1d(3, 2),
                                   nn.AvgPool1d(2)), (3, 40), 4 * 4),
    "conv3d_avgpool": (conv_then(nn.AvgPool3d(2), dims=3), (3, 6, 6, 6), 4 * 3 * 3 * 3),
    "global_and_reduce_mean": (nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1)), (3, 7, 7), 5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_configuration(case, tmp_path):
    body, shape, features = CASES[case]
    check_module(Head(body, features), shape, tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_configuration_at_opset_22(case, tmp_path):
    """From opset 22 on the adjoints avoid ConvTranspose (no CUDA kernel): zeros inserted, then a Conv."""
    body, shape, features = CASES[case]
    check_module(Head(body, features), shape, tmp_path, opset=22)


class Structure(nn.Module):
    """Sub/Div by constants, negative and valued padding, squeeze/unsqueeze, a mean, a dense layer on
    a rank-3 tensor (MatMul + Add), and a trailing softmax."""

    def __init__(self, log: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.dense = nn.Linear(7, 3)
        self.fc = nn.Linear(4 * 3, 5)
        self.log = log
        self.register_buffer("mean", torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1))

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.pad(x, (2, -1, -1, 1), value=0.5)
        x = torch.relu(self.conv(x)).unsqueeze(1).squeeze(1)
        x = x.mean(dim=2)                     # [N, 4, W] with W = 7
        x = torch.relu(self.dense(x))        # MatMul with a constant + Add
        logits = self.fc(x.reshape(x.shape[0], -1))
        return F.log_softmax(logits, 1) if self.log else F.softmax(logits, 1)


class LogitsOf(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        model = self.model
        x = (x - model.mean) / model.std
        x = F.pad(x, (2, -1, -1, 1), value=0.5)
        x = torch.relu(model.conv(x)).mean(dim=2)
        x = torch.relu(model.dense(x))
        return model.fc(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_structure_ops_and_trailing_softmax(log, tmp_path):
    model = Structure(log).eval()
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    path = export(model, x, tmp_path / "s.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Sub", "Div", "Pad", "ReduceMean", "MatMul", "LogSoftmax" if log else "Softmax"} <= ops
    compiled = compile_model(path)
    compare(compiled, path, input_times_gradient(LogitsOf(model), x, [0, -1, 4]), x, [0, -1, 4])


class ConvClassifier(nn.Module):
    """Caffe's SqueezeNet ends so: a 1x1 Conv to the classes, ReLU, global average pool, [softmax]: scores
    [N, K, 1, 1]."""

    def __init__(self, softmax: bool):
        super().__init__()
        self.body, self.classes = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.softmax = softmax

    def logits(self, x):
        return F.adaptive_avg_pool2d(torch.relu(self.classes(torch.relu(self.body(x)))), 1)

    def forward(self, x):
        return F.softmax(self.logits(x), 1) if self.softmax else self.logits(x)


class Flattened(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.logits(x).flatten(1)


@pytest.mark.parametrize("softmax,opset", [(False, 17), (True, 17), (True, 11)],
                         ids=["scores", "softmax", "softmax-opset11"])
def test_class_scores_with_trailing_unit_axes(softmax, opset, tmp_path):
    """Scores [N, K, 1, 1] are explained as [N, K] (before a trailing softmax, which torch writes between
    two Transposes below opset 13), by R-LRP and by LRP-0 (equal to input × gradient on ReLU networks);
    top_k ranks them so."""
    from rlrp_onnx import Explainer

    model = ConvClassifier(softmax).eval()
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    path = export(model, x, tmp_path / "c.onnx", opset=opset)
    assert ("Transpose" in {n.op_type for n in onnx.load(path).graph.node}) == (opset == 11)
    assert [d.dim_value for d in onnx.load(path).graph.output[0].type.tensor_type.shape.dim][1:] == [5, 1, 1]
    reference = input_times_gradient(Flattened(model), x, [0, -1, 4])
    compare(compile_model(path), path, reference, x, [0, -1, 4])
    lrp0 = run(compile_model(path, rule="lrp0"), {"x": x, TARGET_INPUT: np.array([0, -1, 4])})  # ReLU: the same
    assert np.all(relative_l2_error(lrp0[RELEVANCE_OUTPUT], reference[0]) < 1e-3)
    ranked = Explainer(path, device="cpu").explain(x, top_k=2)
    with torch.no_grad():
        expected = torch.topk(Flattened(model)(torch.from_numpy(x)), 2).indices.numpy()
    np.testing.assert_array_equal(ranked.classes, expected)


def test_scores_beside_pooled_features():
    """Beside logits [N, K], an output [N, C, 1, 1] (pooled features) is not taken for class scores."""
    rng = np.random.default_rng(4)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["features"]), helper.make_node("Flatten", ["features"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6, 1, 1]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        {"w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "fc": rng.normal(size=(4, 6)).astype(np.float32)})
    plan, _ = plan_model(model, "m", choose())
    assert plan.explained_output.name == "logits"


class Unflattened(nn.Module):
    """A Reshape whose target TorchScript computes from Shape: without dynamic axes for the output, it
    declares the logits with the example's batch size."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(2).unflatten(2, (8, 8)).flatten(1))


def test_outputs_declared_with_the_examples_batch(tmp_path):
    """The compiled model runs at any batch, as the source does (it took the declared 3 for the batch)."""
    model, path = Unflattened().eval(), tmp_path / "stale.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(3, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "N"}})
    assert onnx.load(path).graph.output[0].type.tensor_type.shape.dim[0].dim_value == 3
    compiled = compile_model(path)
    assert compiled.graph.input[-1].type.tensor_type.shape.dim[0].dim_param == "N"  # rlrp_target
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        targets = [-1] * batch
        compare(compiled, str(path), input_times_gradient(model, x, targets), x, targets)


@pytest.mark.parametrize("pool", [nn.MaxPool2d((1, 2), (1, 3), ceil_mode=True),
                                  nn.AvgPool2d(2, 2, padding=1, ceil_mode=True)], ids=["max", "average"])
def test_ceil_mode_pool_whose_last_window_is_dropped_is_refused(pool, tmp_path):
    """ONNX Runtime drops a ceil-mode window that starts past the input (as torch does), onnx's shape
    inference keeps it: the relevance pass, built for the inferred size, was wrong without an error (0.33
    relative L2) or failed at run time. Refused, naming the pool."""
    from rlrp_onnx import RlrpError

    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), pool, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 3))
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 6)).astype(np.float32)
    path = export(model, x, tmp_path / "ceil.onnx")
    op = "MaxPool" if isinstance(pool, nn.MaxPool2d) else "AveragePool"
    with pytest.raises(RlrpError, match=f"{op} with ceil_mode whose last window starts past the input"):
        compile_model(path)
    # the dynamo exporter declares the pooled size ONNX Runtime computes, which ONNX's strict inference refuses
    declared = onnx.load(path)
    pooled = next(n for n in declared.graph.node if n.op_type == op).output[0]
    declared.graph.output.append(helper.make_tensor_value_info(pooled, TensorProto.FLOAT, None))
    size = run(declared, {"x": x})[pooled].shape
    declared.graph.output.pop()
    declared.graph.value_info.append(helper.make_tensor_value_info(pooled, TensorProto.FLOAT, ["N", *size[1:]]))
    with pytest.raises(RlrpError, match="ONNX's strict shape inference refuses the model itself .* though ONNX "
                                        "Runtime loads it"):
        compile_model(declared)


class Tiled(nn.Module):
    def forward(self, x):
        return torch.tile(x, (1, 1, 1, 2))


def test_torch_tile(tmp_path):
    """TorchScript writes torch.tile behind two Ifs on the input's rank, Size(Shape(x)), which is folded
    (the Tile's repeats were unknown: refused as a size computed at run time)."""
    check_module(Head(nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), Tiled()), 2 * 6 * 12), (3, 6, 6),
                 tmp_path)


def torch_same_conv(x, w, stride, mode):
    """Conv with ONNX auto_pad semantics, written from the ONNX operator specification."""
    size, k = x.shape[-1], w.shape[-1]
    if mode == "VALID":
        return F.conv2d(x, w, stride=stride)
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + k - size)
    small, large = total // 2, total - total // 2
    begin, end = (small, large) if mode == "SAME_UPPER" else (large, small)
    return F.conv2d(F.pad(x, (begin, end, begin, end)), w, stride=stride)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride,kernel", [(1, 4), (2, 3), (2, 4)])
def test_conv_auto_pad(mode, stride, kernel):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    fc = rng.standard_normal((5, 4 * 25)).astype(np.float32)  # after a 5×5 average pool to a fixed size
    size = 14
    out = {"VALID": (size - kernel) // stride + 1}.get(mode, -(-size // stride))
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=mode, strides=[stride, stride]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[out - 4, out - 4]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        {"w": w, "fc": fc})

    class Same(nn.Module):
        def forward(self, x):
            r = torch.relu(torch_same_conv(x, torch.from_numpy(w), stride, mode))
            p = F.avg_pool2d(r, out - 4, stride=1)
            return torch.flatten(p, 1) @ torch.from_numpy(fc).T

    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})["logits"], Same()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    compare(compile_model(model), model, input_times_gradient(Same(), x, [2, -1]), x, [2, -1])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_flags(trans_b, alpha, beta):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["logits"], transB=trans_b, alpha=alpha, beta=beta)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        {"w": w, "c": c})
    weight = torch.from_numpy(w.T if trans_b else w)

    class Affine(nn.Module):
        def forward(self, x):
            return alpha * x @ weight + beta * torch.from_numpy(c)

    x = rng.standard_normal((3, 6)).astype(np.float32)
    compare(compile_model(model), model, input_times_gradient(Affine(), x, [0, 4, -1]), x, [0, 4, -1])


def test_matmul_with_constant_on_the_left():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["w", "x"], ["m"]),             # [4, 6] @ [N, 6, 2] → [N, 4, 2]
         helper.make_node("Relu", ["m"], ["r"]),
         helper.make_node("Flatten", ["r"], ["logits"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
        {"w": w})

    class Left(nn.Module):
        def forward(self, x):
            return torch.flatten(torch.relu(torch.from_numpy(w) @ x), 1)

    x = rng.standard_normal((2, 6, 2)).astype(np.float32)
    compare(compile_model(model), model, input_times_gradient(Left(), x, [7, -1]), x, [7, -1])


def test_zero_pad_before_conv_is_folded_into_the_adjoint(tmp_path):
    """TF-style "same" padding (a Pad, then a Conv without pads): the relevance pass maps straight
    onto the Pad's input, with no crop, and still equals autograd."""

    class Same(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 5)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(F.pad(x, (2, 2, 2, 2)))), 1))

    model = Same().eval()
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = export(model, x, tmp_path / "same.onnx")
    assert "Pad" in {n.op_type for n in onnx.load(path).graph.node}
    compiled = compile_model(path)
    compare(compiled, path, input_times_gradient(model, x, [1, -1]), x, [1, -1])
    plan, _ = plan_model(onnx.load(path), "same", choose())
    assert [n.op for n in plan.nodes if n.op in ("Pad", "Conv")] == ["Conv"]
    assert next(n for n in plan.nodes if n.op == "Conv").attrs["pads"] == [2, 2, 2, 2]

"""Models exported at opsets 11-15, as tutorials (``opset_version=11``), tf2onnx (15 by default) and model
zoos write them: overlapping max pools, where ScatterElements cannot sum (before opset 16), and
``x.view(x.size(0), -1)``, whose Reshape ONNX shape inference does not follow before Reshape-14.

The torch networks are checked against autograd (with their gates held, ``gates.detached_gates``); the
hand-built Reshape spellings against the relevance of a linear classifier, x · W[class] (exact).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rlrp_onnx import compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, TARGET_INPUT
from rlrp_onnx.passes import canonicalize

from family_models import family_input, make_family
from gates import detached_gates
from onnx_builders import make_model
from oracle import input_times_gradient
from reference_models import example_input, make_model as make_reference
from test_oracle import run
from test_rule_configs import compare, export

CASES = [("resnet18_like", 11), ("resnet18_like", 13), ("resnet50_like", 15), ("densenet_like", 12),
         ("inception_like", 11), ("senet_like", 12), ("attention_like", 13), ("vit_like", 11), ("vit_like", 16), ("groupnorm_like", 11)]


@pytest.mark.parametrize("name,opset", CASES, ids=[f"{n}-opset{o}" for n, o in CASES])
def test_older_opset_exports_match_autograd(tmp_path, name, opset):
    """ResNets, DenseNet and Inception have overlapping max pools (3x3, stride 2); ResNet-18, SENet and
    the attention net reshape by the batch size read at run time (SENet twice, the second Reshape's
    input shape known only once the first is pinned); the ViT expands its class token to the batch size
    and, below opset 17, writes LayerNorm out in arithmetic (passes/layer_norm.py); GroupNorm reshapes to
    the batch size around its InstanceNormalization."""
    reference = name in ("resnet18_like", "resnet50_like")
    model = make_reference(name) if reference else make_family(name)
    x = example_input(name, batch=3, seed=7) if reference else family_input(name, batch=3, seed=7)
    path = export(model, x, tmp_path / "model.onnx", opset)
    targets = [3, -1, 9]
    with detached_gates(model):
        reference = input_times_gradient(model, x, targets)
    compare(compile_model(path), path, reference, x, targets)


def test_an_ir3_file_converted_to_a_newer_opset(tmp_path):
    """The first model zoos' files are IR 3 (every weight also listed as an input), and
    ``onnx.version_converter``, which the refusal of opsets below 11 advises, keeps that IR: the compiled
    model, which adds initializers that are not inputs and the optional ``rlrp_target``, was invalid
    ("internal error"). It is raised to the IR its opset needs, the weights no longer listed as inputs (in
    IR 3 they are constants all the same), and explains a chosen class like autograd."""
    model, x = make_reference("resnet18_like"), example_input("resnet18_like", batch=3, seed=7)
    source = onnx.load(export(model, x, tmp_path / "model.onnx", 13))
    listed = {i.name for i in source.graph.input}
    source.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                              for t in source.graph.initializer if t.name not in listed)
    source.ir_version = 3
    onnx.checker.check_model(source)
    compiled = compile_model(source)
    assert compiled.ir_version >= 7
    assert [i.name for i in compiled.graph.input] == ["x", TARGET_INPUT]
    targets = [3, -1, 9]
    with detached_gates(model):
        reference = input_times_gradient(model, x, targets)
    compare(compiled, source, reference, x, targets)


# ---- Reshape targets computed from the batch size -------------------------------------------------

X_SHAPE = ["N", 4, 2, 2]


def _shape_ops(spelling: str):
    """Nodes computing the Reshape target ``target`` from ``x``'s shape, as exporters spell it."""
    shape = helper.make_node("Shape", ["x"], ["shape"])
    if spelling == "torchscript":  # x.view(x.size(0), -1)
        return [shape, helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
                helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0)]
    if spelling == "tf2onnx":  # Keras Flatten: Cast, Slice of the first size, Concat, Cast
        return [shape, helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
                helper.make_node("Slice", ["shape32", "zero1", "one1", "zero1"], ["n1"]),
                helper.make_node("Concat", ["n1", "sixteen32"], ["target32"], axis=0),
                helper.make_node("Cast", ["target32"], ["target"], to=TensorProto.INT64)]
    if spelling == "two_sizes":  # x.reshape(x.shape[0], x.shape[1], -1), then flattened by the Gemm's input
        return [shape, helper.make_node("Slice", ["shape", "zero1", "two1"], ["lead"]),
                helper.make_node("Concat", ["lead", "minus_one"], ["target3"], axis=0),
                helper.make_node("Reshape", ["x", "target3"], ["x3"]),
                helper.make_node("Shape", ["x3"], ["shape3"]),
                helper.make_node("Gather", ["shape3", "zero1"], ["n1"], axis=0),
                helper.make_node("Concat", ["n1", "sixteen"], ["target"], axis=0)]
    if spelling == "reduce_prod":  # Keras Dense on [N, 4, 4]: Reshape to [N·4, 4], then back as [N, 16]
        return [shape, helper.make_node("Gather", ["shape", "lead2"], ["lead"], axis=0),
                helper.make_node("ReduceProd", ["lead"], ["rows"], keepdims=1),
                helper.make_node("Concat", ["rows", "minus_one"], ["target_rows"], axis=0),
                helper.make_node("Reshape", ["x", "target_rows"], ["x3"]),
                helper.make_node("Gather", ["shape", "zero1"], ["n1"], axis=0),
                helper.make_node("Concat", ["n1", "sixteen"], ["target"], axis=0)]
    if spelling == "broadcast_max":  # tf2onnx's Einsum: batch sizes broadcast with Max
        return [shape, helper.make_node("Gather", ["shape", "zero1"], ["n1"], axis=0),
                helper.make_node("Max", ["n1", "one1"], ["n_or_1"]),
                helper.make_node("Concat", ["n_or_1", "sixteen"], ["target"], axis=0)]
    raise ValueError(spelling)


# the flat Reshape's target on the planning graph: 0 copies the batch size where the data has it
PLANNED = {"torchscript": [0, 16], "tf2onnx": [0, 16], "two_sizes": [0, 16], "reduce_prod": [-1, 16],
           "broadcast_max": [-1, 16]}


def reshaped_classifier(spelling: str, opset: int = 13) -> onnx.ModelProto:
    """x [N, 4, 2, 2] → Reshape to [N, 16] (target computed at run time) → Gemm → logits [N, 3]."""
    rng = np.random.default_rng(5)
    data = "x3" if spelling in ("two_sizes", "reduce_prod") else "x"
    return make_model(
        _shape_ops(spelling) + [helper.make_node("Reshape", [data, "target"], ["flat"]),
                                helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        {"w": rng.normal(size=(3, 16)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
         "zero": np.array(0), "zero1": np.array([0]), "one1": np.array([1]), "two1": np.array([2]),
         "axes0": np.array([0]), "minus_one": np.array([-1]), "sixteen": np.array([16]), "lead2": np.array([0, 1]),
         "sixteen32": np.array([16], np.int32)},
        opset=opset)


@pytest.mark.parametrize("spelling", sorted(PLANNED))
def test_reshape_by_the_batch_size(spelling):
    """Shape inference alone cannot size the Reshape-13 output; the planning graph's target becomes a
    constant, the compiled model keeps the source's Reshape, and the relevance is exact: x · W[class].
    A multiple of the batch size (ReduceProd) and a Max of it with 1 are pinned too: as the one
    symbolic size of a target, they become -1."""
    source = reshaped_classifier(spelling)
    planned = {n.outputs[0].name: n for n in canonicalize(source, "m").nodes}
    assert list(planned["flat"].inputs[1].values) == PLANNED[spelling]
    if spelling == "reduce_prod":
        assert list(planned["x3"].inputs[1].values) == [-1, 4]  # [N·4, -1]
    compiled = compile_model(source)
    assert [n for n in compiled.graph.node if n.output[0] == "flat"][0].input[1] == "target"
    x = np.random.default_rng(1).normal(size=(2, 4, 2, 2)).astype(np.float32)
    out = run(compiled, {"x": x})
    weights = onnx.numpy_helper.to_array(next(t for t in source.graph.initializer if t.name == "w"))
    expected = x * weights[out[CLASS_OUTPUT]].reshape(x.shape)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected, rtol=1e-5, atol=1e-6)


def test_shape_ranges_are_folded_as_the_sizes_they_keep():
    """Shape with ``start``/``end`` (opset 15) on a fully static input: x[:, :, :, :W // 2] with W read
    from Shape(x, start=3). graphsurgeon's shape folding ignores the range (it folded W to the batch
    size, and the compiled model failed in ONNX Runtime); relevance equals torch input × gradient."""
    import torch

    rng = np.random.default_rng(0)
    conv, dense = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    source = make_model(
        [helper.make_node("Shape", ["x"], ["widths"], start=3),
         helper.make_node("Gather", ["widths", "zero"], ["width"], axis=0),
         helper.make_node("Div", ["width", "two"], ["half"]),
         helper.make_node("Unsqueeze", ["half", "axes0"], ["end"]),
         helper.make_node("Slice", ["x", "zero1", "end", "axes3"], ["left"]),
         helper.make_node("Conv", ["left", "conv"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("Gemm", ["pooled", "dense"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 5])],
        {"zero": np.array(0), "two": np.array(2), "axes0": np.array([0]), "zero1": np.array([0]),
         "axes3": np.array([3]), "conv": conv, "dense": dense}, opset=17)
    planned = {n.outputs[0].name: n for n in canonicalize(source, "m").nodes}
    assert list(planned["left"].inputs[2].values) == [3]
    x = rng.normal(size=(2, 3, 8, 6)).astype(np.float32)
    out = run(compile_model(source), {"x": x})

    image = torch.from_numpy(x).requires_grad_(True)
    logits = torch.nn.functional.conv2d(image[..., :3], torch.from_numpy(conv), padding=1).relu().mean((2, 3))
    logits = logits @ torch.from_numpy(dense).T
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    np.testing.assert_array_equal(out[CLASS_OUTPUT], logits.argmax(1).numpy())
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], (image.grad * image).detach().numpy(), rtol=1e-5, atol=1e-6)

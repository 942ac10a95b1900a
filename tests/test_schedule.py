"""The order ONNX Runtime runs a compiled model in: each mask is computed while the forward pass runs and
kept as booleans, and only turned into floats when the relevance pass reaches it (``Emitter.masked``);
and tools/bounds.py's deliberately wrong copies, which must drop that scheduling with the masks."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch.nn as nn

import rlrp_onnx
from rlrp_onnx.contract import TARGET_INPUT
from exporting import export_onnx
from family_models import InvertedResidual, conv_bn
from reference_models import init_deterministic

LEVELS = {
    "all (blocked NCHWc layout)": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "basic (plain layout, as on CUDA)": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def inverted_residuals() -> nn.Module:
    """ReLU6 (Clip) masks and identity shortcuts, MobileNetV2-style."""
    model = nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 16, 48),
                          InvertedResidual(16, 24, 48, stride=2), InvertedResidual(24, 24, 72),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    return init_deterministic(model, 0).eval()


def _execution_order(path, tmp_path, level) -> list[onnx.NodeProto]:
    """The nodes as ONNX Runtime orders them after optimising: it saves the optimised model in the
    order its default execution plan runs the nodes."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


@pytest.fixture(params=["vgg16_like", "inverted_residuals"])
def source(request, exported_model, tmp_path):
    if request.param == "vgg16_like":
        return exported_model("vgg16_like").path
    path = tmp_path / "inverted_residuals.onnx"
    example = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return export_onnx(inverted_residuals(), example, path)


@pytest.mark.parametrize("level", LEVELS.values(), ids=LEVELS.keys())
def test_masks_are_computed_during_the_forward_pass(source, tmp_path, level):
    compiled_path = tmp_path / "compiled.onnx"
    rlrp_onnx.save_model(rlrp_onnx.compile_model(source), compiled_path)
    new = {n.name for n in onnx.load(compiled_path).graph.node} - {n.name for n in onnx.load(source).graph.node}
    order = _execution_order(compiled_path, tmp_path, level)
    position = {n.name: i for i, n in enumerate(order)}
    produced_by = {o: n for n in order for o in n.output}
    seed = next(i for i, n in enumerate(order) if n.op_type == "ArgMax")  # the logits are complete here
    casts = [n for n in order if n.name in new and n.op_type == "Cast"
             and produced_by[n.input[0]].op_type in ("Greater", "Less", "And")]
    masks = [produced_by[c.input[0]] for c in casts]
    assert len(masks) >= 5
    assert [m.name for m in masks if position[m.name] > seed] == []
    assert [c.name for c in casts if position[c.name] < seed] == []


def test_bound_variants_drop_the_masks_and_the_routing(exported_model):
    """tools/bounds.py's deliberately wrong copies lose every comparison (the masks and the Reshapes
    scheduling them) and every scatter, and still run."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bounds

    source = exported_model("vgg16_like")
    compiled = rlrp_onnx.compile_model(source.path)
    x = source.example(2)
    for variant, rewrites in bounds.VARIANTS.items():
        model = compiled
        for rewrite in rewrites:
            model = bounds._rewritten(model, rewrite)
        ops = {n.op_type for n in model.graph.node if bounds.bench.is_relevance(n.name)}
        masks = [n for n in model.graph.node if n.op_type in bounds.COMPARISONS and TARGET_INPUT not in n.input]
        if "masks" in variant or variant == "both":
            assert masks == [], variant
        if "routing" in variant or variant == "both":
            assert "ScatterElements" not in ops, variant
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert session.run(["rlrp_relevance"], {"image": x})[0].shape == x.shape

"""How ONNX Runtime runs a compiled model's relevance pass, read off the model it saves after optimising
(in the order of its execution plan):

* Relu/Clip masks on N,C,H,W tensors are steps (``Emitter.step``: a depthwise Conv and a HardSigmoid):
  the CPU provider keeps them, the relevance they multiply and the residual sums in its blocked
  (NCHWc) layout, with no layout conversion between them; they are computed when the relevance pass
  reaches them, not during the forward pass (where they would hold a float mask until then);
* other masks (dense layers, LeakyRelu) are comparisons computed during the forward pass and kept as
  booleans, turned into floats only when the relevance pass reaches them (``Emitter.masked``);
* tools/bounds.py's deliberately wrong copies drop the masks and the routing."""

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
BLOCKED = "com.microsoft.nchwc"


def inverted_residuals() -> nn.Module:
    """ReLU6 (Clip) masks, strided depthwise Convs and identity shortcuts, MobileNetV2-style."""
    model = nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 16, 48),
                          InvertedResidual(16, 24, 48, stride=2), InvertedResidual(24, 24, 72),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    return init_deterministic(model, 0).eval()


def leaky_cnn() -> nn.Module:
    """LeakyRelu masks on N,C,H,W tensors (comparisons)."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(16, 16, 3, padding=1),
                          nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return init_deterministic(model, 0).eval()


def _execution_order(path, tmp_path, level) -> list[onnx.NodeProto]:
    """The nodes as ONNX Runtime orders them after optimising: it saves the optimised model in the
    order its default execution plan runs the nodes."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


@pytest.fixture
def compiled(exported_model, tmp_path):
    """The compiled file of a named test network: ``(source path, compiled path)``."""
    def get(name, masks="steps"):
        if name in ("vgg16_like", "resnet18_like"):
            path = exported_model(name).path
        else:
            path = tmp_path / f"{name}.onnx"
            example = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
            export_onnx({"inverted_residuals": inverted_residuals, "leaky_cnn": leaky_cnn}[name](), example, path)
        compiled_path = tmp_path / f"{name}.{masks}.rlrp.onnx"
        rlrp_onnx.save_model(rlrp_onnx.compile_model(path, masks=masks), compiled_path)
        return path, compiled_path
    return get


def _new_nodes(source, compiled_path) -> set[str]:
    return {n.name for n in onnx.load(compiled_path).graph.node} - {n.name for n in onnx.load(source).graph.node}


def _step_chains(nodes) -> list[list[onnx.NodeProto]]:
    """Each step's nodes in the compiled file: its HardSigmoid, then what it reads — a Conv
    (``Emitter.step``), or an Add and the Conv it adds the lower step to (``Emitter.band``)."""
    produced_by = {o: n for n in nodes for o in n.output}
    chains = []
    for node in (n for n in nodes if n.op_type == "HardSigmoid"):
        chain = [node, produced_by[node.input[0]]]
        if chain[-1].op_type == "Add":
            chain += [produced_by[i] for i in chain[-1].input if produced_by[i].op_type == "Conv"]
        chains.append(chain)
    return chains


def _steps(order, compiled_path, routing: bool = True) -> list[onnx.NodeProto]:
    """The kernels that compute the steps, in ONNX Runtime's order: a blocked Conv with the HardSigmoid
    (and a band's Add) fused into it, or the HardSigmoid node; without ``routing``, only the masks'
    steps, not those of the max-pool routing by cells (whose Conv reads a difference, an ``Add``,
    rather than a forward tensor)."""
    nodes = onnx.load(compiled_path).graph.node
    produced_by = {o: n for n in nodes for o in n.output}
    chains = [c for c in _step_chains(nodes)
              if routing or getattr(produced_by.get(c[-1].input[0]), "op_type", "") != "Add"]
    names = {n.name for chain in chains for n in chain}
    fused = [n for n in order if any(a.name == "activation" and a.s == b"HardSigmoid" for a in n.attribute)]
    return [n for n in order if (n in fused or n.op_type == "HardSigmoid") and n.name.removesuffix("_nchwc") in names]


@pytest.mark.parametrize("name", ["inverted_residuals", "resnet18_like", "vgg16_like"])
def test_masks_and_sums_stay_in_the_blocked_layout(compiled, name, tmp_path):
    source, compiled_path = compiled(name)
    new = _new_nodes(source, compiled_path)
    order = _execution_order(compiled_path, tmp_path, LEVELS["all (blocked NCHWc layout)"])
    produced_by = {o: n for n in order for o in n.output}
    steps = _steps(order, compiled_path)
    assert len(steps) >= 5 and all(n.domain == BLOCKED for n in steps)
    factors = {n.output[0] for n in steps}
    factors |= {n.output[0] for n in order if n.op_type == "Mul" and set(n.input) <= factors}  # (both bounds)
    products = [n for n in order if n.op_type == "Mul" and factors & set(n.input) and not set(n.input) <= factors]
    sums = [n for n in order if n.op_type == "Sum" and n.name in new]
    assert len(products) >= 5
    converted = [n.name for n in products + sums
                 if any(getattr(produced_by.get(i), "op_type", "") == "ReorderOutput" for i in n.input)]
    assert converted == []


@pytest.mark.parametrize("name, level", [("vgg16_like", "all (blocked NCHWc layout)"),
                                         ("vgg16_like", "basic (plain layout, as on CUDA)"),
                                         ("inverted_residuals", "basic (plain layout, as on CUDA)")])
def test_steps_are_computed_when_the_relevance_pass_needs_them(compiled, name, tmp_path, level):
    """Steps, and ReLU6 bands (``Emitter.band``: all of inverted_residuals' masks) in the plain layout;
    in the blocked one, ONNX Runtime computes some bands during the forward pass (not asserted)."""
    _, compiled_path = compiled(name)
    order = _execution_order(compiled_path, tmp_path, LEVELS[level])
    seed = next(i for i, n in enumerate(order) if n.op_type == "ArgMax")  # the logits are complete here
    steps = _steps(order, compiled_path, routing=False)
    assert len(steps) >= 5
    assert [n.name for n in steps if order.index(n) < seed] == []


@pytest.mark.parametrize("level", LEVELS.values(), ids=LEVELS.keys())
@pytest.mark.parametrize("name, masks", [("vgg16_like", "steps"), ("leaky_cnn", "steps"),
                                         ("inverted_residuals", "comparisons")])
def test_comparison_masks_are_computed_during_the_forward_pass(compiled, name, masks, tmp_path, level):
    source, compiled_path = compiled(name, masks)
    new = _new_nodes(source, compiled_path)
    order = _execution_order(compiled_path, tmp_path, level)
    position = {n.name: i for i, n in enumerate(order)}
    produced_by = {o: n for n in order for o in n.output}
    seed = next(i for i, n in enumerate(order) if n.op_type == "ArgMax")
    casts = [n for n in order if n.name in new and n.op_type == "Cast"
             and produced_by[n.input[0]].op_type in ("Greater", "Less", "And")]
    masks = [produced_by[c.input[0]] for c in casts]
    assert len(masks) >= 2
    assert [m.name for m in masks if position[m.name] > seed] == []
    assert [c.name for c in casts if position[c.name] < seed] == []


@pytest.mark.parametrize("name", ["inverted_residuals", "resnet18_like"])
def test_masks_option_comparisons(compiled, name):
    """``compile_model(masks="comparisons")``: no steps at all, the form recorded in the file, and the
    relevance of the default steps (up to the blocked layout's summation order)."""
    source, steps_path = compiled(name)
    _, comparisons_path = compiled(name, "comparisons")
    model = onnx.load(comparisons_path)
    assert {p.key: p.value for p in model.metadata_props}["rlrp.masks"] == "comparisons"
    assert not [n for n in model.graph.node if n.op_type == "HardSigmoid"]
    assert [n for n in model.graph.node if n.op_type in ("Greater", "Less")]
    sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (steps_path, comparisons_path)]
    image = sessions[0].get_inputs()[0]
    x = np.random.default_rng(1).standard_normal([2, *image.shape[1:]]).astype(np.float32)
    steps, comparisons = (s.run(["rlrp_relevance"], {image.name: x})[0] for s in sessions)
    assert np.abs(comparisons).max() > 0
    assert np.allclose(comparisons, steps, rtol=1e-5, atol=1e-6 * np.abs(steps).max())


def test_bound_variants_drop_the_masks_and_the_routing(exported_model):
    """tools/bounds.py's deliberately wrong copies lose every mask (steps, comparisons and the Reshapes
    scheduling them) and every scatter, and still run."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bounds

    source = exported_model("vgg16_like")
    compiled = rlrp_onnx.compile_model(source.path)
    assert {"Concat", "HardSigmoid"} <= {n.op_type for n in compiled.graph.node}  # something to drop
    x = source.example(2)
    for variant, rewrites in bounds.VARIANTS.items():
        model = compiled
        for rewrite in rewrites:
            model = bounds._rewritten(model, rewrite)
        ops = {n.op_type for n in model.graph.node if bounds.bench.is_relevance(n.name)}
        masks = [n for n in model.graph.node if n.op_type in bounds.COMPARISONS | {"HardSigmoid"}
                 and TARGET_INPUT not in n.input]
        if "masks" in variant or variant == "both":
            assert masks == [], variant
        if "routing" in variant or variant == "both":  # scatters, and tiling pools' Concat of cell shares
            assert not ops & {"ScatterElements", "Concat"}, variant
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert session.run(["rlrp_relevance"], {"image": x})[0].shape == x.shape


def test_bench_tells_mask_steps_and_layout_convs_from_adjoints(compiled):
    """tools/bench.py's profile breakdown counts the steps' Convs as masks and Emitter.blocked's Convs as
    layout, not as relevance adjoints."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bench

    _, compiled_path = compiled("inverted_residuals")
    model = onnx.load(compiled_path)
    roles = bench.conv_roles(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and bench.is_relevance(n.name)]
    steps = {n.name for chain in _step_chains(model.graph.node) for n in chain if n.op_type == "Conv"}
    assert {n.name for n in convs if roles.get(n.name) == bench.MASK_STEP} == steps
    layout = [n for n in convs if roles.get(n.name) == bench.LAYOUT_CONV]
    assert layout and all(n.name not in steps for n in layout)
    adjoints = [n for n in convs if n.name not in roles]
    assert len(adjoints) >= 8


def test_bench_pairs_each_adjoint_with_its_forward_layer(compiled):
    """tools/bench.py attributes the relevance pass's linear nodes to the forward layer whose weights they
    use: every forward Conv/Gemm gets at least one, and no mask step or layout Conv is attributed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bench

    _, compiled_path = compiled("inverted_residuals")
    model = onnx.load(compiled_path)
    pairs = bench.adjoint_layers(model)
    layers = {n.name for n in model.graph.node if n.op_type in bench.LINEAR_OPS and not bench.is_relevance(n.name)}
    assert len(layers) >= 8 and {layer for layer, _ in pairs.values()} == layers
    assert not set(pairs) & set(bench.conv_roles(model))
    kinds = {n.name: n.op_type for n in model.graph.node}
    assert {kinds[node] for node in pairs} <= bench.LINEAR_OPS


def test_bench_sums_each_layers_adjoint_kernels():
    """tools/bench.py's per-layer adjoint time: the kernels ORT names after the node (with a suffix, not
    another node's number), next to the layer's kernel found by the first name the profile has."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bench

    pairs = {"rlrp5": ("conv", ["conv", "fused conv", "y", "y_nchwc"]), "rlrp12": ("fc", ["fc", "fused fc"]),
             "rlrp7": ("gone", ["gone"])}
    per_node = {("y_nchwc", "Conv"): 2.0, ("rlrp5_nchwc", "Conv"): 3.0, ("rlrp51", "Conv"): 100.0,
                ("rlrp12/GemmTransposeFusion/", "Gemm"): 1.5, ("fused fc", "FusedGemm"): 1.0}
    assert sorted(bench.adjoints_by_layer(per_node, pairs)) == [("conv", 2.0, 3.0), ("fc", 1.0, 1.5)]


def test_bench_compares_the_forward_nodes_both_profiles_name():
    """tools/bench.py's forward-inside-over-alone ratio sums only the forward nodes present in both
    profiles: not the compiler's nodes, not ORT's layout conversions, not nodes only one model has."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bench

    source = {("conv1", "Conv"): 2.0, ("conv2", "Conv"): 4.0, ("ReorderOutput_token_1", "ReorderOutput"): 1.0,
              ("pool", "MaxPool"): 1.0}
    compiled = {("conv1", "Conv"): 3.0, ("conv2", "Conv"): 9.0, ("ReorderOutput_token_1", "ReorderOutput"): 5.0,
                ("rlrp7_nchwc", "Conv"): 50.0, ("fused pool", "MaxPool"): 1.0}
    inside = bench.forward_inside({"source": source, "compiled": compiled})
    assert inside["slowdown"] == 12.0 / 6.0
    assert [row[0] for row in inside["slowest"]] == ["conv2", "conv1"]


def test_compare_tool_compiles_with_another_revision(exported_model, tmp_path):
    """tools/compare.py's old compiler: the package of a git revision, imported from its own checkout,
    gives the same relevance as this tree's."""
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import compare

    if subprocess.run(["git", "-C", str(compare.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    source = exported_model("simple_cnn")
    checkout, old = tmp_path / "old", tmp_path / "old.onnx"
    try:
        compare.compile_at("HEAD", source.path, old, checkout)
    finally:
        subprocess.run(["git", "-C", str(compare.ROOT), "worktree", "remove", "--force", str(checkout)], check=False)
    x = source.example(2)
    relevance = [onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(["rlrp_relevance"],
                                                                                           {"image": x})[0]
                 for m in (str(old), rlrp_onnx.compile_model(source.path).SerializeToString())]
    assert np.allclose(relevance[0], relevance[1], rtol=1e-5, atol=1e-6 * np.abs(relevance[1]).max())

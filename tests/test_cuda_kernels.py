"""Every op the compiler emits has an ONNX Runtime CUDA kernel at the opset and types it is emitted with.

No GPU is needed: the check is static, against ONNX Runtime's published kernel table
(``docs/OperatorKernels.md`` of microsoft/onnxruntime, CUDAExecutionProvider, domain ai.onnx), kept as
data in ``tests/data/cuda_kernels.json`` (written by ``tools/extract_cuda_kernels.py``, which records
the commit it came from; the table there predates ONNX Runtime 1.32 and has no kernels past opset 24,
which only matters for models of opset 25 and later).

For each node the compiler added (node name not in the source model), with the compiled model's
opset and the element types ONNX shape inference gives its inputs and outputs, a CUDA kernel must
exist that ONNX Runtime would select (``KernelRegistry::VerifyKernelDef``):

* version: the node's schema ``since_version`` (``onnx.defs.get_schema(op, opset)``) equals the
  kernel's start version, or lies inside a closed range ``[start, end]`` (an open-ended ``N+``
  kernel only serves nodes whose schema version is exactly ``N``);
* types: every type constraint the kernel declares allows the type of the node's arguments bound to
  it: the formal parameters whose type string is that constraint name, or, for a fixed-type
  parameter, whose name it is (ONNX Runtime's kernel type-string resolution).

The published table merges, per version range, the types of all kernels registered for an op, so a
combination of types can pass the table and still have no kernel where ONNX Runtime registers one
kernel per combination. Of the ops the compiler emits only OneHot is registered that way; its
registered combinations are listed in ``REGISTERED_COMBINATIONS`` (from ONNX Runtime's
``onnxruntime/core/providers/cuda/tensor/onehot.cc``).

Besides a kernel, the CUDA EP's ``GetCapability`` sends some nodes to CPU by their attributes:
ConvTranspose with asymmetric ``pads`` or ``auto_pad`` SAME_*, ArgMax/ArgMin with
``select_last_index=1``, Cast to string (``cuda_execution_provider.cc``). That is checked separately
(``test_no_attribute_fallbacks_to_cpu``). Shape-computation subgraphs that ONNX Runtime deliberately
keeps on CPU (``GetCpuPreferredNodes``) are not a missing kernel and are not checked.

The source model's own nodes are not checked: they are the user's.

Models: the hand-built dense classifier (``onnx_builders``) and SimpleCNN (Conv, BatchNorm, ReLU,
LeakyReLU, Clip, MaxPool, AveragePool, Gemm; TorchScript with BatchNorm kept, opset 17, and dynamo
folded, opset 18) under R-LRP and every classical rule and composite; EfficientNet-Lite0 (residual
Add, Pad, depthwise Conv, global pooling) from both exporters (TorchScript folded, opset 17; dynamo with
BatchNorm and Pad kept, opset 18) under R-LRP and the composites epsilon_gamma_box and
epsilon_alpha2_beta1_flat (ε, γ, z^B, α2β1, flat). Together they give every (op, opset, types) that
all 14 methods give on all four small reference networks and EfficientNet-Lite0 from both exporters
with BatchNorm folded and kept (70 combinations; compared once, 2026-11-26); the family's ViT (attention
MatMuls, Softmax gates, LayerNorm, GELU) from TorchScript at opsets 17 and 13 and from dynamo, the same
ViT with Einsum attention and the family's GroupNorm, RMSNorm, ResNeXt, ShuffleNet, ConvNeXt, Swin,
fastai-head (ReduceMax) and cosine-head (L2 normalization) networks from both exporters, and
test_float16's network in float16 (both exporters, and behind float32 Casts; the Casts that widen what
the relevance pass reads), under every method. A small hand-built Conv/pool/Gemm classifier (with
DepthToSpace, SpaceToDepth, ReduceMax, LpNormalization, Mish) is also compiled at opsets 11-23, since the
compiler emits at the source model's opset (``test_emitted_ops_have_cuda_kernels_at_other_opsets``; from
opset 19 on the compiler avoids ops whose newest schema has no CUDA kernel: Pad, Identity, ConvTranspose,
MaxPool, Softplus).
Exports come from the session-scoped ``exported_model`` fixture, shared with test_oracle.
"""

from __future__ import annotations

import json
import pathlib
from collections import defaultdict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rlrp_onnx import compile_model
from rlrp_onnx.methods import BOUNDED, COMPOSITES, RULE_NAMES, Options

from onnx_builders import dense_classifier, make_model

TABLE_PATH = pathlib.Path(__file__).resolve().parent / "data" / "cuda_kernels.json"
ZBOX = Options(low=-3.0, high=3.0)  # zbox (and the epsilon_gamma_box composite) need input bounds
METHODS = [("rlrp", None)] + [(rule, None) for rule in RULE_NAMES] + [(None, name) for name in COMPOSITES]
# (name, exporter, fold_batchnorm) for the exported_model fixture
SMALL = [("simple_cnn", "torchscript", False), ("simple_cnn", "dynamo", True)]
EFFICIENTNET = [("efficientnet_lite0", "torchscript", True), ("efficientnet_lite0", "dynamo", False)]
EFFICIENTNET_METHODS = [("rlrp", None), (None, "epsilon_gamma_box"), (None, "epsilon_alpha2_beta1_flat")]

# ONNX Runtime registers its CUDA OneHot once per (indices T1, depth T2, values T3) combination
# (REGISTER_TYPED_ONE_HOT_OP in onnxruntime/core/providers/cuda/tensor/onehot.cc, main as of Feb 2026);
# the published table only shows the union of each constraint's types.
REGISTERED_COMBINATIONS = {
    "OneHot": [{"T1": f"tensor({i})", "T2": f"tensor({d})", "T3": f"tensor({v})"} for i, v, d in [
        ("int64", "int64", "int64"), ("int64", "float", "int64"), ("int32", "float", "int32"),
        ("int64", "float16", "int64"), ("int32", "float16", "int32")]],
}


def _method_id(method) -> str:
    rule, composite = method
    return composite or rule


def _compile(model, method) -> onnx.ModelProto:
    rule, composite = method
    bounded = (composite or rule) in BOUNDED
    return compile_model(model, rule=rule, composite=composite, options=ZBOX if bounded else None)


# ---- the kernel table ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_table() -> dict:
    table = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    assert table["source"]["provider"] == "CUDAExecutionProvider" and table["source"]["domain"] == "ai.onnx"
    return table


def test_table_is_the_published_cuda_section(cuda_table):
    """Sanity of the data file: its source is recorded, and well-known CUDA kernels are in it."""
    source = cuda_table["source"]
    assert source["repo"] == "microsoft/onnxruntime" and source["path"] == "docs/OperatorKernels.md"
    assert len(source["commit"]) == 40
    ops = cuda_table["ops"]
    assert len(ops) > 100
    conv = {(k["since_version"], k["until_version"]) for k in ops["Conv"]}
    assert (11, 21) in conv and (1, 10) in conv
    assert "tensor(float)" in ops["ConvTranspose"][0]["types"]["T"]
    assert "LinearClassifier" not in ops  # ai.onnx.ml rows are not CUDA kernels
    assert "FusedConv" not in ops  # nor are com.microsoft ones


# ---- what the compiler emits ---------------------------------------------------------------------

def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _type_string(elem_type: int) -> str:
    return f"tensor({onnx.TensorProto.DataType.Name(elem_type).lower()})"


def _element_types(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name → ONNX type string ("tensor(float)") after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = _type_string(value.type.tensor_type.elem_type)
    for init in graph.initializer:
        types[init.name] = _type_string(init.data_type)
    return types


def _formal(params, index: int):
    """The formal parameter an actual argument at ``index`` binds to (the last one may be variadic)."""
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return last
    return None


def emitted_signatures(source: onnx.ModelProto, compiled: onnx.ModelProto) -> dict[tuple, list[str]]:
    """Signature → names of the added nodes that have it. A signature is
    ``(op, model opset, schema since_version, args, attrs)`` with ``args`` the sorted set of
    ``(kind "in"/"out", formal parameter name, its type string, actual element type)`` and ``attrs``
    the attributes that decide CUDA-EP CPU fallbacks."""
    source_names = {node.name for node in source.graph.node}
    opset = _opset(compiled)
    types = _element_types(compiled)
    found: dict[tuple, list[str]] = defaultdict(list)
    for node in compiled.graph.node:
        if node.name in source_names:
            continue
        assert node.domain in ("", "ai.onnx"), f"{node.name}: {node.domain}.{node.op_type} is not a default-domain op"
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        args = []
        for kind, names, params in (("in", node.input, schema.inputs), ("out", node.output, schema.outputs)):
            for i, name in enumerate(names):
                if not name:
                    continue
                formal = _formal(params, i)
                assert formal is not None, f"{node.name} ({node.op_type}): {kind}put {i} has no formal parameter"
                args.append((kind, formal.name, formal.type_str, types.get(name, "?")))
        found[(node.op_type, opset, schema.since_version, tuple(sorted(set(args))),
               _fallback_attrs(node))].append(node.name)
    return found


def _fallback_attrs(node: onnx.NodeProto) -> tuple:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "ConvTranspose":
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        return (("auto_pad", auto_pad), ("pads", tuple(attrs.get("pads", ()))))
    if node.op_type in ("ArgMax", "ArgMin"):
        return (("select_last_index", attrs.get("select_last_index", 0)),)
    if node.op_type == "Cast":
        return (("to", attrs.get("to")),)
    return ()


# ---- the check -----------------------------------------------------------------------------------

def _kernel_serves(kernel: dict, since: int) -> bool:
    """ONNX Runtime's VerifyVersion: exact start, or inside a closed range."""
    start, end = kernel["since_version"], kernel["until_version"]
    return start == since or (end is not None and start <= since <= end)


def _bound(args, constraint: str):
    """The arguments a kernel type string binds: by constraint name, else by formal-parameter name."""
    return [a for a in args if a[2] == constraint] or [a for a in args if a[1] == constraint]


def _types_violated(constraints: dict, args) -> list[str]:
    """The kernel's type constraints the arguments violate (empty: the kernel matches)."""
    violated = []
    for constraint, allowed in constraints.items():
        allowed = [allowed] if isinstance(allowed, str) else allowed
        for kind, name, _, actual in _bound(args, constraint):
            if actual not in allowed:
                violated.append(f"{constraint}={actual} ({kind}put {name})")
    return violated


def kernel_problem(table: dict, signature: tuple) -> str | None:
    """Why ONNX Runtime has no CUDA kernel for a node with ``signature`` (None: it has one)."""
    op, opset, since, args, _ = signature
    if any(actual == "?" for *_, actual in args):
        return "element type unknown after shape inference"
    kernels = table["ops"].get(op)
    if not kernels:
        return "no CUDA kernel for this op"
    in_range = [k for k in kernels if _kernel_serves(k, since)]
    if not in_range:
        ranges = ", ".join(_range_text(k) for k in kernels)
        return f"no CUDA kernel for schema version {since} (CUDA kernels: {ranges})"
    reasons = [_types_violated(k["types"], args) for k in in_range]
    if all(reasons):
        return "types not supported: " + "; ".join(
            f"{_range_text(k)} {', '.join(r)} (allows {k['types']})" for k, r in zip(in_range, reasons))
    combinations = REGISTERED_COMBINATIONS.get(op)
    if combinations and all(_types_violated(c, args) for c in combinations):
        return f"type combination not registered (CUDA registers {combinations})"
    return None


def _range_text(kernel: dict) -> str:
    return f"[{kernel['since_version']}, {kernel['until_version'] or '∞'}]"


def fallback_problem(signature: tuple) -> str | None:
    """Why the CUDA EP's GetCapability would hand a node with ``signature`` to CPU by its attributes."""
    op, _, _, _, attrs = signature
    values = dict(attrs)
    if op == "ConvTranspose":
        auto_pad, pads = values["auto_pad"], values["pads"]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return f"ConvTranspose with auto_pad={auto_pad} (cuDNN: symmetric padding only)"
        if pads and pads[:len(pads) // 2] != pads[len(pads) // 2:]:
            return f"ConvTranspose with asymmetric pads {list(pads)} (cuDNN: symmetric padding only)"
    if op in ("ArgMax", "ArgMin") and values["select_last_index"]:
        return f"{op} with select_last_index=1"
    if op == "Cast" and values["to"] == onnx.TensorProto.STRING:
        return "Cast to string"
    return None


def describe(signature: tuple, with_attrs: bool = False) -> str:
    op, opset, since, args, attrs = signature
    arg_text = ", ".join(f"{kind} {name}:{actual}" for kind, name, _, actual in args)
    attr_text = "".join(f" {k}={v}" for k, v in attrs) if with_attrs else ""
    return f"{op} (opset {opset}, schema {since}){attr_text}: {arg_text}"


def _report(signatures: dict, problem) -> list[str]:
    """One entry per distinct (op, opset, types[, attributes]) with a problem, with where it occurs."""
    found: dict[str, list[str]] = defaultdict(list)
    for signature in sorted(signatures, key=repr):
        reason = problem(signature)
        if reason:
            text = describe(signature, with_attrs=problem is fallback_problem)
            found[f"{text}\n    {reason}"] += signatures[signature]
    return [f"{text}\n    e.g. {', '.join(where[:3])}" + (f" (+{len(where) - 3} more)" if len(where) > 3 else "")
            for text, where in found.items()]


# ---- the models ----------------------------------------------------------------------------------

def _family_exports(folder):
    """The family's ViT (attention MatMuls, Softmax gates, LayerNorm, GELU) from TorchScript at opsets 17
    and 13 (LayerNorm in arithmetic) and from dynamo, the same with Einsum attention, a LayerNorm written
    with the standard deviation from both exporters, and the family's GroupNorm, RMSNorm, ResNeXt,
    ShuffleNet, ConvNeXt (V1 and V2), Swin, fastai-head, cosine-head, maxout and padding-mode networks from
    both exporters, the GroupNorm network from dynamo at opset 21 (the GroupNormalization
    op) and the ViT with ``F.scaled_dot_product_attention`` at opset 23 (the Attention op): (label, path)."""
    from exporting import export_onnx
    from family_models import RMSNormLike, family_input, make_family
    from test_families import StdLayerNorm
    from test_rule_configs import export

    model, x = make_family("vit_like"), family_input("vit_like", 2)
    yield "vit_like-torchscript-opset13", export(model, x, folder / "vit13.onnx", opset=13)
    model, x = RMSNormLike(norm=StdLayerNorm).eval(), family_input("rmsnorm_like", 2)
    for exporter in ("torchscript", "dynamo"):
        yield f"std_layer_norm-{exporter}", export_onnx(model, x, folder / f"std-{exporter}.onnx", exporter, True)
    for name in ("vit_like", "vit_einsum_like", "groupnorm_like", "rmsnorm_like", "resnext_like", "shufflenet_like",
                 "fasternet_like", "convnext_like", "convnextv2_like", "swin_like", "fastai_like", "cosine_like",
                 "cosine_similarity_like", "maxout_like", "padding_modes_like"):
        model, x = make_family(name), family_input(name, 2)
        for exporter in ("torchscript", "dynamo"):
            yield f"{name}-{exporter}-fold", export_onnx(model, x, folder / f"{name}-{exporter}.onnx", exporter, True)
    model, x = make_family("groupnorm_like"), family_input("groupnorm_like", 2)  # the GroupNormalization op
    yield "groupnorm_like-dynamo-opset21", export_onnx(model, x, folder / "gn21.onnx", "dynamo", True, opset=21)
    model, x = make_family("vit_sdpa_like"), family_input("vit_sdpa_like", 2)  # the Attention op
    yield "vit_sdpa_like-dynamo-opset23", export_onnx(model, x, folder / "sdpa23.onnx", "dynamo", True, opset=23)


def _float16_exports(folder):
    """test_float16's HalfNet in float16 from both exporters and behind float32 Casts: (label, path)."""
    from test_float16 import HalfNet, example, export_half

    model, x = HalfNet(), example(2, seed=0)
    for exporter in ("torchscript", "dynamo"):
        yield f"halfnet-{exporter}-float16", export_half(model, x, folder / f"half-{exporter}.onnx", exporter)
    yield "halfnet-float32-io", export_half(model, x.astype(np.float32), folder / "half-io.onnx", "torchscript",
                                            float_interface=True)


@pytest.fixture(scope="module")
def emitted(exported_model, tmp_path_factory) -> dict[tuple, list[str]]:
    """Every signature of the added nodes over the models and methods above → "model/method" list."""
    jobs = [("dense_classifier", dense_classifier(), method) for method in METHODS]
    from test_attention_op import CASES, attention_model  # every form of the Attention op: masks, soft cap, GQA

    jobs += [(f"attention-{case}", attention_model(case)[0], method) for case in CASES for method in METHODS]
    for name, exporter, fold in SMALL:
        path = exported_model(name, exporter, fold).path
        jobs += [(f"{name}-{exporter}-{'fold' if fold else 'keep'}", path, method) for method in METHODS]
    for name, exporter, fold in EFFICIENTNET:
        path = exported_model(name, exporter, fold).path
        jobs += [(f"{name}-{exporter}-{'fold' if fold else 'keep'}", path, method) for method in EFFICIENTNET_METHODS]
    for label, path in _family_exports(tmp_path_factory.mktemp("families")):
        jobs += [(label, path, method) for method in METHODS]
    for label, path in _float16_exports(tmp_path_factory.mktemp("float16")):
        jobs += [(label, path, method) for method in METHODS]
    from test_integer_inputs import cast_model  # integer pixels, which the relevance pass reads through a Cast

    jobs += [(f"pixels-{TensorProto.DataType.Name(p).lower()}-{TensorProto.DataType.Name(b).lower()}",
              cast_model(p, b), method) for p in (TensorProto.UINT8, TensorProto.INT32)
             for b in (TensorProto.FLOAT, TensorProto.FLOAT16) for method in METHODS]
    sources: dict[str, onnx.ModelProto] = {}
    signatures: dict[tuple, list[str]] = defaultdict(list)
    for label, model, method in jobs:
        if label not in sources:
            sources[label] = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        compiled = _compile(sources[label], method)
        for signature in emitted_signatures(sources[label], compiled):
            signatures[signature].append(f"{label}/{_method_id(method)}")
    return signatures


def test_emitted_ops_have_cuda_kernels(cuda_table, emitted):
    """Every (op, opset, types) the compiler emits has a CUDA kernel in ONNX Runtime's table."""
    seen_methods = {where.split("/")[1] for places in emitted.values() for where in places}
    assert seen_methods == {_method_id(m) for m in METHODS}
    problems = _report(emitted, lambda signature: kernel_problem(cuda_table, signature))
    source = cuda_table["source"]
    assert not problems, (f"{len(problems)} emitted (op, opset, types) have no ONNX Runtime CUDA kernel "
                          f"(table: {source['repo']}@{source['commit'][:12]}):\n" + "\n".join(problems))


def test_no_attribute_fallbacks_to_cpu(emitted):
    """No emitted node is sent to CPU by the CUDA EP for its attributes (the Conv and AveragePool
    adjoints are ConvTranspose with symmetric pads, cut or padded to the input grid)."""
    problems = _report(emitted, fallback_problem)
    assert not problems, f"{len(problems)} emitted nodes the CUDA EP runs on CPU:\n" + "\n".join(problems)


# ---- other opsets --------------------------------------------------------------------------------

def conv_classifier(opset: int, dtype=np.float32) -> onnx.ModelProto:
    """x [N, 3, 8, 8] → Conv 3x3 pad 1 → Relu → DepthToSpace (CRD) → SpaceToDepth → DepthToSpace (DCR)
    → SpaceToDepth → Slice of 3 of 4 channels → MaxPool 3x3/1 pad 1 (overlapping windows: routed
    differently below opset 16, from 16 and from 22) → MaxPool 2x2/2 → divided by its ReduceMax over H, W
    plus 1 (its axes an input from opset 18; a held statistic) → AveragePool 2x2/2 plus (broadcast) that
    ReduceMax → LpNormalization (p = 1) → Mish (from opset 18) → Flatten → Gemm (the Slice's adjoint pads
    with zeros); in ``dtype``."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if opset >= 18:
        maximum, axes = helper.make_node("ReduceMax", ["p", "hw"], ["m"]), {"hw": np.array([2, 3])}
    else:
        maximum, axes = helper.make_node("ReduceMax", ["p"], ["m"], axes=[2, 3]), {}
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["all"]),
         helper.make_node("DepthToSpace", ["all"], ["spread"], blocksize=2, mode="CRD"),
         helper.make_node("SpaceToDepth", ["spread"], ["stacked"], blocksize=2),
         helper.make_node("DepthToSpace", ["stacked"], ["spread2"], blocksize=2, mode="DCR"),
         helper.make_node("SpaceToDepth", ["spread2"], ["stacked2"], blocksize=2),
         helper.make_node("Slice", ["stacked2", "starts", "ends", "axes"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["o"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("MaxPool", ["o"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         maximum, helper.make_node("Add", ["m", "one"], ["m1"]), helper.make_node("Div", ["p", "m1"], ["pn"]),
         helper.make_node("AveragePool", ["pn"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Add", ["a", "m"], ["s"]),
         helper.make_node("LpNormalization", ["s"], ["l"], axis=1, p=1),
         helper.make_node("Mish" if opset >= 18 else "Identity", ["l"], ["q"]),
         helper.make_node("Flatten", ["q"], ["f"]),
         helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", elem, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", elem, ["N", 5])],
        {"w": rng.normal(size=(4, 3, 3, 3)).astype(dtype), "b": rng.normal(size=4).astype(dtype),
         "w2": rng.normal(size=(5, 12)).astype(dtype), "b2": rng.normal(size=5).astype(dtype),
         "starts": np.array([0]), "ends": np.array([3]), "axes": np.array([1]), "one": np.ones(1, dtype), **axes},
        opset=opset)


@pytest.mark.parametrize("opset", range(11, 24))
def test_emitted_ops_have_cuda_kernels_at_other_opsets(cuda_table, opset):
    """The compiler emits at the source model's opset: a small Conv/pool/Gemm classifier at opsets 11-23,
    in float32 and in float16."""
    signatures: dict[tuple, list[str]] = defaultdict(list)
    for dtype in (np.float32, np.float16):
        source = conv_classifier(opset, dtype)
        for method in METHODS:
            for signature in emitted_signatures(source, _compile(source, method)):
                label = f"conv_classifier-opset{opset}-{np.dtype(dtype).name}"
                signatures[signature].append(f"{label}/{_method_id(method)}")
    problems = _report(signatures, lambda signature: kernel_problem(cuda_table, signature))
    assert not problems, f"{len(problems)} emitted (op, opset, types) have no CUDA kernel:\n" + "\n".join(problems)


# ---- the checker itself ---------------------------------------------------------------------------

def _signature(op, opset, types: dict, attrs=()):
    """A signature for ``op`` at ``opset`` with {formal parameter name: type} (inputs and outputs)."""
    schema = onnx.defs.get_schema(op, opset, "")
    args = tuple(sorted((kind, p.name, p.type_str, types[p.name])
                        for kind, params in (("in", schema.inputs), ("out", schema.outputs))
                        for p in params if p.name in types))
    return (op, opset, schema.since_version, args, tuple(attrs))


@pytest.mark.parametrize("op,opset,types,expected", [
    ("Mul", 17, {"A": "tensor(float)", "B": "tensor(float)", "C": "tensor(float)"}, None),
    ("Mul", 17, {"A": "tensor(string)", "B": "tensor(string)", "C": "tensor(string)"}, "types not supported"),
    ("Equal", 10, {"A": "tensor(float)", "B": "tensor(float)", "C": "tensor(bool)"}, "types not supported"),
    ("Equal", 17, {"A": "tensor(float)", "B": "tensor(float)", "C": "tensor(bool)"}, None),
    ("Reshape", 17, {"data": "tensor(float)", "shape": "tensor(int64)", "reshaped": "tensor(float)"}, None),
    ("OneHot", 17, {"indices": "tensor(int64)", "depth": "tensor(int64)", "values": "tensor(float)",
                    "output": "tensor(float)"}, None),
    ("OneHot", 17, {"indices": "tensor(int32)", "depth": "tensor(int64)", "values": "tensor(float)",
                    "output": "tensor(float)"}, "type combination not registered"),
    ("Sign", 17, {"input": "tensor(bool)", "output": "tensor(bool)"}, "types not supported"),
    ("Acos", 17, {"input": "tensor(float)", "output": "tensor(float)"}, "no CUDA kernel for this op"),
    ("LpPool", 18, {"X": "tensor(float)", "Y": "tensor(float)"}, "no CUDA kernel"),
])
def test_kernel_check(cuda_table, op, opset, types, expected):
    reason = kernel_problem(cuda_table, _signature(op, opset, types))
    assert (reason is None) if expected is None else (reason is not None and expected in reason), reason


def test_open_ended_kernel_serves_only_its_start_version():
    """As in ONNX Runtime: a "N+" kernel serves schema version N only, "[a, b]" all of a..b."""
    assert _kernel_serves({"since_version": 16, "until_version": None}, 16)
    assert not _kernel_serves({"since_version": 16, "until_version": None}, 20)
    assert _kernel_serves({"since_version": 13, "until_version": 17}, 16)


def test_fallback_check():
    conv_t = lambda pads, auto_pad="NOTSET": _signature(  # noqa: E731
        "ConvTranspose", 17, {"X": "tensor(float)", "W": "tensor(float)", "Y": "tensor(float)"},
        [("auto_pad", auto_pad), ("pads", pads)])
    assert fallback_problem(conv_t((1, 1, 1, 1))) is None
    assert fallback_problem(conv_t(())) is None
    assert "asymmetric" in fallback_problem(conv_t((1, 1, 0, 0)))
    assert "SAME_UPPER" in fallback_problem(conv_t((), "SAME_UPPER"))
    argmax = _signature("ArgMax", 17, {"data": "tensor(float)", "reduced": "tensor(int64)"}, [("select_last_index", 1)])
    assert fallback_problem(argmax)

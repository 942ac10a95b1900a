"""The pipeline: load → canonicalize → plan → build the relevance pass → graft onto the source → validate."""

from __future__ import annotations

import onnx

from . import contract
from .attach import attach
from .errors import RlrpError, first_line
from .graft import graft
from .loading import load_model
from .methods import RLRP, Method, Options, choose
from .passes import canonicalize, explained_inputs, explained_tensors
from .passes.batchnorm import fold_batchnorm
from .passes.float16 import float32_twin, uses_float16
from .passes.layer_bias import fold_layer_constants
from .passes.names import all_names
from .passes.static_shapes import runtime_inputs
from .plan import analyse, make_plan
from .runtime import cpu_session
from .weightless import export_weightless, weightless

def compile_model(model, *, rule: str = RLRP, composite: str | None = None, options: Options | None = None,
                  output_name: str | None = None, input_shapes: dict[str, list[int]] | None = None,
                  expose: str | list[str] = (), label: str | None = None,
                  masks: str = "steps", adjoints: str = "conv", target_input: str = "optional",
                  in_place: bool = False) -> onnx.ModelProto:
    """Compile an ONNX classifier (path or ModelProto) into an explainer model (contract version 1).

    ``rule`` is "rlrp" (default) or a classical LRP rule (``rlrp_onnx.methods.RULE_NAMES``), and
    ``composite`` a Zennit-style preset choosing the rule per layer; ``options`` holds their
    parameters. ``output_name`` picks the explained output when several could be class scores;
    ``input_shapes`` pins the sizes of inputs whose spatial dims are dynamic, e.g.
    ``{"image": [1, 3, 224, 224]}``. ``expose`` lists inner tensors (or "all": every layer output on
    the relevance path) whose relevance becomes an extra output ``rlrp_relevance/<tensor name>``.
    ``label`` names a ModelProto in messages (a path names itself). ``masks`` chooses how Relu and Clip
    masks on N,C,H,W tensors are computed: "steps" (default; when the relevance pass needs them, in
    ONNX Runtime's blocked CPU layout, the faster form there) or "comparisons" (during the forward
    pass, kept as booleans: less working memory). ``adjoints`` "conv" (default) computes the relevance
    pass's convolutions as Conv/ConvTranspose; "winograd" computes its large stride-1 3x3 ones (from 256
    channels on grids of 28x28, 512 on 14x14: VGG's) by Winograd's F(4x4, 3x3) in MatMuls, faster on
    ONNX Runtime's CPU provider, equal up to float32 rounding (not for CUDA, whose cuDNN does this
    itself). ``target_input`` "optional" (default, the contract's
    form) gives ``rlrp_target`` the default -1 (arg-max); "required" declares it without one, for runtimes
    that do not let a caller feed an input that has a default (onnxruntime-node ignores such a feed):
    the caller then always feeds it, -1 for arg-max. ``in_place`` builds the explainer in the ModelProto
    given instead of a copy, sparing a copy of its weights: that model becomes the explainer (and is left
    half-changed if compiling fails). A model read from a path is always extended in place.
    """
    source, loaded = load_model(model)
    label = label or loaded
    forms = {"masks": masks, "adjoints": adjoints}
    for keyword, value in forms.items():
        choices = contract.FORMS[keyword][1]
        if value not in choices:
            raise RlrpError(f"{label}: {keyword} must be one of {', '.join(choices)}, got {value!r}")
    if target_input not in contract.TARGET_FORMS:
        raise RlrpError(f"{label}: target_input must be one of {', '.join(contract.TARGET_FORMS)}, "
                        f"got {target_input!r}")
    check_not_compiled({p.key for p in source.metadata_props}, label)
    _check_free_names(source, label)
    plan, method = plan_model(source, label, choose(rule, composite, options), output_name, input_shapes)
    plan.context.emit.reserve(all_names(source.graph))
    plan.context.emit.step_masks = masks == "steps"
    plan.context.emit.winograd = adjoints == "winograd"
    graph = plan.context.graph
    forward = {id(node) for node in graph.nodes}
    new_outputs = attach(plan, method.relative, _exposed(plan, expose, label, source))
    new_nodes = {node.name for node in graph.nodes if id(node) not in forward}
    graph.outputs.extend(new_outputs)
    weights = {t.name for t in source.graph.initializer}  # graft takes these from the source
    built, _ = export_weightless(graph, lambda name: name in weights)
    light_source = weightless(source)  # before graft, which may extend the source itself
    compiled = graft(source, built, new_nodes, [contract.TARGET_INPUT], [t.name for t in new_outputs], label,
                     in_place=in_place or not isinstance(model, onnx.ModelProto))
    if target_input == "optional":
        _set_target_default(compiled)
    _declare_planned_sizes(compiled, plan.inputs)
    _set_metadata(compiled, {
        **method.metadata(),
        contract.META_VERSION: contract.VERSION,
        contract.META_EXPLAINED_OUTPUT: plan.explained_output.name,
        contract.META_IMAGE_INPUTS: ",".join(t.name for t in plan.inputs),
        **{contract.FORMS[keyword][0]: value for keyword, value in forms.items()},
    })
    return _validated(compiled, label, light_source)


def check_not_compiled(metadata_keys, label: str, action: str = "compile") -> None:
    """Refuse a model this compiler wrote, by its metadata keys (to ``action``: compile, inspect, ...)."""
    if contract.META_VERSION in metadata_keys:
        raise RlrpError(f"{label}: already compiled by rlrp-onnx ({contract.META_VERSION} in its metadata); "
                        f"{action} the source model")


def _check_free_names(source: onnx.ModelProto, label: str) -> None:
    """Refuse a model whose tensors already use the contract's names."""
    graph = source.graph
    names = {t.name for t in [*graph.input, *graph.output, *graph.initializer]}
    names |= {o for n in graph.node for o in n.output}
    taken = sorted(n for n in names if n in contract.NAMES or n.startswith(contract.RELEVANCE_OUTPUT))
    if taken:
        raise RlrpError(f"{label}: the model already has tensors named {', '.join(taken)}, which the compiled "
                        "model's contract needs; rename them")


def _declare_planned_sizes(compiled: onnx.ModelProto, inputs) -> None:
    """Declare on the image inputs the sizes the relevance pass was built for: a size left dynamic in the
    source and pinned by ``input_shapes`` is fixed in the compiled model, whose relevance would be
    wrong at another size, so that ONNX Runtime refuses other sizes (the batch stays as declared)."""
    planned = {t.name: t.shape for t in inputs}
    for value in compiled.graph.input:
        for dim, size in zip(list(value.type.tensor_type.shape.dim)[1:], planned.get(value.name, [])[1:]):
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = int(size)


def _exposed(plan, expose, label: str, source: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, tensor) for each inner tensor whose relevance is exposed (one name, a list, or "all"), each
    once, checked against the relevance path. The output of a float Cast that planning dropped
    (passes/identities.py) is exposed as the tensor it copies, under its own name."""
    on_path = [t.name for n in plan.nodes for t in n.outputs if t.name in plan.context.data]
    copied = {n.output[0]: n.input[0] for n in source.graph.node if n.op_type == "Cast"
              and next((a.i for a in n.attribute if a.name == "to"), None) in FLOATS and n.output[0] not in on_path}

    def planned(name):
        for _ in range(len(copied) + 1):
            if name in on_path or name not in copied:
                break
            name = copied[name]
        return name

    if expose == "all":  # each copy after what it copies
        names = [name for name in on_path if name != plan.logits.name]
        return [(name, planned(name)) for tensor in names for name in [tensor, *copied]
                if name == tensor or planned(name) == tensor]
    expose = [expose] if isinstance(expose, str) else expose
    if not isinstance(expose, (list, tuple)) or not all(isinstance(name, str) for name in expose):
        raise RlrpError(f"{label}: expose must be a tensor name, a list of them or \"all\"; got {expose!r}")
    unknown = [name for name in expose if planned(name) not in on_path]
    if unknown:
        raise RlrpError(f"{label}: cannot expose relevance at {unknown}: not tensors on the relevance path")
    return [(name, planned(name)) for name in dict.fromkeys(expose)]


OTHER_FLOATS = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def _input_types(source: onnx.ModelProto) -> str:
    """The inputs and their types for an error message, with advice when one is another float type."""
    inputs = runtime_inputs(source)
    types = [i.type.tensor_type.elem_type for i in inputs]
    listed = ", ".join(f"{i.name} {onnx.TensorProto.DataType.Name(t).lower()}" for i, t in zip(inputs, types))
    advice = ("; only float32 and float16 models are supported: convert the model to float32"
              if OTHER_FLOATS & set(types) else "")
    return f" (inputs: {listed}){advice}"


def plan_model(source: onnx.ModelProto, label: str, method: Method, output_name: str | None = None,
               input_shapes: dict[str, list[int]] | None = None, check: bool = True):
    """Canonicalize ``source`` and plan its relevance pass under ``method``: ``(plan, method)``. A
    float16 model is planned as its float32 twin: the relevance pass is float32 whatever the source.

    With ``check=False`` uncovered nodes are left for the caller to report (``inspect``)."""
    explained = explained_inputs(source)
    if not explained:
        raise RlrpError(f"{label}: the model has no float32, float16 or integer input to explain"
                        f"{_input_types(source)}")
    graph = canonicalize(float32_twin(source) if uses_float16(source) else source, label, input_shapes)
    if not method.relative:
        fold_batchnorm(fold_layer_constants(graph))
    inputs = explained_tensors(graph, explained, label)
    planner = make_plan if check else analyse
    return planner(graph, label, inputs, method, output_name), method


def _set_target_default(compiled: onnx.ModelProto) -> None:
    """Give ``rlrp_target`` the default -1 (arg-max), so feeding it is optional: one value, broadcast
    over a dynamic batch, or one per sample of a fixed batch (the input's declared shape)."""
    declared = next(t for t in compiled.graph.input if t.name == contract.TARGET_INPUT)
    batch = declared.type.tensor_type.shape.dim[0].dim_value or 1
    compiled.graph.initializer.append(
        onnx.helper.make_tensor(contract.TARGET_INPUT, onnx.TensorProto.INT64, [batch], [-1] * batch))


def _set_metadata(compiled: onnx.ModelProto, values: dict[str, str]) -> None:
    props = {p.key: p for p in compiled.metadata_props}
    for key, value in values.items():
        if key in props:
            props[key].value = value
        else:
            compiled.metadata_props.add(key=key, value=value)


def _validated(compiled: onnx.ModelProto, label: str, light_source: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference and the full ONNX checker (of the graph: the weights come from the checked source or
    from numpy). A failure here is a compiler bug, reported as such, unless the source (``light_source``,
    its weightless copy) fails them too, or ONNX Runtime refuses to load it (older onnx versions miss
    some inconsistencies that its loader finds)."""
    problem = _check_problem(weightless(compiled))
    if problem is None:
        return compiled
    strict, unloadable = _check_problem(light_source), _load_problem(light_source)
    if unloadable is not None:
        raise RlrpError(f"{label}: the model itself is invalid ({unloadable}): ONNX Runtime's loader refuses it; "
                        "check how it was exported")
    if strict is not None:
        raise RlrpError(f"{label}: ONNX's strict shape inference refuses the model itself ({strict}), though ONNX "
                        "Runtime loads it, so the compiled model cannot pass that check either; re-export the model "
                        "(another exporter or opset)")
    raise RlrpError(f"{label}: internal error, the compiled model is invalid ({problem})")


def _load_problem(model: onnx.ModelProto) -> str | None:
    """Why ONNX Runtime cannot load ``model`` (weightless: its large weights are inputs), or None."""
    try:
        cpu_session(model)
    except Exception as error:  # ONNX Runtime raises its own pybind exception types
        return first_line(error)
    return None


def _check_problem(model: onnx.ModelProto) -> str | None:
    """What strict shape inference or the full ONNX checker finds wrong with ``model``, or None."""
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        return first_line(error)
    return None

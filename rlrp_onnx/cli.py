"""The command line: compile, inspect, explain, conservation, demo."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
from collections import Counter
from pathlib import Path

from .contract import TARGET_FORMS
from .errors import RlrpError, first_line

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
DEMO_MODEL = REPO_MODELS / "efficientnet_lite0.onnx"
DEMO_LABELS = REPO_MODELS / "imagenet_classes.txt"
DEMO_IMAGES = REPO_MODELS / "images"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}  # what a folder is searched for
IMAGE_KINDS = "PNG, JPEG, BMP, GIF, TIFF or WebP"


def _ints(text: str) -> list[int]:
    """Integers separated by commas or x (``1,3,224,224``, ``224x224``); an empty field is an error."""
    try:
        return [int(v) for v in text.replace("x", ",").split(",")]  # int("") fails too
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _square_or_pair(size: list[int] | None) -> tuple[int, ...] | None:
    """``--size``: one number is a square, two are H,W (more are refused when preprocessing is set up)."""
    return None if size is None else tuple(size * 2 if len(size) == 1 else size)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _input_shapes(values: list[str] | None) -> dict | None:
    """``--input-shape NAME=1,3,224,224`` (or just the dims, for the single float input)."""
    if not values:
        return None
    shapes = {}
    for value in values:
        name, _, dims = value.rpartition("=")
        try:
            shape = _ints(dims)
        except argparse.ArgumentTypeError:
            shape = []
        if not shape or min(shape) < 1:
            raise RlrpError(f"--input-shape takes [NAME=]N,C,H,W in whole numbers >= 1 (N only fills the place: "
                            f"the batch stays as the model declares it), got {value!r}")
        shapes[name or ""] = shape
    return shapes


def _method_args(args) -> dict:
    """``compile_model`` keywords for the rule options (unset: the rules' defaults; an option the chosen
    rules do not take is refused by ``methods.choose``); RlrpError for --rule with --composite."""
    from .methods import PARAMETERS, Options

    if args.rule and args.composite:
        raise RlrpError("give either --rule or --composite, not both")
    given = {name: getattr(args, name) for name in PARAMETERS if getattr(args, name) is not None}
    given.update({name: _bound(given[name]) for name in ("low", "high") if name in given})
    return {"rule": args.rule, "composite": args.composite, "options": Options(**given)}


def _form_args(args) -> dict:
    """``compile_model``'s keywords for the form of the compiled graph (``contract.FORMS``)."""
    from .contract import FORMS

    return {keyword: getattr(args, keyword) for keyword in FORMS}


def _bound(values):
    return None if values is None else (values[0] if len(values) == 1 else list(values))


def cmd_compile(args) -> None:
    from .compiler import compile_model
    from .loading import save_model

    if args.expose and "all" in args.expose and len(args.expose) > 1:
        raise RlrpError("--expose all stands alone (it exposes every tensor on the relevance path)")
    expose = "all" if args.expose == ["all"] else (args.expose or ())
    model = compile_model(args.model, output_name=args.output,
                          input_shapes=_resolve_shapes(args.model, args.input_shape), expose=expose,
                          target_input=args.target_input, **_method_args(args), **_form_args(args))
    save_model(model, args.out, source=args.model)
    print(f"wrote {args.out}")


def _resolve_shapes(model, values: list[str] | None) -> dict | None:
    """``--input-shape`` values as ``input_shapes``, an unnamed one attached to the model's single input
    to explain."""
    shapes = _input_shapes(values)
    if shapes and "" in shapes:
        from .loading import load_model
        from .passes import explained_inputs

        proto, label = load_model(model)
        names = [i.name for i in explained_inputs(proto)]
        if len(names) != 1:
            raise RlrpError(f"{label}: several inputs to explain ({', '.join(names)}); use --input-shape NAME=dims")
        shapes[names[0]] = shapes.pop("")
    return shapes


def cmd_inspect(args) -> None:
    from .compiler import check_not_compiled, plan_model
    from .loading import load_model
    from .methods import BOUNDED, choose
    from .passes import opset_version
    from .plan import gap

    proto, label = load_model(args.model)
    check_not_compiled({p.key for p in proto.metadata_props}, label, "inspect")
    method_args = _method_args(args)
    # without --low/--high, a zbox method is still inspected: this is where its bounds' tensor is named
    unbounded = (args.composite or args.rule) in BOUNDED and args.low is None and args.high is None
    if unbounded:
        method_args["options"] = dataclasses.replace(method_args["options"], low=0.0, high=0.0)
    method = choose(**method_args)
    ops = Counter(n.op_type for n in proto.graph.node)
    print(f"{label}: opset {opset_version(proto)}, {len(proto.graph.node)} nodes")
    for value in proto.graph.input:
        print(f"  input  {value.name}: {_describe(value)}")
    for value in proto.graph.output:
        print(f"  output {value.name}: {_describe(value)}")
    print("ops in the file: " + ", ".join(f"{op} ×{n}" for op, n in sorted(ops.items())))
    plan, _ = plan_model(proto, label, method, args.output, _resolve_shapes(args.model, args.input_shape),
                         check=False)
    method.assign(plan.nodes, plan.context, label)
    gaps = [(node, gap(plan.context, node)) for node in plan.nodes]
    covered = sum(1 for _, reason in gaps if not reason)
    print(f"explained output: {plan.explained_output.name} (logits: {plan.logits.name})")
    print(f"relevance path after folding: {len(plan.nodes)} nodes, {covered} covered "
          f"({100.0 * covered / max(len(plan.nodes), 1):.1f}%)")
    by_op = Counter(node.op for node in plan.nodes)
    for op, count in sorted(by_op.items()):
        reasons = {reason for node, reason in gaps if node.op == op and reason}
        print(f"  {op:<20} ×{count:<4} " + ("covered" if not reasons else "NOT covered: " + "; ".join(reasons)))
    for node, reason in gaps:
        if reason:
            print(f"  uncovered node {node.name} ({node.op}): {reason}")
    if method.layer_rules:
        print(f"rules per layer ({method.name}" + ("; zbox bounds to give with --low and --high" if unbounded else "")
              + "):")
        for node in plan.nodes:
            if node.name in method.layer_rules:
                rule = method.layer_rules[node.name]
                bounded = unbounded and "low" in rule.params
                print(f"  {node.name} ({node.op}): " + (f"{rule.name}(low=?, high=?)" if bounded else rule.describe()))
                note = _bounds_note(plan.context, node) if "low" in rule.params else None
                if note:
                    print(note)


def _bounds_note(ctx, node) -> str | None:
    """For a zbox layer with no layer upstream: which values its bounds bound (its data input, and the
    ops computing that from the model's input, such as a normalization inside the model)."""
    (x,) = [t for t in node.inputs[:2] if ctx.is_data(t)]
    ops, producer = [], ctx.producer(x)
    while producer is not None:
        if ctx.is_layer(producer):
            return None
        ops.append(f"{producer.name} ({producer.op})")
        data = [t for t in producer.inputs if ctx.is_data(t)]
        producer = ctx.producer(data[0]) if data else None
    source = "the model's input" if not ops else "computed from the model's input by " + ", ".join(reversed(ops))
    return f"    --low/--high bound its input '{x.name}', {source}"


def _describe(value) -> str:
    import onnx

    t = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return f"{onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else '?'} {dims}"


def _preprocessing(args, image=None):
    """The preprocessing the options ask for: the preset's pixel scaling (default: [0, 1] pixels, or
    unscaled ones for an integer input) in the size, layout and channels the model's image input
    ``image`` (as ONNX Runtime describes it) implies, changed by the other options; without ``image``
    (before the model is read), only checked."""
    from .preprocess import PRESETS, get_preset, infer_preprocessing

    if args.preset:
        base = get_preset(args.preset)
    else:
        base = PRESETS["pixels" if image is not None and "int" in image.type else "unit"]
    changes = {k: v for k, v in {
        "size": _square_or_pair(args.size), "resize": args.resize, "scale": args.scale,
        "mean": args.mean, "std": args.std, "channel_order": args.channel_order, "layout": args.layout,
    }.items() if v is not None}
    if image is not None:
        return infer_preprocessing(list(image.shape), base, **changes)
    return dataclasses.replace(base, **changes) if changes else base


def _image_paths(items: list[str]) -> list[str]:
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            entries = list(path.iterdir())
            found = sorted(str(p) for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))  # hidden: ._x.jpg is macOS's, not a photo
            inner = sum(1 for p in entries if p.is_dir())
            others = len(entries) - len(found) - inner
            skipped = [f"its {inner} subfolder(s) are not searched"] if inner else []
            skipped += [f"its {others} other file(s) (not named as images, hidden or broken links) are skipped"
                        ] if others else []
            notes = "; ".join(skipped) + (": name them" if skipped else "")
            if not found:
                raise RlrpError(f"{path}: no {IMAGE_KINDS} images in this folder" + (f" ({notes})" if notes else ""))
            if notes:
                print(f"{path}: {notes}", file=sys.stderr)
            paths.extend(found)
        else:
            paths.append(item)
    return paths


class Progress:
    """A progress bar on stderr for runs of more than one batch: redrawn in place on a terminal;
    elsewhere (a log file, a pipe) written as a line at each tenth of the run."""

    WIDTH = 30

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tenths = -1  # the last tenth written off a terminal

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total
        bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} images"
        if self.stream.isatty():
            print(f"\r{bar}", end="\n" if done == total else "", file=self.stream, flush=True)
        elif 10 * done // total > self.tenths:
            self.tenths = 10 * done // total
            print(bar, file=self.stream, flush=True)


def _run_explain(model, images, out, args, labels_path=None) -> None:
    from .explain import check_files, explain_images
    from .explainer import Explainer, check_count, check_request
    from .labels import load_labels
    from .runtime import class_count, image_input

    # what can be checked without the model, before compiling it: a long run does not stop halfway
    check_request(args.target, args.top_k, ("--target", "--top-k"))
    check_count(args.batch_size, "--batch-size", "images")
    paths = _image_paths(images)
    check_files(paths, out, args.top_k)
    _preprocessing(args)
    if labels_path:
        load_labels(labels_path)  # readable; its length is checked against the model below
    explainer = Explainer(model, device=args.device, batch_size=args.batch_size,
                          output_name=getattr(args, "output", None),
                          input_shapes=_resolve_shapes(model, getattr(args, "input_shape", None)),
                          **_method_args(args), **_form_args(args))
    if explainer.notice:
        print(explainer.notice, file=sys.stderr)
    print(f"provider: {explainer.provider}")
    preprocessing = _preprocessing(args, image_input(explainer.runtime))
    labels = load_labels(labels_path, class_count(explainer.runtime)) if labels_path else None
    progress = Progress() if len(paths) > explainer.batch_size else None
    for e in explain_images(explainer, paths, preprocessing, out, labels, args.target, args.top_k, progress,
                            save_relevance=getattr(args, "save_relevance", False)):
        name = f" ({e.label})" if e.label else ""
        files = ", ".join(str(f) for f in (e.heatmap, e.overlay, e.relevance) if f is not None)
        print(f"{e.image}: class {e.target}{name}, score {e.score:.4f} -> {files}")
        if e.nonfinite:
            why = "; lrp0 divides by pre-activations that vanish (0/0), epsilon stabilizes them" \
                if explainer.rule == "lrp0" else ""
            print(f"  {e.nonfinite} relevance values are NaN or infinite (NaN black in the heatmap, ±inf "
                  f"saturated){why}")


def cmd_explain(args) -> None:
    _run_explain(args.model, args.images, args.out, args, args.labels)


def cmd_conservation(args) -> None:
    """Per layer (from the logit back to the input): total relevance and its ratio to the logit."""
    import numpy as np

    from .compiler import check_not_compiled, compile_model
    from .contract import LAYER_OUTPUT_PREFIX, META_EXPLAINED_OUTPUT, META_IMAGE_INPUTS, META_RULE, RELEVANCE_OUTPUT
    from .loading import read_metadata
    from .preprocess import check_images, prepare
    from .runtime import check_device, create_session, fixed_batch, image_input, run_explainer

    check_images([args.image])  # before compiling
    check_device(args.device)
    check_not_compiled(read_metadata(args.model) or {}, str(args.model), "run conservation on")
    _preprocessing(args)
    method = _method_args(args)
    compiled = compile_model(args.model, output_name=args.output, expose="all",
                             input_shapes=_resolve_shapes(args.model, args.input_shape), **method, **_form_args(args))
    producers = {o: n.op_type for n in compiled.graph.node for o in n.output}
    meta = {p.key: p.value for p in compiled.metadata_props}
    session = create_session(compiled, args.device)
    batch, _ = prepare([args.image], _preprocessing(args, image_input(session)))
    # a whole batch of copies, each tensor summed over all of them: an inner tensor may hold the batch on
    # another axis than the first (the dynamo exporter's Transposes around a GatherND)
    copies = fixed_batch(image_input(session)) or 1
    relevance, classes, scores, outputs = run_explainer(session, np.repeat(batch, copies, axis=0), args.target)
    score = float(scores[0])
    print(f"{args.image}: class {int(classes[0])}, logit {score:.6g}, rule {meta[META_RULE]}")
    print(f"{'tensor':<50} {'op':<20} {'sum R':>14} {'sum R / logit':>14}")
    tensors = [o.name[len(LAYER_OUTPUT_PREFIX):] for o in compiled.graph.output
               if o.name.startswith(LAYER_OUTPUT_PREFIX)]
    branches = _branches(compiled.graph, tensors, meta[META_IMAGE_INPUTS].split(","), meta[META_EXPLAINED_OUTPUT])
    for tensor in reversed(tensors):
        total = float(np.sum(outputs[LAYER_OUTPUT_PREFIX + tensor], dtype=np.float64)) / copies
        mark = "  branch" if tensor in branches else ""
        print(f"{tensor[-50:]:<50} {producers.get(tensor, '?'):<20} {total:>14.6g} {_ratio(total, score):>14}{mark}")
    total = float(np.sum(relevance, dtype=np.float64)) / copies
    print(f"{'input ' + RELEVANCE_OUTPUT:<50} {'':<20} {total:>14.6g} {_ratio(total, score):>14}")
    if branches:
        print("branch: a tensor that some path from the input to the logit goes around (one side of a "
              "residual Add, a Concat, ...): it holds only its share of the relevance")


def _branches(graph, tensors: list[str], inputs: list[str], output: str) -> set[str]:
    """The ``tensors`` that some path from ``inputs`` to ``output`` avoids: those holding only part of the
    relevance that reaches their layer. The others dominate the output (every path passes through them),
    found as its dominators over the tensors computed from the inputs, in the graph's node order (ONNX's
    is topological); a node reads its inputs and what its subgraphs read from outside them, not through a
    shape (Shape, Size)."""
    parent, depth = {name: None for name in inputs}, dict.fromkeys(inputs, 1)  # None: above all inputs

    def meet(a, b):  # the nearest tensor (or None) that dominates both
        while a != b:
            if depth.get(a, 0) < depth.get(b, 0):
                a, b = b, a
            a = parent[a]
        return a

    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        reached = [name for name in (*node.input, *_outer_reads(node)) if name in parent]
        if not reached:
            continue
        dominator = reached[0]
        for name in reached[1:]:
            dominator = meet(dominator, name)
        for name in node.output:
            parent[name], depth[name] = dominator, depth.get(dominator, 0) + 1
    dominators, name = set(), output
    while name is not None:
        dominators.add(name)
        name = parent.get(name)
    return {tensor for tensor in tensors if tensor not in dominators}


def _outer_reads(node) -> set[str]:
    """The names ``node``'s subgraphs (If, Loop, Scan) read from outside themselves."""
    from .passes.names import subgraphs

    reads = set()
    for graph in subgraphs(node):
        inner = {v.name for v in graph.input} | {t.name for t in graph.initializer}
        inner |= {name for n in graph.node for name in n.output}
        reads |= {name for n in graph.node for name in (*n.input, *_outer_reads(n)) if name not in inner}
    return reads


def _ratio(total: float, score: float) -> str:
    """``total / score`` for the conservation table; n/a when the logit is 0."""
    return f"{total / score:.6g}" if score else "n/a"


def cmd_demo(args) -> None:
    if not DEMO_MODEL.exists():
        raise RlrpError(f"{DEMO_MODEL}: the demo model is missing; run the demo from a clone of the "
                        "repository installed with pip install -e")
    args.preset, args.output = "efficientnet-lite0", None
    _run_explain(DEMO_MODEL, [str(DEMO_IMAGES)], args.out, args, DEMO_LABELS)


def _add_method(p) -> None:
    from .methods import COMPOSITES, RLRP, RULE_NAMES

    g = p.add_argument_group("explanation method (default: R-LRP, no parameters)")
    g.add_argument("--rule", choices=[RLRP, *RULE_NAMES], help="rule for every layer")
    g.add_argument("--composite", choices=list(COMPOSITES), help="a rule per layer, as Zennit's presets")
    g.add_argument("--epsilon", type=float, help="ε of the epsilon rule (default 1e-6; every layer it is the "
                   "rule of: all with --rule epsilon, the dense ones in the epsilon composites)")
    g.add_argument("--gamma", type=float, help="γ of the gamma rule (default 0.25)")
    g.add_argument("--alpha", type=float, help="α of the alpha-beta rule (default 2; alpha - beta must be 1)")
    g.add_argument("--beta", type=float, help="β of the alpha-beta rule (default 1)")
    g.add_argument("--low", type=_floats, help="z^B lower bound of the layer's input values (after any "
                   "normalization inside the model; inspect names that tensor): one value or one per channel")
    g.add_argument("--high", type=_floats, help="z^B upper bound, likewise")


def _add_form(p, compiled_too: bool = False) -> None:
    """``--masks`` and ``--adjoints``; where ``compiled_too`` (the model may be compiled already), their
    defaults are the model's."""
    from .contract import ADJOINT_FORMS, MASK_FORMS

    g = p.add_argument_group("compiled graph")
    default = ", or what a compiled model has" if compiled_too else ""
    g.add_argument("--masks", choices=MASK_FORMS, default=None if compiled_too else "steps",
                   help=f"Relu/Clip masks: steps (default{default}; faster on ONNX Runtime's CPU provider) "
                        "or comparisons (less working memory)")
    adjoints = ("winograd for R-LRP where CUDA is not expected to run, else conv, or what a compiled model has"
                if compiled_too else "conv")
    g.add_argument("--adjoints", choices=ADJOINT_FORMS, default=None if compiled_too else "conv",
                   help=f"large 3x3 convolutions of the relevance pass: conv or winograd (faster on ONNX Runtime's "
                        f"CPU provider for VGG-like layers, more memory; runs on CUDA too, without gain); default "
                        f"{adjoints}")


def _add_preprocessing(p) -> None:
    from .preprocess import CHANNEL_ORDERS, LAYOUTS, RESIZES

    g = p.add_argument_group("preprocessing (default: size and layout read from the model, pixels in [0, 1])")
    g.add_argument("--preset", help="efficientnet-lite0, imagenet, unit or pixels")
    g.add_argument("--size", type=_ints, help="H,W fed to the model (one number: a square)")
    g.add_argument("--resize", choices=RESIZES)
    g.add_argument("--scale", type=float, help="multiply raw 0..255 pixels by this")
    g.add_argument("--mean", type=_floats, help="mean after scaling: one value, or one per channel")
    g.add_argument("--std", type=_floats, help="std after scaling: one value, or one per channel")
    g.add_argument("--channel-order", choices=CHANNEL_ORDERS,
                   help="the model's channels (default: gray for a model with one channel, else RGB)")
    g.add_argument("--layout", choices=LAYOUTS)


def _add_input_shape(p) -> None:
    p.add_argument("--input-shape", action="append",
                   help="[NAME=]N,C,H,W for a source model's inputs with dynamic sizes (the compiled model "
                        "then takes only that size; its batch stays as declared)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlrp-onnx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # options in full only: an abbreviation (--lo for --low) would dodge _joined_negative_lists
    command = functools.partial(sub.add_parser, allow_abbrev=False)

    p = command("compile", help="write the R-LRP explainer model of an ONNX classifier")
    p.add_argument("model")
    p.add_argument("-o", "--out", required=True, help="where to write the compiled model")
    p.add_argument("--output", help="the explained output, when several could be class scores")
    _add_input_shape(p)
    _add_method(p)
    _add_form(p)
    p.add_argument("--expose", nargs="+", metavar="TENSOR",
                   help="also output the relevance at these inner tensors (or 'all': every one on the relevance "
                        "path), as rlrp_relevance/<tensor>")
    p.add_argument("--target-input", choices=TARGET_FORMS, default="optional",
                   help="rlrp_target optional with the default -1 (arg-max; default), or required, for "
                        "runtimes that ignore a feed of an input with a default (onnxruntime-node)")
    p.set_defaults(run=cmd_compile)

    p = command("inspect", help="list a model's ops and which ones relevance rules cover")
    p.add_argument("model")
    p.add_argument("--output")
    _add_input_shape(p)
    _add_method(p)
    p.set_defaults(run=cmd_inspect)

    p = command("explain", help="explain images and write heatmaps")
    p.add_argument("model", help="a source or compiled ONNX model")
    p.add_argument("images", nargs="+", help=f"image files or folders (searched for {IMAGE_KINDS} files)")
    p.add_argument("--out", required=True, help="folder for the heatmaps")
    p.add_argument("--labels", help="class names, one per line")
    p.add_argument("--target", type=int, help="class to explain (default: each image's top class)")
    p.add_argument("--top-k", type=int, help="explain each image's K best classes")
    p.add_argument("--save-relevance", action="store_true",
                   help="also write each relevance map as <name>_relevance.npy (float32, the input's layout)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per run (default 8; a model with a fixed batch size runs that many)")
    p.add_argument("--output", help="the explained output, when several could be class scores")
    _add_input_shape(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_preprocessing(p)
    _add_method(p)
    _add_form(p, compiled_too=True)
    p.set_defaults(run=cmd_explain)

    p = command("conservation", help="per-layer relevance totals and their ratio to the logit")
    p.add_argument("model")
    p.add_argument("image")
    p.add_argument("--target", type=int, help="class to explain (default: the top class)")
    p.add_argument("--output", help="the explained output, when several could be class scores")
    _add_input_shape(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _add_preprocessing(p)
    _add_method(p)
    _add_form(p)
    p.set_defaults(run=cmd_conservation)

    p = command("demo", help="explain the bundled photos with the bundled EfficientNet-Lite0")
    p.add_argument("--out", default="rlrp-demo")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--target", type=int, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    _add_method(p)
    _add_form(p, compiled_too=True)
    p.set_defaults(run=cmd_demo, size=None, resize=None, scale=None, mean=None, std=None,
                   channel_order=None, layout=None)
    return parser


NUMBER_LIST_OPTIONS = ("--low", "--high", "--mean", "--std")  # values that may start with a minus sign


def _joined_negative_lists(argv: list[str]) -> list[str]:
    """``--low -2.1,-2.0`` as ``--low=-2.1,-2.0``: argparse takes a value starting with "-" for an option
    unless it is one plain negative number."""
    joined = []
    for token in argv:
        if joined and joined[-1] in NUMBER_LIST_OPTIONS and re.match(r"-[0-9.]", token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def main(argv=None) -> int:
    args = build_parser().parse_args(_joined_negative_lists(sys.argv[1:] if argv is None else argv))
    if not os.environ.get("RLRP_DEBUG"):
        from .runtime import quiet_onnxruntime

        quiet_onnxruntime()  # its log would repeat the one line the CLI says about CUDA, and compiling
        # would print the warnings of the sessions onnx-graphsurgeon opens to fold constants
    try:
        args.run(args)
    except RlrpError as error:
        print(f"rlrp-onnx: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (head, less)
        sys.stderr.close()
        return 1
    except Exception as error:  # a bug of ours: still one line, the traceback with RLRP_DEBUG=1
        if os.environ.get("RLRP_DEBUG"):
            raise
        print(f"rlrp-onnx: internal error: {type(error).__name__}: {first_line(error)}"
              " (rerun with RLRP_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

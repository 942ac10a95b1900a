"""Benchmark the compiled R-LRP models against the plain forward pass and PyTorch input x gradient.

For each model (``--models``, from ``tools/reference_nets.py``: VGG16, VGG19, ResNet50 with random
weights, EfficientNet-Lite0 with its real weights; all 1000 classes, 3x224x224) and batch size
(``--batches``) it measures, on the CPU:

compile
    Wall time of ``rlrp_onnx.compile_model(path)`` on the exported model (once per model), in the
    forms ``rlrp_onnx.Explainer`` compiles a source model in for the CPU (``--adjoints winograd``;
    ``--adjoints conv`` for compile_model's default).
    The model is exported once with the TorchScript exporter (opset 17, dynamic batch, default
    constant folding, so BatchNorm is folded into the convs) into ``--cache-dir`` and reused
    from there on later runs (``--refresh`` re-exports).
(a) forward
    ``InferenceSession.run`` of the source model (logits only).
(b) compiled
    ``InferenceSession.run`` of the compiled model, all outputs (logits, relevance, class, score),
    with ``rlrp_target`` not fed (arg-max class).
(c) torch
    PyTorch input x gradient of the same network: forward, pick each sample's arg-max logit,
    ``torch.autograd.grad`` of their sum w.r.t. the input (parameter gradients are not computed),
    times the input. This is what R-LRP equals on these networks, so (b) and (c) compute the
    same numbers; the table's ``err`` column is ``max|b - c| / max|c|`` for the relevance. On the
    full-size random-weight nets it reaches 1e-2..4e-2 at batch 8: ReLU masks flip where a
    pre-activation is within rounding of zero (torch float32 differs from torch float64 by as much).

Timing: both ORT sessions use ``intra_op_num_threads = --threads`` (inter-op 1, sequential, graph
optimisation ``--opt-level``); torch uses ``torch.set_num_threads(--threads)``. After ``--warmup``
runs of each, ``--repeats`` rounds are timed; each round runs (a), (b) and (c) once, in an order
rotated from round to round, so slow phases of a shared machine hit all three alike. Each timed run
starts from the caches the previous contender left; with ``--settle N`` it is preceded by N untimed
runs of the same contender (steady state, as a service explaining a stream runs). A cell stops
early (after at least 3 rounds) once its rounds have taken ``--budget`` seconds. The table shows
medians (ms per batch) and the ratios (b)/(a) and (c)/(b) as medians of the per-round ratios
(each round's contenders ran back to back, so a slow phase of the machine cancels out); the JSON also
has every sample and the ratios of the medians.

Memory: each contender is run again in a fresh subprocess that imports only what it needs,
records its resident set (VmRSS) after the imports, loads the model (ORT session; for torch,
builds the network), runs it once, and reads the kernel's high-water mark (VmHWM). Reported:
``peak`` = VmHWM - RSS after imports (the load spike included) and ``run`` = the high-water mark
of the run alone (VmHWM reset through /proc/self/clear_refs after loading) - RSS after
imports, i.e. weights plus working memory while running. Megabytes (2**20 bytes).

``--profile DIR`` also writes ONNX Runtime profiles of both models at each batch size (after one
warm-up, ``--profile-runs`` runs alternating between the two sessions) and prints the time per op
type, split into forward nodes and relevance-pass nodes (the compiler names the latter ``rlrp<n>``)
and the layout conversions ORT inserts itself (``ReorderInput``/``ReorderOutput`` around its blocked
NCHWc convolutions), the forward nodes that run slowest inside the compiled model next to alone, and
each forward layer's adjoints (the relevance pass's linear kernels on its weights) next to the layer.
A last table splits the compiled model's profiled kernel time in units of its own forward part (same
runs): 1 (the forward) + the relevance pass's linear adjoints (Conv/ConvTranspose/Gemm kernels) +
layout conversions + the other relevance ops (masks, max-pool routing, sums); and the forward part's
time over the source model's, summed over the forward nodes both profiles name (ORT gives a node the
same name in both).

Usage::

    python tools/bench.py                          # full table (7-13 minutes on 2 shared cores)
    python tools/bench.py --quick                  # 3 rounds, batch 1, no memory probes
    python tools/bench.py --models resnet50 --batches 8 --json out.json --cache-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

INPUT, OUTPUT = "image", "logits"
OPSET = 17
CONTENDERS = ("forward", "compiled", "torch")
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
MB = 2**20


# ------------------------------------------------------------------------------ preparation


def machine(threads: int) -> dict:
    """What the numbers were measured on."""
    import onnxruntime
    import torch

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rlrp_onnx": _package_state(),
        "load_average": list(os.getloadavg()),
    }


def _package_state() -> str:
    """rlrp_onnx's version and the git commit of its tree (``+dirty`` with uncommitted changes)."""
    import rlrp_onnx

    root = pathlib.Path(rlrp_onnx.__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=+dirty"],
                          capture_output=True, text=True, check=False)
    return f"{rlrp_onnx.__version__} {done.stdout.strip() or '(no git)'}"


def export(name: str, seed: int, cache: pathlib.Path, refresh: bool) -> pathlib.Path:
    """The cached ONNX export of reference net ``name`` (TorchScript exporter, opset 17)."""
    import torch
    from reference_nets import INPUT_SHAPE, build

    path = cache / f"{name}-seed{seed}-opset{OPSET}.onnx"
    if path.exists() and not refresh:
        return path
    model = build(name, seed)
    partial = path.with_suffix(".partial")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *INPUT_SHAPE),), str(partial), dynamo=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    partial.replace(path)
    return path


def session(path, threads: int, opt_level: str = "all", profile_prefix: str | None = None,
            spin: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_model(name: str, seed: int):
    from reference_nets import build

    model = build(name, seed)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def input_x_gradient(model, x: np.ndarray) -> np.ndarray:
    """x * d(logit of each sample's arg-max class)/dx, with torch autograd."""
    import torch

    image = torch.from_numpy(x).requires_grad_(True)
    logits = model(image)
    chosen = logits.detach().argmax(1, keepdim=True)
    (gradient,) = torch.autograd.grad(logits.gather(1, chosen).sum(), image)
    return (image.detach() * gradient).numpy()


def example(batch: int, seed: int) -> np.ndarray:
    from reference_nets import INPUT_SHAPE

    return np.random.default_rng(seed).standard_normal((batch, *INPUT_SHAPE)).astype(np.float32)


# ---------------------------------------------------------------------------------- timing


def alternate(runs: dict, warmup: int, repeats: int, budget: float, settle: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function in ``runs``: warm-up, then rounds in rotating order (each
    timed call preceded by ``settle`` untimed calls of the same function)."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(settle):
                runs[name]()
            t0 = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - t0)
        if budget and round_ + 1 >= 3 and time.perf_counter() - started > budget:
            break
    return samples


def timed_sessions(sessions: dict, x: np.ndarray, args) -> dict[str, list[float]]:
    """Seconds per ``run`` of each ONNX Runtime session on ``x`` (all outputs), in ``alternate``'s rounds
    with ``args.warmup``, ``args.repeats`` and ``args.budget``."""
    runs = {label: (lambda s=s: s.run(None, {INPUT: x})) for label, s in sessions.items()}
    return alternate(runs, args.warmup, args.repeats, args.budget)


def variants_parser(description: str, repeats: int, budget: float,
                    default_forms: dict[str, str]) -> argparse.ArgumentParser:
    """The options of the tools that time compiled variants against the forward pass (bounds.py,
    compare.py): models, batches, threads, rounds, optimisation level, seed, export cache, and the forms
    (``add_form_options``)."""
    from reference_nets import MODELS

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per cell")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=budget, help="seconds per cell (at least 3 rounds)")
    parser.add_argument("--opt-level", choices=list(OPT_LEVELS), default="all",
                        help="ORT graph optimisation (basic: no blocked layout, as on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="/tmp/rlrp-bench", help="exports (shared with tools/bench.py)")
    add_form_options(parser, default_forms)
    return parser


def add_form_options(parser: argparse.ArgumentParser, defaults: dict[str, str]) -> None:
    """``--masks`` and ``--adjoints``: ``compile_model``'s forms for the compiled models (compare.py: this
    tree's), by default those in ``defaults``, else compile_model's."""
    from rlrp_onnx.contract import FORMS

    for keyword, (_, choices) in FORMS.items():
        default = defaults.get(keyword, choices[0])
        parser.add_argument(f"--{keyword}", choices=choices, default=default,
                            help=f"compile_model's {keyword} for the compiled models (compare.py: this tree's; "
                                 f"default {default})")


def forms(args) -> dict[str, str]:
    """``compile_model``'s form keywords chosen by ``add_form_options``."""
    from rlrp_onnx.contract import FORMS

    return {keyword: getattr(args, keyword) for keyword in FORMS}


def compiled_path(source: pathlib.Path, args) -> pathlib.Path:
    """Where the compiled model of an export is kept (one file per choice of forms)."""
    from rlrp_onnx.contract import FORMS

    chosen = [value for keyword, value in forms(args).items() if value != FORMS[keyword][1][0]]
    return source.with_name(source.stem + "".join(f"-{value}" for value in chosen) + ".rlrp.onnx")


def machine_line(args) -> str:
    """One line naming the machine, threads, ONNX Runtime, optimisation level and rlrp_onnx's commit."""
    info = machine(args.threads)
    return (f"Machine: {info['cpu']}, {info['cores']} cores, threads {args.threads}, onnxruntime "
            f"{info['onnxruntime']}, optimisation level {args.opt_level}, masks {args.masks}, "
            f"adjoints {args.adjoints}, rlrp_onnx {info['rlrp_onnx']}")


# ---------------------------------------------------------------------------------- memory


def _status(field: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _probe(spec: dict) -> dict:
    """Run in a fresh subprocess: load one contender, run it twice, report resident memory."""
    contender, batch, threads = spec["contender"], spec["batch"], spec["threads"]
    if contender == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import onnxruntime  # noqa: F401
    x = example(batch, spec["seed"])
    baseline = _status("VmRSS")
    if contender == "torch":
        model = torch_model(spec["model"], spec["seed"])
        run = lambda: input_x_gradient(model, x)  # noqa: E731
    else:
        sess = session(spec["path"], threads, spec["opt_level"])
        run = lambda: sess.run(None, {INPUT: x})  # noqa: E731
    loaded = _status("VmRSS")
    load_peak = _status("VmHWM")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM
    run()
    run_peak = _status("VmHWM")
    return {"peak_mb": (max(load_peak, run_peak) - baseline) / MB,
            "run_mb": (run_peak - baseline) / MB,
            "loaded_mb": (loaded - baseline) / MB,
            "imports_mb": baseline / MB}


def memory(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--probe", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- profile


def profiles(paths: dict, x: np.ndarray, threads: int, opt_level: str, runs: int, prefix: str) -> dict:
    """{label: per-node times} of the models ``paths`` ({label: path}), profiled in runs that alternate
    between their sessions (one warm-up each first), so a slow phase of the machine hits all alike."""
    sessions = {label: session(path, threads, opt_level, profile_prefix=f"{prefix}-{label}")
                for label, path in paths.items()}
    for _ in range(1 + runs):
        for sess in sessions.values():
            sess.run(None, {INPUT: x})
    return {label: _per_node(sess.end_profiling(), runs) for label, sess in sessions.items()}


def _per_node(profile_file: str, runs: int) -> dict:
    """Mean ms per run of each node over the last ``runs`` runs of an ORT profile; keys are (node name,
    op type)."""
    events = json.load(open(profile_file))
    # the first Node events belong to the warm-up run; keep the last `runs` runs' events
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = model_runs[-runs]["ts"] if len(model_runs) >= runs else 0
    per_node: dict = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_node[(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))] += e["dur"]
    return {key: us / 1000 / runs for key, us in per_node.items()}


def is_relevance(node: str) -> bool:
    """Nodes the compiler emitted (``rlrp<n>``, possibly renamed by an ORT fusion)."""
    return node.startswith("rlrp") and node[4:5].isdigit()


LAYOUT_OPS = {"ReorderInput", "ReorderOutput"}
MASK_STEP, LAYOUT_CONV = "Conv (mask step)", "Conv (into blocked layout)"


def is_step_factor(node, producers) -> bool:
    """Whether ``node`` computes a mask step (``Emitter.step``'s HardSigmoid) or the product of two."""
    if node is None:
        return False
    if node.op_type == "HardSigmoid":
        return True
    return node.op_type == "Mul" and all(getattr(producers.get(i), "op_type", "") == "HardSigmoid"
                                         for i in node.input)


def _links(model) -> tuple[dict, dict]:
    """({tensor: the node writing it}, {tensor: the nodes reading it}) of a model's graph."""
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    return producers, readers


def conv_roles(model) -> dict[str, str]:
    """The relevance pass's Convs that are not adjoints, by every name ONNX Runtime may give their
    kernel (its fusions keep the Conv's or the HardSigmoid's name): ``Emitter.step``'s and
    ``Emitter.band``'s Conv (with its HardSigmoid, the band's Add and the product of two steps) as MASK_STEP, ``Emitter.blocked``'s as LAYOUT_CONV."""
    producers, readers = _links(model)
    roles = {}
    for node in model.graph.node:
        if node.op_type == "HardSigmoid" and is_relevance(node.name):
            step = [node, producers[node.input[0]]]
            if step[-1].op_type == "Add":  # Emitter.band: its Conv, with the lower step as the Sum
                step += [p for p in map(producers.get, step[-1].input) if getattr(p, "op_type", "") == "Conv"]
            step += [r for r in readers[node.output[0]] if r.op_type == "Mul" and is_step_factor(r, producers)]
            roles.update({name: MASK_STEP for n in step for name in (n.name, n.output[0])})
    from onnx import numpy_helper

    shapes = {t.name: list(numpy_helper.to_array(t)) for t in model.graph.initializer if list(t.dims) == [4]}
    for node in model.graph.node:
        if node.op_type != "Conv" or not is_relevance(node.name) or node.name in roles:
            continue
        weights = producers.get(node.input[1])  # filled by Expand, 1x1: Emitter.blocked
        if weights is not None and weights.op_type == "Expand" and shapes.get(weights.input[1], [])[2:] == [1, 1]:
            roles[node.name] = roles[node.output[0]] = LAYOUT_CONV
    return roles


def summarize_profile(per_node: dict, roles: dict | None = None) -> dict:
    """{"forward"|"relevance"|"layout": {op type: ms}}, most expensive first; the Convs named in
    ``roles`` (``conv_roles``) are listed under their role, the layout ones under "layout"."""
    roles = roles or {}
    parts: dict = {"forward": collections.Counter(), "relevance": collections.Counter(),
                   "layout": collections.Counter()}
    for (node, op), ms in per_node.items():
        op = roles.get(node.removesuffix("_nchwc"), op)
        part = "layout" if op in LAYOUT_OPS | {LAYOUT_CONV} else "relevance" if is_relevance(node) else "forward"
        parts[part][op] += ms
    return {part: dict(ops.most_common()) for part, ops in parts.items()}


LINEAR_OPS = {"Conv", "ConvTranspose", "FusedConv", "Gemm", "FusedGemm", "MatMul"}
FUSED_AFTER_CONV = {"Add", "Sum", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh", "BatchNormalization"}


def forward_inside(per_node: dict) -> dict:
    """The forward nodes both profiles name ({label: per-node times} of "source" and "compiled"):
    {"slowdown": their compiled-model time over their source-model time, "slowest": the five whose
    time grew most, as (node, op type, ms alone, ms inside)}."""
    source, compiled = per_node["source"], per_node["compiled"]
    common = [key for key in source if key in compiled and key[1] not in LAYOUT_OPS and not is_relevance(key[0])]
    grown = sorted(common, key=lambda key: source[key] - compiled[key])[:5]
    return {"slowdown": sum(compiled[key] for key in common) / sum(source[key] for key in common),
            "slowest": [(node, op, source[(node, op)], compiled[(node, op)]) for node, op in grown]}


def adjoint_layers(model) -> dict[str, tuple[str, list[str]]]:
    """{relevance node: (forward layer, the names ONNX Runtime may give that layer's kernel)} for the
    relevance pass's linear nodes (LINEAR_OPS) whose constant operands are computed from a forward linear
    layer's weights (flipped, transposed, doubled, Winograd-transformed); the Winograd tile transforms
    and the other linear nodes on constants of their own are not attributed. A layer without a name is
    named by its output. For the compiler's names (``is_relevance``): those of the benchmark models."""
    producers, readers = _links(model)
    constants = {t.name for t in model.graph.initializer} - {i.name for i in model.graph.input}
    for node in model.graph.node:  # (in topological order) tensors computed from constants alone
        if all(name in constants for name in node.input if name):
            constants.update(node.output)
    forward = [n for n in model.graph.node if n.op_type in LINEAR_OPS and not is_relevance(n.name)]
    owner = {name: layer for layer in forward for name in layer.input[1:] if name in constants}

    def found_in(tensor, seen):  # the forward layers whose weights the constant ``tensor`` comes from
        if tensor in owner:
            return {owner[tensor].output[0]: owner[tensor]}
        if tensor not in constants or tensor not in producers or tensor in seen:
            return {}
        seen.add(tensor)
        return {k: v for name in producers[tensor].input if name for k, v in found_in(name, seen).items()}

    def kernel_names(layer):  # its own name, or the output of a node ORT fuses into it (+ "_nchwc"): the
        outputs = [layer.output[0]]  # Add of a shortcut, an activation; nearest first
        for _ in range(2):
            outputs += [r.output[0] for o in outputs for r in readers[o] if r.op_type in FUSED_AFTER_CONV
                        and not is_relevance(r.name)]
        return [layer.name, f"fused {layer.name}"] + [name + suffix for name in outputs for suffix in ("", "_nchwc")]

    pairs = {}
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS and is_relevance(node.name):
            layers = {k: v for name in node.input if name in constants for k, v in found_in(name, set()).items()}
            if len(layers) == 1:
                layer = next(iter(layers.values()))
                pairs[node.name] = (layer.name or layer.output[0], kernel_names(layer))
    return pairs


def adjoints_by_layer(per_node: dict, pairs: dict) -> list[tuple[str, float, float]]:
    """(forward layer, its ms, its adjoints' ms) inside the compiled model, from its per-node profile
    times and ``adjoint_layers``; layers whose kernel the profile does not name are left out."""
    times: dict = collections.defaultdict(float)
    for (name, _), ms in per_node.items():
        times[name] += ms

    def kernel_ms(name):  # a node's kernel: its name, or with a suffix ORT appends ("_nchwc", "/…Fusion/")
        return sum(ms for key, ms in times.items()
                   if key == name or key.startswith(name) and not key[len(name)].isdigit())

    layers: dict = {}
    for node, (layer, names) in pairs.items():
        forward = next((times[n] for n in names if n in times), None)
        if forward is not None:
            layers.setdefault(layer, [forward, 0.0])[1] += kernel_ms(node)
    return [(layer, forward, adjoint) for layer, (forward, adjoint) in layers.items()]


def ratio_breakdown(row: dict) -> dict:
    """Split a compiled model's profiled kernel time in units of its own forward part.

    Units of the forward *inside* the compiled profile, so the parts come from the same runs:
    ``adjoints`` (the relevance pass's Conv/ConvTranspose/Gemm/MatMul kernels that are adjoints),
    ``layout`` (ORT's NCHWc conversions and the Convs that take relevance into that layout), ``other``
    (masks, their step Convs, routing, sums, the seed); ``total`` = 1 + the three.
    ``slowdown`` = the forward nodes' time inside over alone (``forward_inside``).
    """
    compiled = row["profile"]["compiled"]
    forward = sum(compiled["forward"].values())
    adjoints = sum(ms for op, ms in compiled["relevance"].items() if op in LINEAR_OPS)
    parts = {"adjoints": adjoints / forward, "layout": sum(compiled["layout"].values()) / forward,
             "other": (sum(compiled["relevance"].values()) - adjoints) / forward}
    return {"total": 1 + sum(parts.values()), **parts, "slowdown": row["forward_inside"]["slowdown"]}


def print_breakdowns(rows: list[dict]) -> None:
    """One line per profiled model and batch: the compiled model's kernel time, split."""
    rows = [row for row in rows if "profile" in row]
    if not rows:
        return
    print("\n#### Compiled model's kernel time in units of its own forward part\n")
    print("| model | batch | total | relevance adjoints | layout conversions | other relevance ops "
          "| forward inside / alone |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        b = ratio_breakdown(row)
        print(f"| {row['model']} | {row['batch']} | {b['total']:.2f} | {b['adjoints']:.2f} | "
              f"{b['layout']:.2f} | {b['other']:.2f} | {b['slowdown']:.2f} |")


def print_profile(title: str, summary: dict, top: int = 12) -> None:
    print(f"\n#### {title}\n")
    for part, ops in summary.items():
        total = sum(ops.values())
        if not total:
            continue
        shares = ", ".join(f"{op} {ms:.0f} ({100 * ms / total:.0f}%)" for op, ms in list(ops.items())[:top])
        print(f"- {part}: {total:.0f} ms — {shares}")


# -------------------------------------------------------------------------------- main


def bench_model(name: str, args, cache: pathlib.Path) -> list[dict]:
    import rlrp_onnx

    t0 = time.perf_counter()
    source = export(name, args.seed, cache, args.refresh)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled_model = rlrp_onnx.compile_model(str(source), **forms(args))
    compile_s = time.perf_counter() - t0
    relevance_ops = dict(collections.Counter(n.op_type for n in compiled_model.graph.node
                                             if is_relevance(n.name)).most_common())
    roles, pairs = conv_roles(compiled_model), adjoint_layers(compiled_model)
    compiled = compiled_path(source, args)
    rlrp_onnx.save_model(compiled_model, compiled)
    del compiled_model
    forward_sess = session(source, args.threads, args.opt_level)
    compiled_sess = session(compiled, args.threads, args.opt_level)
    model = torch_model(name, args.seed)
    rows = []
    for batch in args.batches:
        x = example(batch, args.seed)
        outputs = {o.name: v for o, v in zip(compiled_sess.get_outputs(), compiled_sess.run(None, {INPUT: x}))}
        reference = input_x_gradient(model, x)
        err = float(np.max(np.abs(outputs["rlrp_relevance"] - reference)) / np.max(np.abs(reference)))
        runs = {
            "forward": lambda: forward_sess.run(None, {INPUT: x}),
            "compiled": lambda: compiled_sess.run(None, {INPUT: x}),
            "torch": lambda: input_x_gradient(model, x),
        }
        samples = alternate(runs, args.warmup, args.repeats, args.budget, args.settle)
        median = {k: statistics.median(v) * 1000 for k, v in samples.items()}
        paired = {k: statistics.median(b / a for a, b in zip(samples[den], samples[num]))
                  for k, (num, den) in {"compiled_over_forward": ("compiled", "forward"),
                                        "torch_over_compiled": ("torch", "compiled")}.items()}
        row = {
            "model": name, "batch": batch, "export_s": export_s, "compile_s": compile_s,
            "source_mb": source.stat().st_size / MB, "compiled_mb": compiled.stat().st_size / MB,
            "median_ms": median, "samples_ms": {k: [s * 1000 for s in v] for k, v in samples.items()},
            "rounds": len(samples["forward"]),
            **paired,
            "ratio_of_medians": {"compiled_over_forward": median["compiled"] / median["forward"],
                                 "torch_over_compiled": median["torch"] / median["compiled"]},
            "relevance_error": err,
            "relevance_ops": relevance_ops,
        }
        if args.memory:
            row["memory"] = {c: memory({"contender": c, "model": name, "batch": batch, "seed": args.seed,
                                        "threads": args.threads, "opt_level": args.opt_level,
                                        "path": str(source if c == "forward" else compiled)})
                             for c in CONTENDERS}
        if args.profile:
            directory = pathlib.Path(args.profile)
            directory.mkdir(parents=True, exist_ok=True)
            per_node = profiles({"source": source, "compiled": compiled}, x, args.threads, args.opt_level,
                                args.profile_runs, str(directory / f"{name}-b{batch}"))
            row["profile"] = {label: summarize_profile(nodes, roles) for label, nodes in per_node.items()}
            row["forward_inside"] = forward_inside(per_node)
            row["adjoints_by_layer"] = adjoints_by_layer(per_node["compiled"], pairs)
        rows.append(row)
        print(_row_line(row), file=sys.stderr, flush=True)
    return rows


def _row_line(row: dict) -> str:
    m = row["median_ms"]
    return (f"{row['model']} b{row['batch']}: forward {m['forward']:.0f} ms, compiled {m['compiled']:.0f} ms, "
            f"torch {m['torch']:.0f} ms ({row['rounds']} rounds)")


def _spread(values: list[float]) -> str:
    """Interquartile range relative to the median, in percent."""
    if len(values) < 4:
        return "–"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{100 * (q3 - q1) / statistics.median(values):.0f}%"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), threads {m['threads']}, "
        f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, Python {m['python']}, "
        f"rlrp_onnx {m['rlrp_onnx']}; masks {result['settings'].get('masks', 'steps')}; "
        f"adjoints {result['settings'].get('adjoints', 'conv')}; "
        f"settle {result['settings'].get('settle', 0)}; load average "
        f"{' '.join(f'{v:.1f}' for v in m['load_average'])} at start, "
        f"{' '.join(f'{v:.1f}' for v in result['load_average_end'])} at end; "
        f"total {result['total_s']:.0f} s.",
        "",
        "| model | batch | compile s | (a) forward ms | (b) compiled ms | (c) torch ms | (b)/(a) | (c)/(b) "
        "| IQR a/b/c | rounds | peak MB a/b/c | run MB a/b/c | err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---:|",
    ]
    for row in result["results"]:
        med, s = row["median_ms"], row["samples_ms"]
        mem = row.get("memory")

        def megabytes(key):
            if not mem:
                return "–"
            return "/".join(f"{mem[c][key]:.0f}" if key in mem[c] else "?" for c in CONTENDERS)

        lines.append(
            f"| {row['model']} | {row['batch']} | {row['compile_s']:.1f} | {med['forward']:.0f} | "
            f"{med['compiled']:.0f} | {med['torch']:.0f} | {row['compiled_over_forward']:.2f} | "
            f"{row['torch_over_compiled']:.2f} | {'/'.join(_spread(s[c]) for c in CONTENDERS)} | "
            f"{row['rounds']} | {megabytes('peak_mb')} | {megabytes('run_mb')} | {row['relevance_error']:.0e} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    from reference_nets import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 1 8; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads and torch threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per cell (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each contender first")
    parser.add_argument("--settle", type=int, default=0,
                        help="untimed runs of a contender right before each of its timed runs (steady state: "
                             "its caches are its own, not those the previous contender left)")
    parser.add_argument("--budget", type=float, default=45.0,
                        help="stop a cell's rounds after this many seconds (at least 3 rounds; 0: no limit)")
    parser.add_argument("--opt-level", choices=list(OPT_LEVELS), default="all", help="ORT graph optimisation")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 1 warm-up, batch 1 unless --batches is given, no memory probes")
    parser.add_argument("--cache-dir", help="where exports and compiled models are kept (default: a temp dir)")
    parser.add_argument("--refresh", action="store_true", help="re-export even if the cache has the model")
    parser.add_argument("--seed", type=int, default=0, help="weights and input seed")
    parser.add_argument("--json", help="write all results (with every sample) to this file")
    parser.add_argument("--profile", metavar="DIR", help="also write and summarise ORT profiles into DIR")
    parser.add_argument("--profile-runs", type=int, default=3)
    from rlrp_onnx.explainer import CPU_FORMS

    add_form_options(parser, CPU_FORMS)  # what Explainer compiles a source model in for the CPU provider
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.memory = 3, 1, False
    if args.batches is None:
        args.batches = [1] if args.quick else [1, 8]
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(_probe(json.loads(args.probe))))
        return None
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = machine(args.threads)
    temporary = None
    if args.cache_dir:
        cache = pathlib.Path(args.cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="rlrp-bench-")
        cache = pathlib.Path(temporary.name)
    try:
        rows = [row for name in args.models for row in bench_model(name, args, cache)]
    finally:
        if temporary is not None:
            temporary.cleanup()
    result = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "probe"},
              "results": rows, "load_average_end": list(os.getloadavg()),
              "total_s": time.perf_counter() - started}
    print(markdown(result))
    for row in rows:
        for label, summary in row.get("profile", {}).items():
            print_profile(f"{row['model']} batch {row['batch']}, {label} model (ms per run)", summary)
        if "forward_inside" in row:
            print("- forward nodes slowest inside the compiled model (ms alone → inside): " + ", ".join(
                f"{node} ({op}) {alone:.1f} → {inside:.1f}" for node, op, alone, inside in row["forward_inside"]["slowest"]))
        if row.get("adjoints_by_layer"):
            layers = row["adjoints_by_layer"]
            slowest = sorted(layers, key=lambda entry: entry[1] - entry[2])[:5]
            print(f"- adjoints next to their forward layer, inside the compiled model ({len(layers)} layers): "
                  f"forward {sum(e[1] for e in layers):.0f} ms, adjoints {sum(e[2] for e in layers):.0f} ms; "
                  "most over their layer (forward → adjoint ms): "
                  + ", ".join(f"{layer} {fwd:.1f} → {adj:.1f}" for layer, fwd, adj in slowest))
    print_breakdowns(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

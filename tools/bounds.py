"""What the compiled R-LRP models would cost without their masks or their max-pool routing.

For each model (``--models``, as in ``tools/bench.py``, whose exports it shares through ``--cache-dir``)
it compiles the R-LRP explainer and derives copies that are *deliberately wrong*, only to bound what
a cheaper formulation could save:

no masks
    every mask multiplication of the relevance pass (``Mul`` by a step or by a 0/1 ``Cast`` of a
    comparison) replaced by its relevance input, and the masks removed: the cost of the ReLU/Clip
    masks and of any layout conversions around them.
upsampled routing
    every max-pool routing (recomputed ``MaxPool`` with ``Indices`` + ``ScatterElements``, or where the
    windows tile the input the placement of the per-cell shares) replaced by one
    nearest-neighbour ``Resize`` of the pooled relevance to the input size: the cost of routing beyond
    one pass over the input.
both
    the two together.

The compiled models are in the forms ``rlrp_onnx.Explainer`` takes on the CPU (``--adjoints``, ``--masks``).
All run on the CPU in alternating rounds with the forward pass and the real compiled model
(``tools/bench.py``'s timing); the table gives medians and each variant's time over the forward's.

Usage::

    python tools/bounds.py --cache-dir /tmp/bench               # all four models, batch 1 and 8
    python tools/bounds.py --models resnet50 --batches 8
"""

from __future__ import annotations

import pathlib
import statistics
import sys

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench  # noqa: E402  (shares export, session, example, timing, options and machine line)

COMPARISONS = {"Greater", "Less", "And", "Or", "Not", "Equal", "GreaterOrEqual", "LessOrEqual"}


def _producers(model: onnx.ModelProto) -> dict:
    return {output: node for node in model.graph.node for output in node.output}


def _rewritten(model: onnx.ModelProto, replace) -> onnx.ModelProto:
    """``model`` with each node for which ``replace(node, producers)`` returns nodes replaced by them;
    nodes nothing reads any more are removed."""
    producers = _producers(model)
    nodes = []
    for node in model.graph.node:
        nodes.extend(replace(node, producers) or [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    graph = gs.import_onnx(model)
    graph.cleanup()
    return gs.export_onnx(graph, do_type_check=False)


def without_masks(node, producers):
    """A mask multiplication becomes ``Identity(r)``: ``Mul(r, step)`` or ``Mul(r, Mul(step, step))``
    (``Emitter.step``), and ``Mul(r, Cast(comparison))`` with ``r`` taken from before the two Reshapes that
    order the comparison into the forward pass (``Emitter.masked``)."""
    if node.op_type != "Mul" or not bench.is_relevance(node.name):
        return None
    for i, name in enumerate(node.input):
        factor, r = producers.get(name), node.input[1 - i]
        if bench.is_step_factor(factor, producers) and not bench.is_step_factor(producers.get(r), producers):
            return [helper.make_node("Identity", [r], list(node.output), name=node.name)]
        if factor is not None and factor.op_type == "Cast" and \
                getattr(producers.get(factor.input[0]), "op_type", None) in COMPARISONS:
            return [helper.make_node("Identity", [_unscheduled(r, factor.input[0], producers)],
                                     list(node.output), name=node.name)]
    return None


def _unscheduled(rho: str, mask: str, producers) -> str:
    """``rho`` without the Reshapes ``Reshape(Reshape(r, [-1]), Shape(mask))`` around it, if it has them."""
    outer = producers.get(rho)
    if outer is None or outer.op_type != "Reshape":
        return rho
    shape, inner = producers.get(outer.input[1]), producers.get(outer.input[0])
    if shape is not None and shape.op_type == "Shape" and shape.input[0] == mask and \
            inner is not None and inner.op_type == "Reshape":
        return inner.input[0]
    return rho


def upsampled_routing(node, producers):
    """``ScatterElements(zeros, flat Indices, flat r)`` becomes the flat nearest upsampling of ``r`` to the
    max pool's input size; so does the placement of a tiling max pool's cell shares
    (``rules.pooling._route_by_cells``), before the zeros for input rows and columns past the last window."""
    if node.op_type == "Reshape" and bench.is_relevance(node.name):
        return _upsampled_cells(node, producers)
    if node.op_type != "ScatterElements" or not bench.is_relevance(node.name):
        return None
    flat_r, flat_indices = producers[node.input[2]], producers[node.input[1]]
    pool_input = producers[flat_indices.input[0]].input[0]
    size, upsampled = node.name + "_size", node.name + "_upsampled"
    return [helper.make_node("Shape", [pool_input], [size], name=node.name + "_shape"),
            helper.make_node("Resize", [flat_r.input[0], "", "", size], [upsampled], mode="nearest",
                             name=node.name + "_resize"),
            helper.make_node("Reshape", [upsampled, flat_r.input[1]], list(node.output), name=node.name)]


def _upsampled_cells(node, producers):
    """For Reshape(Concat(Reshape(Concat(Unsqueeze(share), …)), …)), the placement of a tiling max pool's
    cell shares (``rules.pooling._interleaved``), the nearest upsampling by the kernel of the relevance
    the first share was taken from (that share is ``Add(r, −passed)``); None for other Reshapes."""
    rows = producers.get(node.input[0])
    row = producers.get(rows.input[0]) if rows is not None and rows.op_type == "Concat" else None
    cells = producers.get(row.input[0]) if row is not None and row.op_type == "Reshape" else None
    if cells is None or cells.op_type != "Concat" or producers[cells.input[0]].op_type != "Unsqueeze":
        return None
    r = producers[producers[cells.input[0]].input[0]].input[0]
    scales = node.name + "_scales"
    return [helper.make_node("Constant", [], [scales], name=scales, value=helper.make_tensor(
                scales, onnx.TensorProto.FLOAT, [4], [1.0, 1.0, float(len(rows.input)), float(len(cells.input))])),
            helper.make_node("Resize", [r, "", scales], list(node.output), mode="nearest", name=node.name)]


VARIANTS = {
    "no masks": (without_masks,),
    "upsampled routing": (upsampled_routing,),
    "both": (without_masks, upsampled_routing),
}


def bound_model(name: str, args, cache: pathlib.Path) -> list[str]:
    """Table rows (markdown) for one model at each batch size."""
    import rlrp_onnx

    source = bench.export(name, args.seed, cache, refresh=False)
    compiled = rlrp_onnx.compile_model(str(source), **bench.forms(args))
    paths = {"compiled": bench.compiled_path(source, args)}
    rlrp_onnx.save_model(compiled, paths["compiled"])
    for variant, rewrites in VARIANTS.items():
        model = onnx.load(str(paths["compiled"]))
        for rewrite in rewrites:
            model = _rewritten(model, rewrite)
        paths[variant] = source.with_name(f"{source.stem}.bound-{variant.replace(' ', '-')}.onnx")
        onnx.save(model, paths[variant])
    sessions = {"forward": bench.session(source, args.threads, args.opt_level)}
    sessions.update({label: bench.session(path, args.threads, args.opt_level) for label, path in paths.items()})
    rows = []
    for batch in args.batches:
        samples = bench.timed_sessions(sessions, bench.example(batch, args.seed), args)
        median = {label: statistics.median(v) * 1000 for label, v in samples.items()}
        ratios = " | ".join(f"{median[label]:.0f} ({median[label] / median['forward']:.2f})"
                            for label in ["compiled", *VARIANTS])
        rows.append(f"| {name} | {batch} | {median['forward']:.0f} | {ratios} | {len(samples['forward'])} |")
    return rows


def main(argv=None) -> None:
    from rlrp_onnx.explainer import CPU_FORMS

    parser = bench.variants_parser(__doc__.split("\n\n")[0], repeats=8, budget=60.0, default_forms=CPU_FORMS)
    args = parser.parse_args(argv)
    cache = pathlib.Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    print(bench.machine_line(args) + ". Medians in ms (over the forward's):\n")
    print("| model | batch | forward | compiled | " + " | ".join(VARIANTS) + " | rounds |")
    print("|---|---:|---:|---:|" + "---:|" * len(VARIANTS) + "---:|")
    for name in args.models:
        print("\n".join(bound_model(name, args, cache)), flush=True)


if __name__ == "__main__":
    main()

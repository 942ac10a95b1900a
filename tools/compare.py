"""A/B of two compiler versions: the compiled R-LRP models of this tree and of another git revision,
timed against each other and the forward pass in the same alternating rounds.

``tools/bench.py`` measures one compiler against the forward pass and torch; between two runs of it
the machine's state moves its ratios by ±0.2, more than many changes are worth. This tool compiles
each model (``--models``, as in ``tools/bench.py``, whose exports it shares through ``--cache-dir``)
with this tree and with the compiler of ``--against`` (checked out by ``git worktree`` into a
temporary directory and imported from there in a subprocess), then runs forward, old and new in
rotating order in every round (``tools/bench.py``'s timing). Reported: medians in ms, old and new over
the forward (medians of per-round ratios) and new over old (likewise), and the largest difference
between the two relevance maps relative to the old one's largest value (two compilers of R-LRP must
agree up to float rounding).

With ``--masks comparisons`` (or ``--adjoints winograd``) this tree compiles with that form
(``compile_model``'s keyword) and the other revision with its default: ``--against HEAD`` then
measures the option itself.

Usage::

    python tools/compare.py --against 8ce0898 --cache-dir /tmp/bench
    python tools/compare.py --against HEAD~1 --models resnet50 --batches 8 --opt-level basic
    python tools/compare.py --against HEAD --masks comparisons
    python tools/compare.py --against HEAD --adjoints winograd --models vgg16 vgg19
"""

from __future__ import annotations

import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench  # noqa: E402  (shares export, session, example, timing, options and machine line)

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILE = ("import sys, rlrp_onnx; assert rlrp_onnx.__file__.startswith(sys.argv[3]), rlrp_onnx.__file__; "
           "rlrp_onnx.save_model(rlrp_onnx.compile_model(sys.argv[1]), sys.argv[2])")


def compile_at(revision: str, source: pathlib.Path, out: pathlib.Path, checkout: pathlib.Path) -> None:
    """Compile ``source`` into ``out`` with the compiler of ``revision`` (its tree at ``checkout``)."""
    if not checkout.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(checkout), revision],
                       check=True)
    done = subprocess.run([sys.executable, "-c", COMPILE, str(source), str(out), str(checkout)], cwd=checkout,
                          env={"PYTHONPATH": str(checkout), "PATH": ""}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"compare: compiling {source.name} at {revision} failed: "
                         f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")


def compare_model(name: str, args, cache: pathlib.Path, checkout: pathlib.Path) -> list[str]:
    """Table rows (markdown) for one model at each batch size."""
    import rlrp_onnx

    source = bench.export(name, args.seed, cache, refresh=False)
    paths = {"old": cache / f"{source.stem}.at-{args.against}.onnx", "new": cache / f"{source.stem}.ab-new.onnx"}
    compile_at(args.against, source, paths["old"], checkout)
    rlrp_onnx.save_model(rlrp_onnx.compile_model(str(source), **bench.forms(args)), paths["new"])
    sessions = {"forward": bench.session(source, args.threads, args.opt_level)}
    sessions.update({label: bench.session(path, args.threads, args.opt_level) for label, path in paths.items()})
    rows = []
    for batch in args.batches:
        x = bench.example(batch, args.seed)
        relevance = {label: sessions[label].run(["rlrp_relevance"], {bench.INPUT: x})[0] for label in paths}
        difference = float(np.max(np.abs(relevance["new"] - relevance["old"])) / np.max(np.abs(relevance["old"])))
        samples = bench.timed_sessions(sessions, x, args)
        median = {label: statistics.median(v) * 1000 for label, v in samples.items()}

        def paired(num, den):
            return statistics.median(b / a for a, b in zip(samples[den], samples[num]))

        rows.append(f"| {name} | {batch} | {median['forward']:.0f} | {median['old']:.0f} | {median['new']:.0f} | "
                    f"{paired('old', 'forward'):.2f} | {paired('new', 'forward'):.2f} | "
                    f"{paired('new', 'old'):.2f} | {difference:.0e} | {len(samples['forward'])} |")
    return rows


def main(argv=None) -> None:
    parser = bench.variants_parser(__doc__.split("\n\n")[0], repeats=10, budget=45.0, default_forms={})
    parser.add_argument("--against", required=True, help="git revision of the other compiler")
    args = parser.parse_args(argv)
    cache = pathlib.Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{bench.machine_line(args)} (new) against {args.against} (old). "
          "Medians in ms; ratios are medians of per-round ratios:\n")
    print("| model | batch | forward | old | new | old/forward | new/forward | new/old | relevance diff | rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        checkout = pathlib.Path(scratch) / "old"
        try:
            for name in args.models:
                print("\n".join(compare_model(name, args, cache, checkout)), flush=True)
        finally:
            if checkout.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)


if __name__ == "__main__":
    main()

"""Compile full-size ResNet-50, DenseNet-121 and MobileNetV3-Large and check coverage and correctness.

The networks have torchvision's layer shapes (3x224x224, 1000 classes) and random weights:
``resnet50`` from ``tools/reference_nets.py``, ``densenet121`` and ``mobilenet_v3_large`` from
``tests/family_models.py``. Each is exported by the chosen torch exporters (BatchNorm folded, or kept with
``--keep-bn``), then for each export:

* coverage: the share of relevance-path nodes a rule covers, as ``rlrp-onnx inspect`` reports it;
* compile time, and the sizes of the source and compiled files;
* correctness on one batch of ``--batch`` N(0, 1) images: the relative L2 error of the relevance against
  torch input × gradient with the gates detached (tests/gates.py), with the ReLU/ReLU6 kinks aligned on
  the source model's own decisions (tests/oracle.py) and without (plain);
* that the relevance pass has no Div or Reciprocal.

Usage::

    python tools/coverage_fullsize.py                                  # all three, both exporters
    python tools/coverage_fullsize.py --models densenet121 --exporters dynamo --keep-bn

The opt-in test ``tests/test_fullsize.py`` (``pytest --run-slow``) runs the same checks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for folder in (ROOT / "tests", ROOT / "tools"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402

MODELS = ("resnet50", "densenet121", "mobilenet_v3_large")
EXPORTERS = ("torchscript", "dynamo")


def build(name: str, seed: int = 0):
    """The torch network ``name`` (one of MODELS), eval mode."""
    import family_models
    import reference_nets

    constructors = {"resnet50": reference_nets.resnet50, "densenet121": family_models.densenet121,
                    "mobilenet_v3_large": family_models.MobileNetV3Large}
    return constructors[name](seed=seed).eval()


def coverage(path) -> tuple[int, int]:
    """(nodes on the relevance path, nodes covered), as ``rlrp-onnx inspect`` counts them."""
    import onnx

    from rlrp_onnx.compiler import plan_model
    from rlrp_onnx.methods import choose
    from rlrp_onnx.plan import gap

    plan, _ = plan_model(onnx.load(str(path)), str(path), choose(), check=False)
    return len(plan.nodes), sum(1 for node in plan.nodes if not gap(plan.context, node))


def check(name: str, exporter: str, fold: bool, workdir, batch: int = 2, model=None) -> dict:
    """Export, inspect, compile, run and compare one network; returns the measurements."""
    import onnx

    from exporting import export_onnx
    from gates import detached_gates
    from oracle import branch_decisions, input_times_gradient, relative_l2_error
    from rlrp_onnx import compile_model, save_model
    from rlrp_onnx.contract import RELEVANCE_OUTPUT
    from test_oracle import run

    model = model if model is not None else build(name)
    for module in model.modules():  # the oracle's hooks need the activation's input intact
        if getattr(module, "inplace", False):
            module.inplace = False
    path = pathlib.Path(workdir) / f"{name}-{exporter}-{'fold' if fold else 'keep'}.onnx"
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    start = time.perf_counter()
    export_onnx(model, x, path, exporter, fold_batchnorm=fold, verify=False)
    exported = time.perf_counter()
    nodes, covered = coverage(path)
    compiled = compile_model(path)
    compiled_at = time.perf_counter()
    out_path = path.with_suffix(".rlrp.onnx")
    save_model(compiled, out_path)
    relevance = run(compiled, {"image": x})[RELEVANCE_OUTPUT]
    with detached_gates(model):
        aligned = input_times_gradient(model, x, kinks=branch_decisions(path, x))[0]
        plain = input_times_gradient(model, x)[0]
    names = {n.name for n in onnx.load(str(path)).graph.node}
    divisions = sorted({n.op_type for n in compiled.graph.node if n.name not in names} & {"Div", "Reciprocal"})
    return {
        "model": name, "exporter": exporter, "batchnorm": "fold" if fold else "keep",
        "nodes": nodes, "covered": covered, "coverage": 100.0 * covered / max(nodes, 1),
        "export_s": round(exported - start, 1), "compile_s": round(compiled_at - exported, 1),
        "source_mb": round(path.stat().st_size / 2**20, 2), "compiled_mb": round(out_path.stat().st_size / 2**20, 2),
        "error_aligned": relative_l2_error(relevance, aligned).tolist(),
        "error_plain": relative_l2_error(relevance, plain).tolist(),
        "divisions": divisions,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--exporters", nargs="+", choices=EXPORTERS, default=list(EXPORTERS))
    parser.add_argument("--keep-bn", action="store_true", help="export with BatchNorm kept (default: folded)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            model = build(name)
            for exporter in args.exporters:
                row = check(name, exporter, not args.keep_bn, workdir, args.batch, model)
                rows.append(row)
                print(f"{name:<19} {exporter:<11} {row['batchnorm']:<4} coverage {row['covered']}/{row['nodes']} "
                      f"({row['coverage']:.1f}%)  export {row['export_s']}s compile {row['compile_s']}s  "
                      f"{row['source_mb']} → {row['compiled_mb']} MB  error aligned "
                      f"{max(row['error_aligned']):.1e} plain {max(row['error_plain']):.1e}  "
                      f"divisions {row['divisions'] or 'none'}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["coverage"] == 100.0 and not r["divisions"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

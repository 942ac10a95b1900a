"""Size cost of each rule and composite: compiled file size over source file size.

    python tools/composite_sizes.py [MODEL]      # default: the shipped EfficientNet-Lite0

Rules that need transformed weights (γ, z⁺, α-β, flat, w²) store them for the layers that use them;
R-LRP and ε reuse the source weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlrp_onnx import compile_model, save_model  # noqa: E402
from rlrp_onnx.methods import BOUNDED, COMPOSITES, RULE_NAMES, Options  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(ROOT / "models" / "efficientnet_lite0.onnx"))
    parser.add_argument("--low", type=float, default=-1.0, help="z^B bounds (default: the [-1, 1] input range)")
    parser.add_argument("--high", type=float, default=1.0)
    args = parser.parse_args(argv)
    bounds = Options(low=args.low, high=args.high)
    source = Path(args.model).stat().st_size
    print(f"{args.model}: {source / 1e6:.2f} MB\n\n| method | compiled MB | × source |\n|---|---|---|")
    methods = [{"rule": "rlrp"}] + [{"rule": r} for r in RULE_NAMES] + [{"composite": c} for c in COMPOSITES]
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            out = Path(folder) / "compiled.onnx"
            options = bounds if set(method.values()) & set(BOUNDED) else None
            save_model(compile_model(args.model, options=options, **method), out)
            size = out.stat().st_size
            print(f"| {next(iter(method.values()))} | {size / 1e6:.2f} | {size / source:.3f} |")


if __name__ == "__main__":
    main()

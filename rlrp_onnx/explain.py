"""Explain photos and write heatmaps: the job behind ``rlrp-onnx explain`` and ``demo``."""

from __future__ import annotations

import re
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
    nonfinite: int = 0  # relevance values that are NaN or infinite (lrp0's 0/0), black or saturated in the heatmap


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
    written, or an image that a heatmap would overwrite; ``check_files`` finds these before anything is
    explained."""
    check_files(images, out_dir, top_k, preprocessing)
    out_dir = Path(out_dir)
    channel_axis = 0 if preprocessing.layout == "NCHW" else -1
    results = []
    for start in range(0, len(images), explainer.batch_size):
        paths = list(images[start:start + explainer.batch_size])
        batch, photos = prepare(paths, preprocessing)
        found = explainer.explain(batch, None if target is None else [target] * len(paths), top_k)
        for path, photo, relevance, classes, scores in zip(paths, photos, *found):
            ranked = top_k is not None
            explained = zip(relevance, classes, scores) if ranked else [(relevance, classes, scores)]
            for stem, (r, c, s) in zip(_stems(path, top_k), explained):
                heatmap, overlay, *relevance_file = (out_dir / name for name in _written(stem, save_relevance))
                save_png(heatmap_rgb(r, channel_axis), heatmap)
                save_png(overlay_rgb(photo, r, channel_axis=channel_axis), overlay)
                saved = relevance_file[0] if relevance_file else None
                if saved is not None:
                    _save_npy(np.asarray(r, dtype=np.float32), saved)
                results.append(Explanation(str(path), int(c), class_name(labels, int(c)), float(s), heatmap, overlay,
                                           saved, int(np.count_nonzero(~np.isfinite(r)))))
        if progress is not None:
            progress(min(start + explainer.batch_size, len(images)), len(images))
    return results


def _save_npy(array: np.ndarray, path: Path) -> None:
    write_file(path, lambda name: np.save(name, array))


def _stems(image, top_k: int | None) -> list[str]:
    """The stems of the files written for ``image``: its own, or one per class of ``top_k``."""
    stem = Path(image).stem
    return [stem] if top_k is None else [f"{stem}_top{k}" for k in range(1, top_k + 1)]


PICTURES = ("_heatmap.png", "_overlay.png")  # the images written per explained class, after its stem


def _written(stem: str, save_relevance: bool) -> list[str]:
    """The names of the files written for one explained class: heatmap, overlay[, relevance]."""
    return [stem + picture for picture in PICTURES] + ([f"{stem}_relevance.npy"] if save_relevance else [])


def check_files(images: Sequence[str], out_dir, top_k: int | None = None,
                preprocessing: Preprocessing | None = None) -> None:
    """RlrpError for what ``explain_images`` refuses before it explains anything: two images that would
    write the same heatmap files, a file that is not an image or that ``preprocessing`` cannot resize
    (read from its header), an output folder that cannot be written, an image that a file written into it
    would overwrite."""
    _check_stems(images)
    check_images(images, preprocessing)
    check_output_folder(out_dir)
    _check_overwrites(images, Path(out_dir), top_k)


def _check_overwrites(images: Sequence[str], out_dir: Path, top_k: int | None) -> None:
    """RlrpError naming the first image that a heatmap or overlay written for another image (or itself)
    would overwrite: a file of ``out_dir`` named so, or a link there to the image (a relevance file is
    never an image)."""
    if not out_dir.is_dir():
        return
    stems = {Path(path).stem: path for path in images}
    inputs = {Path(path).resolve(): path for path in images}
    for entry in out_dir.iterdir():
        kind = next((picture for picture in PICTURES if entry.name.endswith(picture)), None)
        hit = inputs.get(entry.resolve()) if kind else None
        if hit is None:
            continue
        stem = entry.name[:-len(kind)]
        if top_k is not None:
            stem, _, rank = stem.rpartition("_top")
            if not re.fullmatch(r"[1-9][0-9]*", rank) or int(rank) > top_k:
                continue
        if stem in stems:
            raise RlrpError(f"{hit}: explaining {stems[stem]} would overwrite this image with its "
                            f"{entry.name[len(stem):].lstrip('_')}; choose another output folder")


def _check_stems(images: Sequence[str]) -> None:
    """RlrpError naming the first two different images whose heatmaps would have the same name (one file
    named twice, however spelled, is not two images)."""
    seen: dict[str, str] = {}
    for path in images:
        first = seen.setdefault(Path(path).stem, str(path))
        if Path(first).resolve() != Path(path).resolve():
            raise RlrpError(f"{first} and {path} would write the same heatmap files "
                            f"({Path(path).stem}_heatmap.png); rename one or explain them separately")

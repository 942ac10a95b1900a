"""Draw relevance maps: a blue-white-red heatmap, an overlay on the photo, and PNG output."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import RlrpError
from .files import write_file

DEFAULT_PERCENTILE = 99.5
NAN_COLOR = (0, 0, 0)


def relevance_map(relevance: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """One sample's relevance as an H×W map: summed over ``channel_axis`` when it has three axes."""
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.ndim == 3:
        return relevance.sum(axis=channel_axis)
    if relevance.ndim == 2:
        return relevance
    raise RlrpError(f"expected relevance of shape (C, H, W) or (H, W); got {relevance.shape}")


def normalize(relevance: np.ndarray, channel_axis: int = 0, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """The H×W relevance map divided by a symmetric bound and clipped to [-1, 1]; 0 stays 0.

    The bound is the ``percentile`` of |R| over the finite pixels, so a few extreme pixels saturate
    instead of washing the rest out (100 gives the plain max |R|). When that percentile is 0 (sparse
    maps) the max |R| is used; an all-zero map stays all zero. ±inf saturate, NaN pixels stay NaN.
    """
    values = relevance_map(relevance, channel_axis)
    magnitude = np.abs(values[np.isfinite(values)])
    bound = float(np.percentile(magnitude, percentile)) if magnitude.size else 0.0
    if bound <= 0 and magnitude.size:
        bound = float(magnitude.max())
    if bound <= 0:  # every finite pixel is 0: keep zeros, saturate infinities, keep NaN
        return np.sign(values)
    return np.clip(values / bound, -1.0, 1.0)


def heatmap_rgb(relevance: np.ndarray, channel_axis: int = 0, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """A uint8 H×W×3 heatmap of one sample's relevance, (C, H, W) or (H, W).

    Diverging blue-white-red (matplotlib's "bwr", written out): −bound is blue, 0 is white, +bound
    is red, with the symmetric bound of :func:`normalize` (the 99.5th percentile of |R| by default).
    NaN pixels are black.
    """
    return _colors(normalize(relevance, channel_axis, percentile))


def overlay_rgb(
    photo: np.ndarray,
    relevance: np.ndarray,
    alpha: float = 0.8,
    channel_axis: int = 0,
    percentile: float = DEFAULT_PERCENTILE,
) -> np.ndarray:
    """The heatmap blended on a grayscale copy of ``photo`` (uint8 H×W×3), as uint8 H×W×3.

    Each pixel takes ``alpha · |r|`` of the heatmap colour, with ``r`` the normalized relevance: where
    relevance is near zero the photo shows through, where it is large the colour dominates.
    """
    if not 0 <= alpha <= 1:
        raise RlrpError(f"overlay alpha must be between 0 and 1; got {alpha}")
    photo = np.asarray(photo)
    scaled = normalize(relevance, channel_axis, percentile)
    if photo.ndim != 3 or photo.shape[:2] != scaled.shape:
        raise RlrpError(f"photo of shape {photo.shape} does not match relevance of size {scaled.shape}")
    gray = photo[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    weight = alpha * np.nan_to_num(np.abs(scaled), nan=1.0)[..., None]
    blended = (1 - weight) * gray[..., None] + weight * _colors(scaled)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def check_output_folder(folder: str | os.PathLike) -> None:
    """RlrpError when ``save_png`` could not write into ``folder``: the folder, or the nearest of its
    parents that exists, is a file or cannot be written (nothing is created here)."""
    folder = os.fspath(folder)
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(folder) else f"is inside a file, {existing}"
        raise RlrpError(f"cannot write heatmaps: the output folder {folder} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RlrpError(f"cannot write heatmaps into {folder}: {existing} is not writable")


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 H×W×3 (or H×W) array as a PNG, creating missing folders; RlrpError on failure."""
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    write_file(path, lambda name: image.save(name, format="PNG"))


def _colors(scaled: np.ndarray) -> np.ndarray:
    """bwr colours of values in [-1, 1]: blue (0, 0, 1) → white → red (1, 0, 0); NaN → NAN_COLOR."""
    values = np.nan_to_num(scaled, nan=0.0)
    positive, negative = np.clip(values, 0, 1), np.clip(-values, 0, 1)
    rgb = np.stack([1 - negative, 1 - positive - negative, 1 - positive], axis=-1)
    colors = np.round(rgb * 255).astype(np.uint8)
    colors[np.isnan(scaled)] = NAN_COLOR
    return colors

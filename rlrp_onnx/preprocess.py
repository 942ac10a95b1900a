"""Turn photos into the input tensor a classifier expects, keeping the photos as the model saw them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RlrpError

RESIZES = ("stretch", "shorter_side_then_center_crop")
RESAMPLES = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
CHANNEL_ORDERS = ("RGB", "BGR", "gray")  # gray: one channel, the photo's luminance
LAYOUTS = ("NCHW", "NHWC")

ImageSource = Union[np.ndarray, str, os.PathLike]


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RlrpError(f"unknown {option} {value!r}: choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB photos become a model's input tensor.

    ``size`` is the (height, width) fed to the model. ``resize`` is "stretch" (resize to ``size``,
    ignoring the aspect ratio) or "shorter_side_then_center_crop" (scale the photo, keeping its aspect
    ratio, so that ``size`` covers ``crop_ratio`` of each side, then cut ``size`` from the centre:
    224 with ratio 0.875 is torchvision's Resize(256) + CenterCrop(224)). Pixel values go
    ``(raw * scale - mean) / std`` with raw in [0, 255]; ``mean`` and ``std`` hold one value for all
    channels or one per channel, in the model's ``channel_order`` ("gray": one channel, the photo's
    luminance as Pillow computes it).
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "stretch"
    crop_ratio: float = 0.875
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise RlrpError(f"image size must be two positive numbers (height, width); got {self.size}")
        _check_choice("resize", self.resize, RESIZES)
        _check_choice("channel order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("layout", self.layout, LAYOUTS)
        _check_choice("resample", self.resample, tuple(RESAMPLES))
        if not 0 < self.crop_ratio <= 1:
            raise RlrpError(f"crop ratio must be in (0, 1]; got {self.crop_ratio}")
        if not {len(self.mean), len(self.std)} <= {1, self.channels}:
            raise RlrpError(f"mean and std need one value, or one per channel ({self.channels}); "
                            f"got {self.mean} and {self.std}")
        if any(value == 0 for value in self.std):
            raise RlrpError(f"std must not contain zero; got {self.std}")
        if not (np.isfinite(self.scale) and self.scale > 0):  # 0 would feed every photo as the same image
            raise RlrpError(f"scale must be a positive number; got {self.scale}")
        if not np.isfinite([*self.mean, *self.std]).all():
            raise RlrpError(f"mean and std must be finite; got {self.mean} and {self.std}")

    @property
    def channels(self) -> int:
        """The model's colour channels: 1 for "gray", else 3."""
        return 1 if self.channel_order == "gray" else 3


EXIF_ORIENTATION, TRANSPOSING_ORIENTATIONS = 0x0112, (5, 6, 7, 8)  # orientations that swap width and height

PRESETS: dict[str, Preprocessing] = {
    # x / 127.5 - 1, i.e. [-1, 1], the whole photo resized to 224×224 (models/README.md: with a
    # centre crop, chelsea's face is cut and the top class flips between tiger cat and Egyptian cat).
    "efficientnet-lite0": Preprocessing(
        size=(224, 224), resize="stretch",
        scale=1 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0),
    ),
    "imagenet": Preprocessing(
        size=(224, 224), resize="shorter_side_then_center_crop", crop_ratio=0.875,
        scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    ),
    # [0, 1]; the whole shorter side is kept, so photos are cropped but never distorted.
    "unit": Preprocessing(size=(224, 224), resize="shorter_side_then_center_crop", crop_ratio=1.0),
    # 0 to 255, unscaled: for a model that takes integer pixels and scales them itself.
    "pixels": Preprocessing(size=(224, 224), resize="shorter_side_then_center_crop", crop_ratio=1.0, scale=1.0),
}


def get_preset(name: str) -> Preprocessing:
    """The preset called ``name``; RlrpError listing the known ones otherwise."""
    if name not in PRESETS:
        raise RlrpError(f"unknown preprocessing preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def infer_preprocessing(input_shape: Sequence, base: Preprocessing = PRESETS["unit"], **given) -> Preprocessing:
    """``base`` adapted to a model image input of shape ``input_shape``, then the fields ``given`` (a
    caller's own choices, which win) set, all checked together (a one-channel model with a preset's
    three means and its own ``mean``).

    The layout is NCHW when dimension 1 holds the channels (3, or 1 for a grayscale model) and NHWC
    when dimension 3 does (when both could, ``given`` must say which); a grayscale model reads the
    photos' luminance ("gray"), with a preset's per-colour mean and std made one value where they
    agree (else it needs its own); a preset's per-colour mean and std follow the colours where
    ``given`` turns RGB into BGR or back (``given`` ones are in the model's order). Fixed (integer)
    height and width replace ``base.size`` (a ``given`` size must match them); symbolic ones (strings or
    None, as ONNX Runtime reports them) keep it. With no preset, ``base`` is the "unit" preset ([0, 1]
    pixels).
    """
    shape = list(input_shape)
    if len(shape) != 4:
        raise RlrpError(f"the image input has shape {shape}; expected 4 dimensions (NCHW or NHWC)")
    layouts = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if shape[axis] in (1, 3)]
    if not layouts:
        raise RlrpError(f"the image input has shape {shape}; expected 3 colour channels or 1 gray one "
                        "(NCHW or NHWC)")
    if len(layouts) > 1 and given.get("layout") not in layouts:
        raise RlrpError(f"the image input has shape {shape}: its channels may be axis 1 or axis 3; give the "
                        "layout (--layout NCHW or NHWC)")
    layout = given["layout"] if len(layouts) > 1 else layouts[0]
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    order = "gray" if channels == 1 else ("RGB" if base.channel_order == "gray" else base.channel_order)
    size = tuple(fixed if _is_fixed(fixed) else default for fixed, default in zip((height, width), base.size))
    if "size" in given and any(_is_fixed(s) and s != g for s, g in zip((height, width), given["size"])):
        raise RlrpError(f"the model takes images of {height}x{width} (height x width); the size given, "
                        f"{'x'.join(map(str, given['size']))}, would not fit it (--size)")
    fields = {"layout": layout, "size": size, "channel_order": order, **given}
    if (fields["channel_order"] == "gray") != (channels == 1):
        raise RlrpError(f"the model takes {channels} channel(s); channel order {fields['channel_order']} gives "
                        f"{1 if fields['channel_order'] == 'gray' else 3} (--channel-order)")
    if {fields["channel_order"], base.channel_order} == {"RGB", "BGR"}:  # the preset's colours, reordered
        fields.update({name: getattr(base, name)[::-1] for name in ("mean", "std") if name not in given})
    if fields["channel_order"] == "gray":
        spread = {name: given.get(name, getattr(base, name)) for name in ("mean", "std")}
        fields.update({name: values[:1] for name, values in spread.items() if len(set(values)) == 1})
        if any(len(set(values)) > 1 for values in spread.values()):
            raise RlrpError(f"the model takes one gray channel, but the preprocessing has a mean and std per "
                            f"colour channel ({spread['mean']}, {spread['std']}): give one of each (--mean, --std)")
    return dataclasses.replace(base, **fields)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo (PNG, JPEG, anything Pillow reads) as uint8 RGB, height × width × 3.

    EXIF orientation is applied; grayscale and palette images become RGB (16-bit ones scaled to 8
    bits); transparent pixels are put on white. Missing, unreadable, non-image or truncated files,
    floating-point images and images above Pillow's ``Image.MAX_IMAGE_PIXELS`` raise RlrpError naming
    the file.
    """
    with _opened(path) as image:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image), os.fspath(path))


def check_images(paths: Sequence[str | os.PathLike], preprocessing: Preprocessing | None = None) -> None:
    """RlrpError for the first file that ``load_image`` would refuse from its header alone (missing,
    unreadable, not an image, too large), or ``preprocessing`` could not resize (``_check_resizable``),
    without decoding any pixels: a long run finds these before it starts. A file whose pixels are
    truncated is still found when it is read."""
    for path in paths:
        with _opened(path) as image:
            if preprocessing is not None:
                width, height = image.size
                if image.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
                    width, height = height, width
                _check_resizable(height, width, preprocessing, os.fspath(path))


@contextlib.contextmanager
def _opened(path: str | os.PathLike):
    """The image at ``path`` opened by Pillow, with every way of failing turned into RlrpError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RlrpError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # an error, not 2 raw lines
            with Image.open(path) as image:
                if image.mode == "F":  # convert("RGB") would truncate each value to an integer, silently
                    raise RlrpError(f"image {path} has floating-point pixels, whose range is unknown; "
                                    "save it with 8 or 16 bits per channel")
                yield image
    except UnidentifiedImageError:
        raise RlrpError(f"not an image, or a format Pillow cannot read: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RlrpError(f"image too large to read safely: {path} ({error})") from None
    except OSError as error:
        if error.strerror:  # the file system refused: a folder, no permission, ...
            raise RlrpError(f"cannot read image {path}: {error.strerror}") from None
        raise RlrpError(f"cannot decode image {path}, the file is corrupt or truncated: {error}") from None


def prepare(
    images: ImageSource | Sequence[ImageSource], preprocessing: Preprocessing
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Batch ``images`` (paths or uint8 RGB H×W×3 arrays) for a model.

    Returns the float32 input tensor and, aligned with it, the photos as the model saw them (uint8
    RGB, after resizing and cropping, before normalisation), ready to draw heatmaps on.
    """
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    photos = [_resize(_as_rgb_array(image), preprocessing,
                      os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image {index}")
              for index, image in enumerate(images)]
    if not photos:
        raise RlrpError("no images to prepare")
    if preprocessing.channel_order == "gray":
        pixels = np.stack([np.asarray(Image.fromarray(photo).convert("L")) for photo in photos])[..., None]
    else:
        pixels = np.stack(photos)
    batch = pixels.astype(np.float32) * np.float32(preprocessing.scale)
    if preprocessing.channel_order == "BGR":
        batch = batch[..., ::-1]
    batch = (batch - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)
    if preprocessing.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32), photos


def _is_fixed(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim > 0


def _to_rgb(image: Image.Image, path: str) -> np.ndarray:
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grayscale ("I" in older Pillow)
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):  # a 32-bit image: range unknown
            raise RlrpError(f"image {path} has pixel values outside 0..65535, whose range is unknown; "
                            "save it with 8 or 16 bits per channel")
        gray = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _as_rgb_array(image: ImageSource) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RlrpError(f"expected a uint8 RGB image of shape (H, W, 3); got {array.dtype} {array.shape}")
    return array


def _resize(photo: np.ndarray, preprocessing: Preprocessing, name: str) -> np.ndarray:
    """The photo resized (and cropped) to ``preprocessing.size``, as uint8 RGB (``_check_resizable``
    first)."""
    out_h, out_w = preprocessing.size
    resample = RESAMPLES[preprocessing.resample]
    image = Image.fromarray(photo)
    if preprocessing.resize == "stretch":
        return np.array(image.resize((out_w, out_h), resample))
    new_h, new_w = _check_resizable(*photo.shape[:2], preprocessing, name)
    top, left = round((new_h - out_h) / 2), round((new_w - out_w) / 2)
    resized = image.resize((new_w, new_h), resample)
    return np.array(resized.crop((left, top, left + out_w, top + out_h)))


def _check_resizable(in_h: int, in_w: int, preprocessing: Preprocessing, name: str) -> tuple[int, int] | None:
    """The size a photo is resized to before its centre is cut out (None for "stretch"); RlrpError naming
    it where that would exceed Pillow's ``Image.MAX_IMAGE_PIXELS`` (a thin strip's long side grows with its
    short one)."""
    if preprocessing.resize == "stretch":
        return None
    # Like torchvision's Resize + CenterCrop: the binding side becomes size / ratio, the other one
    # keeps the aspect ratio (truncated), then the centre is cut out.
    out_h, out_w = preprocessing.size
    if out_h * in_w >= out_w * in_h:
        new_h = round(out_h / preprocessing.crop_ratio)
        new_w = max(out_w, int(new_h * in_w / in_h))
    else:
        new_w = round(out_w / preprocessing.crop_ratio)
        new_h = max(out_h, int(new_w * in_h / in_w))
    if Image.MAX_IMAGE_PIXELS and new_h * new_w > Image.MAX_IMAGE_PIXELS:
        raise RlrpError(f"{name}: this {in_w}x{in_h} image would be resized to {new_w}x{new_h} before its centre "
                        f"is cut out, more than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels; crop it first, "
                        "or resize by stretching")
    return new_h, new_w

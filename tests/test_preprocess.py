"""Preprocessing: reading photos, presets, resizing, normalisation and layout."""

import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image
from skimage import data

from rlrp_onnx.errors import RlrpError
from rlrp_onnx.preprocess import (
    PRESETS,
    Preprocessing,
    check_images,
    get_preset,
    infer_preprocessing,
    load_image,
    prepare,
)


@pytest.fixture
def chelsea():
    return data.chelsea()  # 300 × 451 RGB


def save(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_load_jpeg_and_png_give_uint8_rgb(tmp_path, chelsea):
    png = save(tmp_path, "cat.png", Image.fromarray(chelsea))
    jpeg = save(tmp_path, "cat.jpg", Image.fromarray(chelsea), quality=95)
    assert np.array_equal(load_image(png), chelsea)
    loaded = load_image(jpeg)
    assert loaded.dtype == np.uint8 and loaded.shape == chelsea.shape
    assert np.abs(loaded.astype(int) - chelsea).mean() < 4


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_other_modes_become_rgb(tmp_path, chelsea, mode):
    source = Image.fromarray(chelsea)
    if mode == "I;16":  # the photo's gray levels over the 16-bit range
        image = Image.fromarray((np.asarray(source.convert("L"), np.uint16) * 257).astype(np.uint16))
    else:
        image = source.convert(mode)
    loaded = load_image(save(tmp_path, "cat.png", image))
    assert loaded.dtype == np.uint8 and loaded.shape == chelsea.shape
    assert 60 < loaded.mean() < 200  # not black or blown out


def test_16_bit_brightness_follows_the_mode_not_the_content(tmp_path):
    """Constant 16-bit images of 255 and 256 are both nearly black (the range is 65535 for both)."""
    dark = [load_image(save(tmp_path, f"g{v}.png", Image.fromarray(np.full((4, 4), v, np.uint16)))) for v in (255, 256)]
    assert Image.open(tmp_path / "g255.png").mode.startswith("I")
    assert (dark[0] == 1).all() and (dark[1] == 1).all()
    assert (load_image(save(tmp_path, "white.png", Image.fromarray(np.full((4, 4), 65535, np.uint16)))) == 255).all()


def test_floating_point_and_32_bit_images_are_refused(tmp_path):
    """A float TIFF of values in [0, 1] was read as a black photo (each value truncated to 0 or 1), a
    32-bit one past 65535 as a white one."""
    path = save(tmp_path, "scan.tiff", Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)))
    assert Image.open(path).mode == "F"
    for read in (load_image, lambda p: check_images([p])):
        with pytest.raises(RlrpError, match="image .*scan.tiff has floating-point pixels"):
            read(path)
    wide = save(tmp_path, "wide.tiff", Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) * 10**6))
    assert Image.open(wide).mode == "I"
    with pytest.raises(RlrpError, match="image .*wide.tiff has pixel values outside 0..65535"):
        load_image(wide)


def test_image_above_pillows_warning_size_is_one_clear_error(tmp_path, monkeypatch):
    """Pillow warns (two raw lines on stderr) above MAX_IMAGE_PIXELS, refuses above twice that: both refused."""
    path = save(tmp_path, "big.png", Image.new("RGB", (12, 12)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: a warning, not yet an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning still escaping fails the test
        with pytest.raises(RlrpError, match="too large to read safely: .*big.png"):
            load_image(path)


def test_a_thin_strip_is_refused_before_its_resize_takes_gigabytes(tmp_path):
    """Resize + centre crop scales a 1-pixel strip's long side with its short one: 1 x 20000 would be
    5120000 x 256 before the crop (3.9 GB); refused by name with Pillow's pixel limit, stretched it runs."""
    strip = save(tmp_path, "strip.png", Image.new("RGB", (20000, 1), (200, 10, 10)))
    with pytest.raises(RlrpError, match=r"strip.png: this 20000x1 image would be resized to 5120000x256 before"):
        prepare([strip], PRESETS["imagenet"])
    with pytest.raises(RlrpError, match=r"^image 1: this 400000x1 image"):
        prepare([np.zeros((4, 4, 3), np.uint8), np.zeros((1, 400000, 3), np.uint8)], PRESETS["unit"])
    batch, photos = prepare([strip], dataclasses.replace(PRESETS["imagenet"], resize="stretch"))
    assert batch.shape == (1, 3, 224, 224) and (photos[0] == [200, 10, 10]).all()


def test_transparent_pixels_are_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent black
    loaded = load_image(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert (loaded[:2] == [255, 0, 0]).all()
    assert (loaded[2:] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    loaded = load_image(save(tmp_path, "phone.jpg", image, exif=exif))
    assert loaded.shape == (20, 10, 3)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(RlrpError, match="not found.*nowhere.png"):
        load_image(tmp_path / "nowhere.png")


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(RlrpError, match="notes.jpg"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(RlrpError, match=str(tmp_path)):
        load_image(tmp_path)


def test_truncated_jpeg_names_the_file(tmp_path, chelsea):
    full = save(tmp_path, "full.jpg", Image.fromarray(chelsea))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(RlrpError, match="cut.jpg"):
        load_image(cut)


def test_check_images_reads_headers_only(tmp_path, chelsea):
    full = save(tmp_path, "full.jpg", Image.fromarray(chelsea))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    check_images([full, cut])  # a truncated file has a whole header: found when it is read
    with pytest.raises(RlrpError, match="not an image.*notes.png"):
        check_images([full, text])
    with pytest.raises(RlrpError, match="image not found.*gone.png"):
        check_images([full, tmp_path / "gone.png"])
    with pytest.raises(RlrpError, match=f"cannot read image {tmp_path}"):
        check_images([tmp_path])


def test_efficientnet_preset_maps_pixels_to_minus_one_one():
    photo = np.array([[[0, 127, 255]]], np.uint8)
    batch, _ = prepare(photo, dataclasses.replace(PRESETS["efficientnet-lite0"], size=(1, 1)))
    assert np.allclose(batch[0, :, 0, 0], [0 / 127.5 - 1, 127 / 127.5 - 1, 255 / 127.5 - 1], atol=1e-6)


def test_imagenet_preset_uses_torchvision_mean_and_std():
    photo = np.full((2, 2, 3), 255, np.uint8)
    batch, _ = prepare(photo, dataclasses.replace(PRESETS["imagenet"], size=(2, 2)))
    expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(batch[0, :, 0, 0], expected, atol=1e-6)


def test_prepare_chelsea_with_efficientnet_preset(chelsea):
    batch, photos = prepare([chelsea, chelsea], PRESETS["efficientnet-lite0"])
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    assert -1.0 <= batch.min() < -0.5 and 0.5 < batch.max() <= 1.0
    assert len(photos) == 2 and photos[0].shape == (224, 224, 3) and photos[0].dtype == np.uint8
    # the tensor is the displayed photo, scaled
    assert np.allclose(batch[0], photos[0].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)


def test_center_crop_matches_resize_then_crop_by_hand(chelsea):
    _, (photo,) = prepare(chelsea, PRESETS["imagenet"])
    # torchvision Resize(256) + CenterCrop(224): 300 × 451 → 256 × 384, crop at (16, 80)
    resized = np.asarray(Image.fromarray(chelsea).resize((384, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(photo, resized[16:240, 80:304])


def test_stretch_keeps_the_whole_photo(chelsea):
    _, (photo,) = prepare(chelsea, Preprocessing(size=(30, 45), resize="stretch"))
    assert photo.shape == (30, 45, 3)
    assert abs(photo.mean() - chelsea.mean()) < 2


def test_unit_preset_bgr_and_nhwc(tmp_path, chelsea):
    path = save(tmp_path, "cat.png", Image.fromarray(chelsea))
    options = dataclasses.replace(PRESETS["unit"], size=(8, 12), channel_order="BGR", layout="NHWC")
    batch, (photo,) = prepare(path, options)
    assert batch.shape == (1, 8, 12, 3)
    assert np.allclose(batch[0], photo[..., ::-1] / 255, atol=1e-6)
    assert 0 <= batch.min() and batch.max() <= 1


def test_prepare_rejects_missing_file(tmp_path):
    with pytest.raises(RlrpError, match="gone.png"):
        prepare([tmp_path / "gone.png"], PRESETS["unit"])


@pytest.mark.parametrize("photo", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8)])
def test_prepare_rejects_arrays_that_are_not_uint8_rgb(photo):
    with pytest.raises(RlrpError, match="expected a uint8 RGB image of shape"):
        prepare([photo], PRESETS["unit"])


@pytest.mark.parametrize(
    "options, word",
    [
        ({"resize": "squash"}, "resize"),
        ({"layout": "CHW"}, "layout"),
        ({"channel_order": "RBG"}, "channel order"),
        ({"crop_ratio": 1.5}, "crop ratio"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"size": (0, 224)}, "size"),
        ({"scale": 0.0}, "scale must be a positive number"),
        ({"scale": -1 / 255}, "scale must be a positive number"),
        ({"scale": float("inf")}, "scale must be a positive number"),
        ({"mean": (0.5, float("nan"), 0.5)}, "mean and std must be finite"),
        ({"std": (1.0, float("inf"), 1.0)}, "mean and std must be finite"),
    ],
)
def test_bad_options_raise(options, word):
    with pytest.raises(RlrpError, match=word):
        Preprocessing(**options)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(RlrpError, match="efficientnet-lite0"):
        get_preset("resnet")
    assert get_preset("imagenet") is PRESETS["imagenet"]


def test_infer_preprocessing_from_input_shapes():
    nchw = infer_preprocessing([1, 3, 160, 128])
    assert (nchw.layout, nchw.size) == ("NCHW", (160, 128))
    assert nchw.scale == pytest.approx(1 / 255) and nchw.mean == (0,) and nchw.channel_order == "RGB"
    nhwc = infer_preprocessing(["batch", 96, 96, 3], PRESETS["efficientnet-lite0"])
    assert (nhwc.layout, nhwc.size, nhwc.scale) == ("NHWC", (96, 96), 1 / 127.5)
    dynamic = infer_preprocessing(["N", 3, "H", None])
    assert dynamic.size == (224, 224)
    gray = infer_preprocessing(["N", 1, 28, 28])
    assert (gray.layout, gray.size, gray.channel_order, gray.channels) == ("NCHW", (28, 28), "gray", 1)
    gray_nhwc = infer_preprocessing(["N", 32, 48, 1])
    assert (gray_nhwc.layout, gray_nhwc.size, gray_nhwc.channel_order) == ("NHWC", (32, 48), "gray")


def test_a_presets_colour_statistics_follow_the_models_channel_order():
    """imagenet's mean and std are per RGB colour: a BGR model gets them reversed, so each colour is
    normalised by its own; a mean given for the model is taken in the model's order, as it is."""
    pixel = np.zeros((4, 4, 3), np.uint8)
    pixel[...] = (200, 100, 50)  # R, G, B
    bgr = infer_preprocessing([1, 3, 224, 224], PRESETS["imagenet"], channel_order="BGR")
    batch, _ = prepare([pixel], bgr)
    expected = [(50 / 255 - 0.406) / 0.225, (100 / 255 - 0.456) / 0.224, (200 / 255 - 0.485) / 0.229]  # B, G, R
    np.testing.assert_allclose(batch[0, :, 0, 0], expected, rtol=1e-5)
    own = infer_preprocessing([1, 3, 224, 224], PRESETS["imagenet"], channel_order="BGR", mean=(0.1, 0.2, 0.3))
    assert own.mean == (0.1, 0.2, 0.3) and own.std == (0.225, 0.224, 0.229)


@pytest.mark.parametrize("shape, order, channels", [([1, 1, 8, 8], "BGR", 1), ([1, 8, 8, 3], "gray", 3)])
def test_a_channel_order_must_fit_the_models_channels(shape, order, channels):
    with pytest.raises(RlrpError, match=f"the model takes {channels} channel[(]s[)]; channel order {order} gives"):
        infer_preprocessing(shape, PRESETS["unit"], channel_order=order)


def test_a_size_given_must_fit_a_fixed_input():
    with pytest.raises(RlrpError, match=r"the model takes images of 16x16 .*; the size given, 20x20, would not fit"):
        infer_preprocessing([1, 3, 16, 16], PRESETS["unit"], size=(20, 20))
    assert infer_preprocessing([1, 3, "h", "w"], PRESETS["unit"], size=(20, 24)).size == (20, 24)


def test_gray_models_read_the_luminance(chelsea):
    """One channel: Pillow's luminance of the photo as the model sees it (resized), scaled and normalized."""
    gray = Preprocessing(size=(40, 30), resize="stretch", channel_order="gray", mean=(0.5,), std=(0.25,))
    batch, photos = prepare([chelsea], gray)
    assert batch.shape == (1, 1, 40, 30) and photos[0].shape == (40, 30, 3)  # photos stay RGB, for overlays
    luminance = np.asarray(Image.fromarray(photos[0]).convert("L"), np.float32)
    np.testing.assert_allclose(batch[0, 0], (luminance / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    nhwc = prepare([chelsea], dataclasses.replace(gray, layout="NHWC"))[0]
    assert nhwc.shape == (1, 40, 30, 1) and np.array_equal(nhwc[..., 0], batch[:, 0])
    with pytest.raises(RlrpError, match=r"one value, or one per channel \(1\)"):
        dataclasses.replace(gray, mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("shape", [[1, 2, 28, 28], [1, 3, 224], [1, 4, 224, 224]])
def test_infer_preprocessing_rejects_non_rgb_inputs(shape):
    with pytest.raises(RlrpError, match="shape"):
        infer_preprocessing(shape)

"""Heatmaps, overlays and PNG output."""

import numpy as np
import pytest
from PIL import Image

from rlrp_onnx.errors import RlrpError
from rlrp_onnx.visualize import heatmap_rgb, normalize, overlay_rgb, relevance_map, save_png

RED, BLUE, WHITE = [255, 0, 0], [0, 0, 255], [255, 255, 255]


def test_positive_is_red_negative_is_blue_zero_is_white():
    relevance = np.array([[2.0, -2.0, 0.0, 1.0, -1.0]])
    heat = heatmap_rgb(relevance, percentile=100)
    assert heat.dtype == np.uint8 and heat.shape == (1, 5, 3)
    assert heat[0, 0].tolist() == RED
    assert heat[0, 1].tolist() == BLUE
    assert heat[0, 2].tolist() == WHITE
    r, g, b = heat[0, 3].astype(int)  # half-way: light red
    assert r == 255 and g == b == 128
    r, g, b = heat[0, 4].astype(int)
    assert b == 255 and r == g == 128


def test_scale_is_symmetric_around_zero():
    # positive side ten times larger: the negative pixel is a pale blue, not full blue
    heat = heatmap_rgb(np.array([[10.0, -1.0]]), percentile=100)
    assert heat[0, 0].tolist() == RED
    r, g, b = heat[0, 1].astype(int)
    assert b == 255 and r == g and r > 200
    # mirrored map gives mirrored colours
    flipped = heatmap_rgb(np.array([[-10.0, 1.0]]), percentile=100)
    assert np.array_equal(flipped[..., ::-1], heat)


def test_channels_are_summed():
    relevance = np.zeros((3, 2, 2))
    relevance[0, 0, 0], relevance[1, 0, 0] = 1.0, 2.0
    relevance[2, 1, 1] = -3.0
    assert np.array_equal(relevance_map(relevance), [[3.0, 0.0], [0.0, -3.0]])
    heat = heatmap_rgb(relevance)
    assert heat[0, 0].tolist() == RED and heat[1, 1].tolist() == BLUE
    assert np.array_equal(heatmap_rgb(relevance.transpose(1, 2, 0), channel_axis=-1), heat)


def test_one_outlier_does_not_wash_out_the_map():
    rng = np.random.default_rng(0)
    relevance = rng.uniform(0.5, 1.0, size=(100, 100))
    relevance[0, 0] = 1e6
    heat = heatmap_rgb(relevance)  # 99.5th percentile: the outlier saturates, the rest stays visible
    assert heat[0, 0].tolist() == RED
    assert heat[1:, 1:, 1].mean() < 128  # clearly red, not near white
    washed = heatmap_rgb(relevance, percentile=100)
    assert washed[1:, 1:, 1].min() > 250


def test_sparse_map_falls_back_to_the_maximum():
    relevance = np.zeros((100, 100))
    relevance[5, 5], relevance[6, 6] = 4.0, 2.0  # far fewer than 0.5 % non-zero pixels
    scaled = normalize(relevance)
    assert scaled[5, 5] == 1.0 and scaled[6, 6] == 0.5


def test_all_zero_map_is_white_without_nan():
    zeros = np.zeros((3, 4, 5), np.float32)
    assert not np.isnan(normalize(zeros)).any()
    assert (heatmap_rgb(zeros) == 255).all()
    photo = np.full((4, 5, 3), 100, np.uint8)
    assert np.array_equal(overlay_rgb(photo, zeros), photo)


def test_non_finite_values():
    relevance = np.array([[np.nan, np.inf, -np.inf, 1.0, 0.0]])
    heat = heatmap_rgb(relevance)
    assert heat[0].tolist() == [[0, 0, 0], RED, BLUE, RED, WHITE]
    assert normalize(np.array([[np.inf, 0.0]])).tolist() == [[1.0, 0.0]]


def test_overlay_is_gray_photo_where_relevance_is_small_and_colour_where_large():
    photo = np.zeros((2, 2, 3), np.uint8)
    photo[..., 1] = 200  # green: gray value 0.587 * 200 ≈ 117
    relevance = np.array([[1.0, 0.0], [-1.0, 0.0]])
    out = overlay_rgb(photo, relevance, alpha=1.0)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 1].tolist() == [117, 117, 117]
    assert out[0, 0].tolist() == RED and out[1, 0].tolist() == BLUE
    half = overlay_rgb(photo, relevance, alpha=0.5)[0, 0].astype(int)
    assert half.tolist() == [186, 59, 59]  # halfway between gray 117 and red


def test_relevance_map_checks_the_shape():
    with pytest.raises(RlrpError, match=r"expected relevance of shape \(C, H, W\) or \(H, W\); got \(1, 3, 2, 2\)"):
        relevance_map(np.zeros((1, 3, 2, 2)))


def test_overlay_checks_its_arguments():
    with pytest.raises(RlrpError, match="does not match"):
        overlay_rgb(np.zeros((3, 3, 3), np.uint8), np.zeros((2, 2)))
    with pytest.raises(RlrpError, match="alpha"):
        overlay_rgb(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=2.0)


def test_save_png_creates_folders_and_round_trips(tmp_path):
    heat = heatmap_rgb(np.array([[1.0, -1.0], [0.0, 0.5]]))
    path = tmp_path / "a" / "b" / "heat.png"
    save_png(heat, path)
    assert np.array_equal(np.asarray(Image.open(path)), heat)


def test_save_png_reports_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RlrpError, match="cannot write .*heat.png"):
        save_png(np.zeros((2, 2, 3), np.uint8), blocker / "heat.png")

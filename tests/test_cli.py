"""The command line end to end: demo, explain (source or compiled model), compile, devices."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from onnx import TensorProto, helper

from rlrp_onnx import RlrpError, compile_model
from rlrp_onnx.cli import DEMO_IMAGES, DEMO_LABELS, DEMO_MODEL, Progress, main
from rlrp_onnx.contract import META_RULE, META_VERSION, TARGET_INPUT
from rlrp_onnx.labels import load_labels

from onnx_builders import make_model
from test_errors import assert_one_line_error, run_cli


def test_demo_writes_heatmaps_for_the_bundled_photos(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "rlrp_onnx.cli", "demo", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^provider: (CUDA|CPU)ExecutionProvider$", result.stdout, re.M)
    assert "chelsea.png: class 285 (Egyptian cat)" in result.stdout
    assert "coffee.jpg: class 967 (espresso)" in result.stdout
    photos = sorted(p.stem for p in DEMO_IMAGES.iterdir())
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{s}_{kind}.png" for s in photos for kind in ("heatmap", "overlay"))
    heatmap = np.asarray(Image.open(out / "chelsea_heatmap.png"))
    assert heatmap.shape == (224, 224, 3)
    red = (heatmap[..., 0] > 200) & (heatmap[..., 2] < 100)
    blue = (heatmap[..., 2] > 200) & (heatmap[..., 0] < 100)
    assert red.any() and blue.any()  # both signs appear on a symmetric scale


def test_explain_source_and_compiled_models_agree(tmp_path, capsys):
    compiled = tmp_path / "lite0.rlrp.onnx"
    code, out, _ = run_cli(capsys, "compile", DEMO_MODEL, "-o", compiled)
    assert code == 0
    meta = {p.key: p.value for p in onnx.load(compiled).metadata_props}
    assert meta[META_RULE] == "rlrp" and meta[META_VERSION] == "1"
    photo = DEMO_IMAGES / "chelsea.png"
    for model, folder in ((DEMO_MODEL, "a"), (compiled, "b")):
        code, out, err = run_cli(capsys, "explain", model, photo, "--out", tmp_path / folder,
                                 "--preset", "efficientnet-lite0", "--target", "281", "--device", "cpu")
        assert code == 0, err
        assert "chelsea.png: class 281, score" in out  # no labels given: no name
    a = np.asarray(Image.open(tmp_path / "a" / "chelsea_heatmap.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "chelsea_heatmap.png"))
    assert np.array_equal(a, b)


def test_explain_top_k_and_save_relevance(tmp_path, capsys):
    """``--top-k 2 --save-relevance``: two classes per photo, each with its heatmaps and its relevance as
    written by the Python API on the same preprocessed photos."""
    from rlrp_onnx import Explainer
    from rlrp_onnx.preprocess import PRESETS, prepare

    code, out, err = run_cli(capsys, "explain", DEMO_MODEL, DEMO_IMAGES, "--out", tmp_path, "--top-k", "2",
                             "--save-relevance", "--preset", "efficientnet-lite0", "--device", "cpu")
    assert code == 0, err
    photos = sorted(DEMO_IMAGES.iterdir())
    top = Explainer(DEMO_MODEL, device="cpu").explain(prepare(photos, PRESETS["efficientnet-lite0"])[0], top_k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{p.stem}_top{k}_{kind}" for p in photos for k in (1, 2)
        for kind in ("heatmap.png", "overlay.png", "relevance.npy"))
    for i, photo in enumerate(photos):
        for k in (1, 2):
            stem = tmp_path / f"{photo.stem}_top{k}"
            assert f"{photo}: class {top.classes[i, k - 1]}, score" in out
            assert f"-> {stem}_heatmap.png, {stem}_overlay.png, {stem}_relevance.npy" in out
            saved = np.load(f"{stem}_relevance.npy")
            assert saved.dtype == np.float32
            np.testing.assert_array_equal(saved, top.relevance[i, k - 1])


def test_explain_with_a_grayscale_model(tmp_path, capsys):
    """A model with one input channel reads the photos' luminance, found from its input shape."""
    from rlrp_onnx import Explainer
    from rlrp_onnx.preprocess import PRESETS, infer_preprocessing, prepare

    model, photo = tiny_cnn(tmp_path, channels=1), write_image(tmp_path / "a.png")
    code, out, err = run_cli(capsys, "explain", model, photo, "--out", tmp_path / "o", "--save-relevance",
                             "--device", "cpu")
    assert code == 0, err
    batch = prepare([photo], infer_preprocessing(["N", 1, 16, 16], PRESETS["unit"]))[0]
    assert batch.shape == (1, 1, 16, 16)
    expected = Explainer(model, device="cpu").explain(batch)
    assert f"a.png: class {expected.classes[0]}, score" in out
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "a_relevance.npy"), expected.relevance[0])
    assert np.asarray(Image.open(tmp_path / "o" / "a_overlay.png")).shape == (16, 16, 3)


def test_explain_folder_with_labels(tmp_path, capsys):
    code, out, err = run_cli(capsys, "explain", DEMO_MODEL, DEMO_IMAGES, "--out", tmp_path,
                             "--preset", "efficientnet-lite0", "--labels", DEMO_MODEL.parent / "imagenet_classes.txt")
    assert code == 0, err
    assert out.count("->") == len(list(DEMO_IMAGES.iterdir()))
    assert "(espresso)" in out
    assert "images" not in err  # one batch: no progress bar


def test_explain_shows_progress_over_several_batches(tmp_path, capsys):
    """Off a terminal (captured here) the bar is a line at each tenth of the run, the last one full."""
    code, _, err = run_cli(capsys, "explain", DEMO_MODEL, DEMO_IMAGES, "--out", tmp_path, "--batch-size", "1",
                           "--preset", "efficientnet-lite0", "--device", "cpu")
    assert code == 0, err
    total = len(list(DEMO_IMAGES.iterdir()))
    lines = err.splitlines()
    assert [line.split("] ")[1] for line in lines] == [f"{done}/{total} images" for done in range(1, total + 1)]
    assert lines[-1].startswith("[" + "#" * Progress.WIDTH + "]") and "\r" not in err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_in_place_on_a_terminal_and_thins_out_elsewhere():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(stream)
        for done in range(8, 100, 8):
            progress(done, 100)
        progress(100, 100)
    assert terminal.getvalue().count("\r") == 13 and terminal.getvalue().count("\n") == 1
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].endswith("8/100 images") and lines[-1].endswith("100/100 images")


def test_explain_bad_image(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((DEMO_IMAGES / "coffee.jpg").read_bytes()[:500])
    code, _, err = run_cli(capsys, "explain", DEMO_MODEL, broken, "--out", tmp_path / "o",
                           "--preset", "efficientnet-lite0", "--device", "cpu")
    assert_one_line_error(code, err, "broken.jpg")


@pytest.mark.parametrize("bad, option, error", [
    ("notes.png", (), "not an image, or a format Pillow cannot read"),
    ("chelsea.jpg", (), "would write the same heatmap files"),
    (None, ("--top-k", "0"), "--top-k must be a whole number of classes"),
    (None, ("--top-k", "2", "--target", "3"), "give either --target or --top-k, not both"),
    (None, ("--batch-size", "0"), "--batch-size must be a whole number of images"),
    (None, ("--labels", "no-such-labels.txt"), "labels file not found: no-such-labels.txt"),
    (None, ("--size", "100,100,3"), "image size must be two positive numbers"),
    (None, ("--mean", "0.5,0.5"), "mean and std need one value, or one per channel (3)"),
    (None, ("--preset", "vgg"), "unknown preprocessing preset 'vgg'"),
])
def test_explain_refuses_bad_requests_before_loading_the_model(tmp_path, capsys, bad, option, error):
    # A bad file sorted last in a folder, or bad options: refused before the model is compiled and
    # opened (no provider line) and before any image is explained (no heatmap written).
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.jpg"):
        (folder / name).write_bytes((DEMO_IMAGES / name).read_bytes())
    if bad:
        (folder / bad).write_text("not a picture")
    code, stdout, err = run_cli(capsys, "explain", DEMO_MODEL, folder, "--out", out,
                                "--preset", "efficientnet-lite0", "--device", "cpu",
                                *(option if "--batch-size" in option else ("--batch-size", "1", *option)))
    assert_one_line_error(code, err, error)
    assert "provider" not in stdout and not out.exists()


@pytest.mark.parametrize("size, expected", [("200", (200, 200)), ("200,150", (200, 150)), ("200x150", (200, 150))])
def test_size_option_one_number_is_a_square(size, expected):
    from rlrp_onnx.cli import _preprocessing, build_parser

    args = build_parser().parse_args(["explain", "m.onnx", "photo.png", "--out", "o", "--size", size])
    assert _preprocessing(args).size == expected


@pytest.mark.parametrize("option, error", [(("--target", "1000"), "target class 1000 does not exist"),
                                           (("--top-k", "0"), "--top-k must be a whole number of classes")])
def test_explain_class_that_does_not_exist(tmp_path, capsys, option, error):
    code, _, err = run_cli(capsys, "explain", DEMO_MODEL, DEMO_IMAGES / "chelsea.png", "--out", tmp_path,
                           "--preset", "efficientnet-lite0", "--device", "cpu", *option)
    assert_one_line_error(code, err, error)


def test_cuda_requested_where_it_cannot_load(tmp_path):
    from rlrp_onnx.runtime import CUDA, create_session

    if create_session(DEMO_MODEL, "auto").provider == CUDA:
        pytest.skip("CUDA runs here; this checks a machine where it cannot (CPU build, or no GPU driver)")
    # A process of its own: the whole stderr, ONNX Runtime's log included, is the one line.
    result = subprocess.run([sys.executable, "-m", "rlrp_onnx.cli", "explain", str(DEMO_MODEL),
                             str(DEMO_IMAGES / "chelsea.png"), "--out", str(tmp_path), "--device", "cuda"],
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result.returncode, result.stderr, "CUDA is not available")


@pytest.mark.parametrize("argv, debug, quieted", [
    (["explain", "missing.onnx", DEMO_IMAGES / "chelsea.png", "--out", "o"], "", True),
    # RLRP_DEBUG keeps ONNX Runtime's log
    (["explain", "missing.onnx", DEMO_IMAGES / "chelsea.png", "--out", "o"], "1", False),
    # compiling opens sessions too (onnx-graphsurgeon folds constants with them): their optimizers' warnings
    # were printed when a model exported by dynamo without optimisation was compiled
    (["compile", "missing.onnx", "-o", "x.onnx"], "", True),
])
def test_commands_that_run_onnxruntime_leave_its_log_to_fatal_errors(monkeypatch, capsys, argv, debug, quieted):
    import onnxruntime

    severities = []
    monkeypatch.setattr(onnxruntime, "set_default_logger_severity", severities.append)
    monkeypatch.setenv("RLRP_DEBUG", debug)
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "missing.onnx")
    assert severities == ([4] if quieted else [])


def test_compile_with_comparison_masks(tmp_path, capsys):
    compiled = tmp_path / "lite0.comparisons.onnx"
    code, _, err = run_cli(capsys, "compile", DEMO_MODEL, "-o", compiled, "--masks", "comparisons")
    assert code == 0, err
    model = onnx.load(compiled)
    assert {p.key: p.value for p in model.metadata_props}["rlrp.masks"] == "comparisons"
    assert not [n for n in model.graph.node if n.op_type == "HardSigmoid"]
    code, _, err = run_cli(capsys, "explain", compiled, DEMO_IMAGES / "chelsea.png", "--out", tmp_path,
                           "--masks", "steps", "--device", "cpu")
    assert_one_line_error(code, err, "already compiled with masks 'comparisons'")


def test_compile_with_a_required_target_input(tmp_path, capsys):
    """``--target-input required``: rlrp_target is an ordinary input (no default value); the Python
    runner feeds -1 (arg-max) when no target is asked, and the asked class otherwise."""
    compiled = tmp_path / "lite0.required.onnx"
    code, _, err = run_cli(capsys, "compile", DEMO_MODEL, "-o", compiled, "--target-input", "required")
    assert code == 0, err
    model = onnx.load(compiled)
    assert TARGET_INPUT in [i.name for i in model.graph.input]
    assert TARGET_INPUT not in [t.name for t in model.graph.initializer]
    for target, expected in ((None, "Egyptian cat"), ("5", "electric ray")):
        code, out, err = run_cli(capsys, "explain", compiled, DEMO_IMAGES / "chelsea.png", "--out", tmp_path,
                                 "--preset", "efficientnet-lite0", "--labels", DEMO_LABELS, "--device", "cpu",
                                 *(("--target", target) if target else ()))
        assert code == 0, err
        assert expected in out
    with pytest.raises(RlrpError, match="target_input must be one of optional, required"):
        compile_model(DEMO_MODEL, target_input="default")


def test_cli_usage_error_exits_non_zero():
    result = subprocess.run([sys.executable, "-m", "rlrp_onnx.cli", "compile"], capture_output=True, text=True)
    assert result.returncode != 0 and "usage:" in result.stderr and "Traceback" not in result.stderr


def tiny_cnn(tmp_path, bias=True, softmax=False, normalized=False, channels=3):
    """x [N, channels, 16, 16] → Conv → Relu → GlobalAveragePool → Gemm → logits [N, 5] (and their
    Softmax); ``normalized``: (x − mean) / std per channel before the Conv, inside the model."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=(4, channels, 3, 3)).astype(np.float32),
               "g": rng.normal(size=(5, 4)).astype(np.float32)}
    if bias:
        weights.update(b=rng.normal(size=4).astype(np.float32), gb=rng.normal(size=5).astype(np.float32))
    nodes, image = [], "x"
    if normalized:
        weights.update(mean=np.full((1, 3, 1, 1), 0.5, np.float32), std=np.full((1, 3, 1, 1), 0.25, np.float32))
        nodes, image = [helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
                        helper.make_node("Div", ["centred", "std"], ["scaled"], name="scale")], "scaled"
    nodes += [helper.make_node("Conv", [image, "w"] + (["b"] if bias else []), ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g"] + (["gb"] if bias else []), ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5]))
    path = tmp_path / "tiny.onnx"
    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 16, 16])],
                         outputs, weights), path)
    return path


def write_image(path, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8) if value is None else \
        np.full((16, 16, 3), value, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_explain_says_when_relevance_is_not_finite(tmp_path, capsys):
    """A black photo through a bias-free network: every pre-activation is 0, so lrp0's 0/0 is NaN at every
    pixel, which the command says (the heatmap shows NaN black); R-LRP's relevance is finite, no note."""
    model, image = tiny_cnn(tmp_path, bias=False), write_image(tmp_path / "black.png", value=0)
    code, out, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "o", "--rule", "lrp0",
                             "--device", "cpu", "--save-relevance")
    assert code == 0, err
    relevance = np.load(tmp_path / "o" / "black_relevance.npy")
    assert np.isnan(relevance).all()
    note = out.splitlines()[-1]
    assert note.startswith(f"  {relevance.size} relevance values are NaN or infinite (NaN black in the heatmap")
    assert "lrp0 divides by pre-activations that vanish (0/0), epsilon stabilizes them" in note
    code, out, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, err
    assert "NaN" not in out and out.splitlines()[-1].startswith(str(image))


def test_labels_must_have_one_line_per_class(tmp_path, capsys):
    model, image = tiny_cnn(tmp_path), write_image(tmp_path / "a.png")
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(6)) + "\n\n")  # one too many (blank lines ignored)
    code, _, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "o", "--labels", labels,
                           "--device", "cpu")
    assert_one_line_error(code, err, "classes.txt has 6 lines but the model has 5 classes")
    assert not (tmp_path / "o").exists()
    labels.write_text("\n".join(f"class {i}" for i in range(5)))
    code, out, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "o", "--labels", labels)
    assert code == 0, err
    assert re.search(r"a.png: class \d \(class \d\)", out)


def test_labels_of_a_model_with_an_unknown_class_count_are_taken_as_they_are(tmp_path):
    labels = tmp_path / "classes.txt"
    labels.write_text("a\nb\nc\n")
    assert load_labels(labels) == ["a", "b", "c"]
    with pytest.raises(RlrpError, match="3 lines but the model has 2 classes"):
        load_labels(labels, 2)


@pytest.mark.parametrize("images, clash", [
    (["dup/cat.png", "dup/cat.jpg"], ("dup/cat.jpg and ", "dup/cat.png", "cat_heatmap.png")),
    (["dupa/x.png", "dupb/x.png"], ("dupa/x.png and ", "dupb/x.png", "x_heatmap.png")),
])
def test_images_whose_heatmaps_would_have_the_same_name_are_refused(tmp_path, capsys, images, clash):
    for name in images:
        write_image(tmp_path / name)
    folders = sorted({str(tmp_path / name.split("/")[0]) for name in images})  # given as folders
    code, _, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), *folders, "--out", tmp_path / "o", "--device", "cpu")
    assert_one_line_error(code, err, *clash)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_folder_listing_skips_subfolders_named_like_images(tmp_path, capsys):
    write_image(tmp_path / "photos" / "b.png")
    (tmp_path / "photos" / "sub.png").mkdir()
    code, out, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), tmp_path / "photos", "--out", tmp_path / "o")
    assert code == 0, err
    assert out.count("->") == 1 and "b.png: class" in out
    assert f"{tmp_path / 'photos'}: its 1 subfolder(s) are not searched: name them" in err  # said, not silent


def test_folder_listing_takes_every_image_kind_and_says_what_it_skips(tmp_path, capsys):
    """BMP, GIF, TIFF and WebP files are explained as PNG and JPEG ones are; other files are skipped, and
    said to be."""
    for suffix in ("png", "JPG", "bmp", "gif", "tiff", "webp"):
        write_image(tmp_path / "photos" / f"a_{suffix}.{suffix}")
    (tmp_path / "photos" / "notes.txt").write_text("not a picture")
    (tmp_path / "photos" / "._a_png.png").write_bytes(b"\0\5\26\7")  # macOS's metadata beside a copied photo
    (tmp_path / "photos" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, out, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), tmp_path / "photos", "--out", tmp_path / "o",
                             "--device", "cpu")
    assert code == 0, err
    assert out.count("->") == 6
    assert (f"{tmp_path / 'photos'}: its 3 other file(s) (not named as images, hidden or broken links) are "
            "skipped: name them") in err


def test_a_strip_too_long_to_resize_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Found from the headers with the model's preprocessing, before the first batch (a.png's heatmap was
    written, then the run stopped at b.png)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)
    write_image(tmp_path / "photos" / "a.png")
    Image.new("RGB", (2000, 1)).save(tmp_path / "photos" / "b.png")
    code, out, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), tmp_path / "photos", "--out", tmp_path / "o",
                             "--batch-size", "1", "--device", "cpu")
    assert_one_line_error(code, err, "b.png: this 2000x1 image would be resized to 32000x16 before its centre")
    assert not (tmp_path / "o").exists() and "->" not in out


def test_folder_of_subfolders_says_they_are_not_searched(tmp_path, capsys):
    write_image(tmp_path / "photos" / "inner" / "a.png")
    code, _, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), tmp_path / "photos", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "no PNG, JPEG, BMP, GIF, TIFF or WebP images in this folder (its 1 subfolder(s) "
                                     "are not searched: name them)")


@pytest.mark.parametrize("top_k, photo", [(None, "cat_heatmap.png"), (None, "cat_overlay.png"),
                                          ("2", "cat_top2_overlay.png")])
def test_explain_refuses_to_overwrite_its_images(tmp_path, capsys, top_k, photo):
    """Heatmaps written into the folder of the images would replace a photo named like one of them
    (or a heatmap of an earlier run, which would then be explained as a photo): refused, nothing written."""
    folder = tmp_path / "photos"
    cat, other = write_image(folder / "cat.png"), write_image(folder / photo, value=7)
    before = other.read_bytes()
    options = ("--top-k", top_k) if top_k else ()
    code, stdout, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), folder, "--out", folder, *options)
    assert_one_line_error(code, err, f"{other}: explaining {cat} would overwrite this image with its "
                                     f"{photo[len('cat_'):]}; choose another output folder")
    assert other.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == sorted(["cat.png", photo])
    code, _, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), folder, "--out", tmp_path / "o", *options)
    assert code == 0, err  # elsewhere, such names are only names


def test_explain_refuses_to_overwrite_an_image_through_a_link(tmp_path, capsys):
    """A file of the output folder named like a heatmap may be a link to a photo: writing the heatmap
    would overwrite the photo (then explained as the heatmap); refused, the photo intact."""
    photo = write_image(tmp_path / "elsewhere" / "dog.png", value=7)
    before = photo.read_bytes()
    folder = tmp_path / "photos"
    cat = write_image(folder / "cat.png")
    (folder / "cat_heatmap.png").symlink_to(photo)
    code, _, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), cat, photo, "--out", folder, "--batch-size", "1")
    assert_one_line_error(code, err, f"{photo}: explaining {cat} would overwrite this image with its heatmap.png")
    assert photo.read_bytes() == before


@pytest.mark.parametrize("name", ["x_top01_heatmap.png", "x_top3_heatmap.png", "x_top\u00b2_heatmap.png"])
def test_names_top_k_never_writes_are_no_clash(tmp_path, capsys, name):
    folder = tmp_path / "photos"
    write_image(folder / "x.png")
    write_image(folder / name.encode().decode("unicode_escape"))
    code, _, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), folder, "--out", folder, "--top-k", "2")
    assert code == 0, err


def test_one_image_named_twice_is_not_two_images(tmp_path, capsys, monkeypatch):
    cat = write_image(tmp_path / "p" / "cat.png")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), "p/cat.png", "./p/cat.png", cat, "--out", "o")
    assert code == 0, err
    assert out.count("->") == 3


@pytest.mark.parametrize("preset, error", [("efficientnet-lite0", None),
                                           ("imagenet", "give one of each (--mean, --std)")])
def test_preset_on_a_gray_model(tmp_path, capsys, preset, error):
    """A preset's mean and std per colour channel become one value for a one-channel model where they
    agree; where they do not, the model needs its own (said, not a bare length mismatch)."""
    model, image = tiny_cnn(tmp_path, channels=1), write_image(tmp_path / "a.png")
    code, _, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "o", "--preset", preset,
                           "--device", "cpu")
    if error:
        assert_one_line_error(code, err, "the model takes one gray channel", error)
    else:
        assert code == 0, err


def test_layout_of_an_input_with_3_rows_or_columns_is_asked_for(tmp_path, capsys):
    """[N, 3, 16, 3]: the channels may be axis 1 or 3; explain asks for --layout instead of guessing."""
    from rlrp_onnx.preprocess import infer_preprocessing

    with pytest.raises(RlrpError, match=r"its channels may be axis 1 or axis 3; give the layout \(--layout"):
        infer_preprocessing(["N", 3, 16, 3])
    chosen = infer_preprocessing(["N", 3, 16, 3], layout="NHWC")
    assert (chosen.layout, chosen.size) == ("NHWC", (3, 16))


def test_preset_takes_the_models_size_and_layout(tmp_path, capsys):
    """A preset sets the pixel scaling; the size, layout and channels still come from the model (a 16x16
    one-channel model here), as without a preset."""
    model, image = tiny_cnn(tmp_path, channels=1), write_image(tmp_path / "a.png")
    code, out, err = run_cli(capsys, "explain", model, image, "--out", tmp_path / "o", "--preset", "imagenet",
                             "--mean", "0.5", "--std", "0.25", "--save-relevance")
    assert code == 0, err
    assert np.load(tmp_path / "o" / "a_relevance.npy").shape == (1, 16, 16)


def test_inspect_refuses_a_compiled_model(tmp_path, capsys):
    compiled = tmp_path / "tiny.rlrp.onnx"
    assert run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled)[0] == 0
    code, _, err = run_cli(capsys, "inspect", compiled, "--output", "logits")
    assert_one_line_error(code, err, f"{compiled}: already compiled by rlrp-onnx", "inspect the source model")


@pytest.mark.parametrize("method", [("--rule", "zbox"), ("--composite", "epsilon_gamma_box")])
def test_inspect_of_a_zbox_method_without_its_bounds(tmp_path, capsys, method):
    """inspect is where a user learns which tensor the zbox bounds bound: it runs without them."""
    code, out, err = run_cli(capsys, "inspect", tiny_cnn(tmp_path, normalized=True), *method)
    assert code == 0, err
    assert "zbox bounds to give with --low and --high" in out and "zbox(low=?, high=?)" in out
    assert "--low/--high bound its input 'scaled'" in out
    code, _, err = run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", tmp_path / "z.onnx", *method)
    assert_one_line_error(code, err, "needs the input bounds low and high (--low, --high)")


def test_compile_exposes_inner_relevance(tmp_path, capsys):
    compiled = tmp_path / "tiny.rlrp.onnx"
    code, _, err = run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled, "--expose", "r", "p")
    assert code == 0, err
    outputs = [o.name for o in onnx.load(compiled).graph.output]
    assert [o for o in outputs if o.startswith("rlrp_relevance/")] == ["rlrp_relevance/r", "rlrp_relevance/p"]
    assert run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled, "--expose", "all")[0] == 0
    exposed = {o.name for o in onnx.load(compiled).graph.output if o.name.startswith("rlrp_relevance/")}
    assert {"rlrp_relevance/c", "rlrp_relevance/r", "rlrp_relevance/p", "rlrp_relevance/f"} <= exposed
    code, _, err = run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled, "--expose", "nowhere")
    assert_one_line_error(code, err, "cannot expose relevance at ['nowhere']")
    code, _, err = run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled, "--expose", "all", "r")
    assert_one_line_error(code, err, "--expose all stands alone")


@pytest.mark.parametrize("inside, what", [((), "is a file"), (("sub", "dir"), "is inside a file, {blocker}")])
def test_output_folder_that_is_a_file(tmp_path, capsys, inside, what):
    # refused before the model is compiled and opened (no provider line)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    out = blocker.joinpath(*inside)
    code, stdout, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), write_image(tmp_path / "a.png"),
                                "--out", out, "--device", "cpu")
    assert_one_line_error(code, err, f"the output folder {out} {what.format(blocker=blocker)}")
    assert "provider" not in stdout


def test_output_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root may write anywhere: the operating system's answer for this folder is what the check reads
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(locked) and access(path, mode))
    code, stdout, err = run_cli(capsys, "explain", tiny_cnn(tmp_path), write_image(tmp_path / "a.png"),
                                "--out", locked / "heatmaps", "--device", "cpu")
    assert_one_line_error(code, err, f"{locked} is not writable")
    assert "provider" not in stdout


def test_conservation_with_a_zero_logit(tmp_path, capsys):
    """A bias-free network on a black image: every total and the logit are 0, the ratios n/a."""
    code, out, err = run_cli(capsys, "conservation", tiny_cnn(tmp_path, bias=False),
                             write_image(tmp_path / "black.png", 0))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "logit 0, rule rlrp" in lines[0]
    assert len(lines) > 3 and all(line.split()[-1] == "n/a" for line in lines[2:])


def test_conservation_marks_the_branches_of_a_residual(tmp_path, capsys):
    """A bias-free residual network: every tensor all paths pass through holds the whole logit (ratio 1);
    the residual branch's tensors hold their share and are marked as a branch (with a note)."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
               "w2": rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.5,
               "g": rng.normal(size=(5, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Add", ["r1", "r2"], ["sum"]), helper.make_node("GlobalAveragePool", ["sum"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["logits"], transB=1)]
    path = tmp_path / "residual.onnx"
    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                         [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], weights), path)
    code, out, err = run_cli(capsys, "conservation", path, write_image(tmp_path / "a.png"), "--device", "cpu")
    assert code == 0, err
    lines = out.strip().splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert {name for name, row in rows.items() if row[-1] == "branch"} == {"c2", "r2"}
    assert all(float(row[-1]) == pytest.approx(1.0, abs=1e-5) for name, row in rows.items() if name not in {"c2", "r2"})
    assert float(rows["r2"][-2]) != pytest.approx(1.0, abs=1e-3)
    assert {"c1", "r1", "sum", "p", "f", "input"} <= set(rows) and lines[-1].startswith("branch: a tensor that")


def test_branches_follow_what_subgraphs_read():
    """The skip side of a residual read inside an If's subgraph (not among the If's inputs) is a path too;
    a path through a Shape is not (the Reshape's data comes through the Add)."""
    from rlrp_onnx.cli import _branches

    inner = helper.make_graph([helper.make_node("Identity", ["r1"], ["o"])], "inner", [],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r1"]),
             helper.make_node("If", ["cond"], ["skip"], then_branch=inner, else_branch=inner),
             helper.make_node("Relu", ["r1"], ["r2"]), helper.make_node("Add", ["skip", "r2"], ["s"]),
             helper.make_node("Shape", ["r2"], ["shape"]), helper.make_node("Reshape", ["s", "shape"], ["out"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert _branches(graph, ["r1", "skip", "r2", "s", "out"], ["x"], "out") == {"skip", "r2"}


def test_conservation_of_a_compiled_model_asks_for_the_source(tmp_path, capsys):
    compiled = tmp_path / "c.onnx"
    assert run_cli(capsys, "compile", tiny_cnn(tmp_path), "-o", compiled)[0] == 0
    code, out, err = run_cli(capsys, "conservation", compiled, write_image(tmp_path / "a.png"), "--device", "cpu")
    assert_one_line_error(code, err, "c.onnx: already compiled by rlrp-onnx", "run conservation on the source model")
    assert not out


def test_conservation_chooses_the_output(tmp_path, capsys):
    """Logits beside their softmax: the logits are explained without --output; --output names either."""
    model, image = tiny_cnn(tmp_path, softmax=True), write_image(tmp_path / "a.png")
    outs = []
    for options in ([], ["--output", "logits"], ["--output", "probs"]):
        code, out, err = run_cli(capsys, "conservation", model, image, *options)
        assert code == 0, err
        assert "rule rlrp" in out and out.strip().splitlines()[-1].startswith("input rlrp_relevance")
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("options, error", [
    (["--rule", "epsilon", "--composite", "epsilon_plus"], "give either --rule or --composite, not both"),
    (["--rule", "rlrp", "--composite", "epsilon_plus"], "give either --rule or --composite, not both"),
    (["--rule", "rlrp", "--epsilon", "5"], "rlrp does not use epsilon=5.0"),
    (["--gamma", "1"], "rlrp does not use gamma=1.0"),
    (["--rule", "epsilon", "--epsilon", "0.1", "--gamma", "1"], "epsilon does not use gamma=1.0"),
    (["--composite", "epsilon_alpha2_beta1", "--alpha", "3", "--beta", "2"],
     "epsilon_alpha2_beta1 does not use alpha=3.0, beta=2.0"),  # its alpha and beta are fixed
])
def test_method_options_that_would_be_ignored_are_refused(tmp_path, capsys, options, error):
    code, _, err = run_cli(capsys, "inspect", tiny_cnn(tmp_path), *options)
    assert_one_line_error(code, err, error)


def test_number_lists_may_start_with_a_minus_sign(tmp_path, capsys):
    """Per-channel bounds and means in normalized units are negative: taken after a space as after "="."""
    model = tiny_cnn(tmp_path)
    code, out, err = run_cli(capsys, "inspect", model, "--composite", "epsilon_gamma_box", "--low", "-2.1,-2.0,-1.8",
                             "--high", "2.2,2.4,2.6")
    assert code == 0, err
    assert "zbox(low=[-2.1, -2.0, -1.8], high=[2.2, 2.4, 2.6])" in out
    code, out, err = run_cli(capsys, "explain", model, write_image(tmp_path / "a.png"), "--out", tmp_path / "o",
                             "--mean", "-0.5,-0.5,-0.5", "--std", ".5", "--device", "cpu")
    assert code == 0, err
    # an abbreviated option is refused, not left to take the list for another option
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(model), "--composite", "epsilon_gamma_box", "--lo", "-2.1,-2.0,-1.8"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines()[-1].endswith("unrecognized arguments: --lo -2.1,-2.0,-1.8")


@pytest.mark.parametrize("options, rule", [
    (["--rule", "epsilon", "--epsilon", "0.1"], "epsilon(epsilon=0.1)"),
    (["--composite", "epsilon_gamma_box", "--epsilon", "0.1", "--gamma", "0.5", "--low", "0", "--high", "1"],
     "zbox(low=0.0, high=1.0)"),
    (["--composite", "epsilon_alpha2_beta1", "--alpha", "2"], "alphabeta(alpha=2.0, beta=1.0)"),  # its own value
])
def test_method_options_that_are_used_are_taken(tmp_path, capsys, options, rule):
    code, out, err = run_cli(capsys, "inspect", tiny_cnn(tmp_path), *options)
    assert code == 0, err
    assert rule in out


@pytest.mark.parametrize("normalized, bounded", [
    (False, "'x', the model's input"),
    (True, "'scaled', computed from the model's input by centre (Sub), scale (Div)"),
])
def test_inspect_names_the_values_zbox_bounds_bound(tmp_path, capsys, normalized, bounded):
    """A model that normalizes its input itself: the bounds are in normalized units, and inspect says so."""
    code, out, err = run_cli(capsys, "inspect", tiny_cnn(tmp_path, normalized=normalized),
                             "--rule", "zbox", "--low", "0", "--high", "1")
    assert code == 0, err
    notes = [line.strip() for line in out.splitlines() if "--low/--high" in line]
    assert notes == [f"--low/--high bound its input {bounded}"]  # the first layer only, not the Gemm

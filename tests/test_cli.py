"""The command line end to end: demo, explain (source or compiled model), compile, devices."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from rlrp_onnx.cli import DEMO_IMAGES, DEMO_MODEL, Progress
from rlrp_onnx.contract import META_RULE, META_VERSION

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


@pytest.mark.parametrize("option, error", [(("--target", "1000"), "target class 1000 does not exist"),
                                           (("--top-k", "0"), "top_k must be a whole number of classes")])
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
    (["explain", "missing.onnx", "x.png", "--out", "o"], "", True),
    (["explain", "missing.onnx", "x.png", "--out", "o"], "1", False),  # RLRP_DEBUG keeps ONNX Runtime's log
    (["compile", "missing.onnx", "-o", "x.onnx"], "", False),  # no session, ONNX Runtime untouched
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


def test_cli_usage_error_exits_non_zero():
    result = subprocess.run([sys.executable, "-m", "rlrp_onnx.cli", "compile"], capture_output=True, text=True)
    assert result.returncode != 0 and "usage:" in result.stderr and "Traceback" not in result.stderr

"""``compile_model(adjoints="winograd")``: the relevance pass's large 3x3 adjoints by F(4x4, 3x3) tiles
(``rules.winograd``), checked against numpy's correlation, torch autograd and the Conv form."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from rlrp_onnx import Explainer, RlrpError, compile_model
from rlrp_onnx.rules.winograd import transforms

from exporting import export_onnx
from oracle import branch_decisions, input_times_gradient, relative_l2_error
from test_cuda_kernels import TABLE_PATH, _report, emitted_signatures, fallback_problem, kernel_problem
from test_errors import assert_one_line_error, run_cli


class WideVgg(nn.Module):
    """3x3 layers wide enough for the Winograd form to pay (256 and 512 channels on 30x30, 512 on 15x15:
    grids that are not a multiple of the 4x4 tile), beside ones it must leave to the Conv: fewer channels
    on the small grid, a dilated and a grouped 3x3, a 5x5."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),  # Winograd
            nn.Conv2d(256, 512, 3, padding=1), nn.ReLU(),  # Winograd
            nn.MaxPool2d(2),
            nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(),  # Winograd
            nn.Conv2d(512, 256, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(256, 256, 5, padding=2), nn.ReLU(),
            nn.Conv2d(256, 128, 3, padding=1), nn.ReLU(),  # too few channels on 15x15
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


WINOGRAD_LAYERS = 3


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    model = WideVgg().eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 30, 30)).astype(np.float32)
    path = export_onnx(model, x[:1], tmp_path_factory.mktemp("wide") / "wide.onnx", verify=False)
    return model, x, path


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


@pytest.mark.parametrize("seed", range(3))
def test_transforms_compute_the_valid_correlation(seed):
    """Aᵀ[(G g) ⊙ (Bᵀ d)] is numpy's valid correlation of 6 values with 3, and so per axis of a tile."""
    a_t, g, b_t = transforms()
    rng = np.random.default_rng(seed)
    d, w = rng.standard_normal(6), rng.standard_normal(3)
    np.testing.assert_allclose(a_t @ ((g @ w) * (b_t @ d)), np.correlate(d, w, "valid"), atol=1e-12)
    tile, kernel = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    direct = [[np.sum(tile[i:i + 3, j:j + 3] * kernel) for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(a_t @ ((g @ kernel @ g.T) * (b_t @ tile @ b_t.T)) @ a_t.T, direct, atol=1e-12)


def test_winograd_adjoints_match_input_times_gradient(wide):
    model, x, path = wide
    reference, classes, _ = input_times_gradient(model, x, kinks=branch_decisions(path, x))
    by_conv, by_winograd = compile_model(path), compile_model(path, adjoints="winograd")
    ops = [n.op_type for n in by_winograd.graph.node]
    assert ops.count("DepthToSpace") == WINOGRAD_LAYERS
    assert "DepthToSpace" not in [n.op_type for n in by_conv.graph.node]
    conv, winograd, source = _run(by_conv, x), _run(by_winograd, x), _run(onnx.load(path), x)
    assert (relative_l2_error(conv["rlrp_relevance"], reference) < 1e-5).all()
    assert (relative_l2_error(winograd["rlrp_relevance"], reference) < 2e-5).all()
    np.testing.assert_array_equal(winograd["rlrp_class"], classes)
    for name, value in source.items():  # the model's own outputs are untouched
        np.testing.assert_allclose(winograd[name], value, rtol=1e-6, atol=1e-7)
    meta = {p.key: p.value for p in by_winograd.metadata_props}
    assert meta["rlrp.adjoints"] == "winograd"


def test_small_layers_keep_the_conv(tmp_path):
    """Where no layer is large enough, the Winograd form is the Conv form node for node."""
    model = nn.Sequential(nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 4))
    path = export_onnx(model, torch.zeros(1, 3, 14, 14), tmp_path / "small.onnx", verify=False)
    by_conv, by_winograd = compile_model(path), compile_model(path, adjoints="winograd")
    assert [(n.op_type, list(n.input)) for n in by_winograd.graph.node] == \
        [(n.op_type, list(n.input)) for n in by_conv.graph.node]


def test_adjoints_form_is_kept_and_checked(wide, tmp_path, capsys):
    """The form is recorded; a compiled model keeps its own (asking for the other is an error), an
    unknown one is refused, by the API and the CLI with one line."""
    _, x, path = wide
    with pytest.raises(RlrpError, match="adjoints must be one of conv, winograd, got 'fast'"):
        compile_model(path, adjoints="fast")
    compiled = tmp_path / "wide.winograd.onnx"
    code, _, err = run_cli(capsys, "compile", path, "-o", compiled, "--adjoints", "winograd")
    assert code == 0, err
    assert {p.key: p.value for p in onnx.load(compiled).metadata_props}["rlrp.adjoints"] == "winograd"
    with pytest.raises(RlrpError, match="already compiled with adjoints 'winograd'; compile the source model"):
        Explainer(str(compiled), adjoints="conv", device="cpu")
    explained = Explainer(str(path), adjoints="winograd", device="cpu").explain(x)
    direct = _run(onnx.load(compiled), x)
    np.testing.assert_array_equal(explained.relevance, direct["rlrp_relevance"])
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(image)
    code, _, err = run_cli(capsys, "explain", compiled, image, "--out", tmp_path, "--adjoints", "conv",
                           "--device", "cpu")
    assert_one_line_error(code, err, "already compiled with adjoints 'winograd'")


def test_the_explainer_takes_winograd_where_cuda_is_not_expected(wide, tmp_path, monkeypatch):
    """A source model explained by R-LRP on CPU is compiled with Winograd adjoints unless others are named;
    with a classical rule, or where CUDA is expected to run, with the Conv form; a compiled model keeps
    its own form either way."""
    import rlrp_onnx.explainer as explainer_module

    _, x, path = wide
    form = lambda explainer: {p.key: p.value for p in explainer.model.metadata_props}.get("rlrp.adjoints", "conv")
    on_cpu = Explainer(str(path), device="cpu")
    assert form(on_cpu) == "winograd"
    assert [n.op_type for n in on_cpu.model.graph.node].count("DepthToSpace") == WINOGRAD_LAYERS
    assert form(Explainer(str(path), device="cpu", adjoints="conv")) == "conv"
    assert form(Explainer(str(path), device="cpu", rule="lrp0")) == "conv"
    assert form(Explainer(str(path), device="cpu", rule="rlrp")) == "winograd"
    compiled = tmp_path / "wide.conv.onnx"
    onnx.save(compile_model(path), compiled)
    kept = Explainer(str(compiled), device="cpu")
    assert form(kept) == "conv"
    np.testing.assert_array_equal(kept.explain(x).relevance, _run(onnx.load(compiled), x)["rlrp_relevance"])
    monkeypatch.setattr(explainer_module, "expects_cuda", lambda device: True)
    assert form(Explainer(str(path), device="cpu")) == "conv"


def test_winograd_spreads_a_nan_over_its_tile(wide):
    """Why the classical rules keep the Conv form: lrp0's 0/0 (black columns through bias-free layers) is
    NaN in the relevance; a Winograd tile mixes its 6x6 inputs into all 16 outputs, so the NaN reaches
    pixels the Conv form explains."""
    model, x, path = wide
    source = onnx.load(path)
    for tensor in source.graph.initializer:
        if tensor.name.endswith("bias"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(tensor)),
                                                         tensor.name))
    black = x.copy()
    black[..., :10] = 0.0
    by_conv = _run(compile_model(source, rule="lrp0"), black)["rlrp_relevance"]
    by_winograd = _run(compile_model(source, rule="lrp0", adjoints="winograd"), black)["rlrp_relevance"]
    assert np.isnan(by_conv).any()
    assert np.isnan(by_winograd).sum() > np.isnan(by_conv).sum()


def test_winograd_ops_have_cuda_kernels(wide):
    """The form is for ONNX Runtime's CPU provider, but a model compiled with it still runs on CUDA
    without CPU fallbacks: every op it adds has a CUDA kernel in the published table, and none has an
    attribute that hands it to the CPU."""
    _, _, path = wide
    table = json.loads(pathlib.Path(TABLE_PATH).read_text(encoding="utf-8"))
    source = onnx.load(path)
    signatures = emitted_signatures(source, compile_model(source, adjoints="winograd"))
    assert any(signature[0] == "DepthToSpace" for signature in signatures)
    where = {s: [str(path)] for s in signatures}
    problems = _report(where, lambda s: kernel_problem(table, s)) + _report(where, fallback_problem)
    assert not problems, "\n".join(problems)

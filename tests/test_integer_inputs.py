"""Models that take integer pixels (uint8, as edge deployments feed them) and cast them to float
themselves: relevance of the pixels as the model casts them, float32 and shaped like the input.

The oracle is torch autograd on the float pixels; the classical rules and float16 bodies are checked
against the same model taking float pixels (the cast is exact), which the other tests check."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from rlrp_onnx import Explainer, RlrpError, compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT
from rlrp_onnx.preprocess import PRESETS, infer_preprocessing, prepare

from exporting import quiet
from onnx_builders import make_model
from oracle import relative_l2_error
from test_errors import assert_one_line_error, run_cli
from test_oracle import MODELS_DIR, PHOTOS, run

PIXELS = (16, 16, 3)  # H, W, C: the layout such models take


class PixelNet(nn.Module):
    """NHWC uint8 pixels, permuted and cast to float inside, scaled to [-1, 1]: what torch writes is a
    Transpose of the integer input, then the Cast."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def body(self, x):
        """The network after the cast, on float NHWC pixels."""
        x = x.permute(0, 3, 1, 2) / 127.5 - 1
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

    def forward(self, pixels):
        return self.body(pixels.float())


def _export(model, example, path, exporter):
    names = {"input_names": ["pixels"], "output_names": ["logits"]}
    with quiet():
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes={"pixels": {0: "N"}}, **names)
        else:
            batch = torch.export.Dim("N", min=1, max=64)
            torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},), **names).save(str(path))
    return path


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    """The uint8 PixelNet from both exporters, and the same network taking float pixels (TorchScript)."""
    folder, model = tmp_path_factory.mktemp("pixels"), PixelNet().eval()
    example = torch.randint(0, 256, (2, *PIXELS), dtype=torch.uint8)
    paths = {exporter: _export(model, example, folder / f"{exporter}.onnx", exporter)
             for exporter in ("torchscript", "dynamo")}
    paths["float"] = _export(model, example.float(), folder / "float.onnx", "torchscript")
    return model, paths


def _pixels(seed=3, batch=3):
    return np.random.default_rng(seed).integers(0, 256, (batch, *PIXELS)).astype(np.uint8)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_uint8_pixels_against_autograd(pixel_models, exporter):
    """R-LRP at the pixels: input × gradient of the float pixels, for the chosen and the top classes;
    the source graph is kept node for node."""
    model, paths = pixel_models
    source = onnx.load(str(paths[exporter]))
    assert "Cast" in {n.op_type for n in source.graph.node}
    compiled = compile_model(source)
    assert [n.SerializeToString() for n in compiled.graph.node[:len(source.graph.node)]] == \
        [n.SerializeToString() for n in source.graph.node]
    pixels, targets = _pixels(), np.array([4, -1, 0])
    out = run(compiled, {"pixels": pixels, TARGET_INPUT: targets})
    relevance = out[RELEVANCE_OUTPUT]
    assert relevance.dtype == np.float32 and relevance.shape == pixels.shape
    x = torch.from_numpy(pixels).float().requires_grad_()
    logits = model.body(x)
    classes = np.where(targets < 0, logits.argmax(1).numpy(), targets)
    np.testing.assert_array_equal(out[CLASS_OUTPUT], classes)
    logits[torch.arange(3), torch.from_numpy(classes)].sum().backward()
    np.testing.assert_allclose(out[SCORE_OUTPUT], logits.detach().numpy()[np.arange(3), classes], rtol=1e-5)
    errors = relative_l2_error(relevance, (x * x.grad).detach().numpy())
    assert np.all(errors < 1e-5), errors


class MovedPixels(nn.Module):
    """PixelNet's body after ``move``, a selection or reordering of the uint8 pixels before their cast."""

    def __init__(self, move):
        super().__init__()
        self.net, self.move = PixelNet(), move

    def forward(self, pixels):
        return self.net.body(self.move(pixels).float())


PIXEL_MOVES = {  # each on NHWC pixels, giving NHWC ones of PIXELS' size
    "bgr": lambda x: x[..., [2, 1, 0]],  # TorchScript: Gather; dynamo: Transposes around a GatherND
    "flip_and_crop": lambda x: x.flip(2)[:, 2:18, 1:17],  # Slices, one with a negative step
    "gray_to_rgb": lambda x: x.unsqueeze(-1).expand(-1, -1, -1, 3),  # Unsqueeze, Expand
}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("move", PIXEL_MOVES)
def test_pixels_moved_before_their_cast(tmp_path, exporter, move):
    """Against autograd on the float pixels, with the relevance shaped like the input."""
    model = MovedPixels(PIXEL_MOVES[move]).eval()
    shape = {"flip_and_crop": (20, 18, 3), "gray_to_rgb": PIXELS[:2]}.get(move, PIXELS)
    pixels = np.random.default_rng(8).integers(0, 256, (3, *shape)).astype(np.uint8)
    path = _export(model, torch.from_numpy(pixels[:2]), tmp_path / "moved.onnx", exporter)
    out = run(compile_model(path), {"pixels": pixels})
    x = torch.from_numpy(pixels).float().requires_grad_()
    logits = model.net.body(model.move(x))
    logits[torch.arange(3), torch.from_numpy(out[CLASS_OUTPUT])].sum().backward()
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], (x * x.grad).detach().numpy())
    assert np.all(errors < 1e-5), errors


@pytest.mark.parametrize("method", [{"rule": "epsilon"}, {"rule": "zplus"}, {"composite": "epsilon_plus_flat"}],
                         ids=lambda m: next(iter(m.values())))
def test_classical_rules_on_uint8_pixels_equal_float_pixels(pixel_models, method):
    _, paths = pixel_models
    pixels = _pixels(seed=4)
    relevance = run(compile_model(paths["torchscript"], **method), {"pixels": pixels})[RELEVANCE_OUTPUT]
    expected = run(compile_model(paths["float"], **method), {"pixels": pixels.astype(np.float32)})
    np.testing.assert_allclose(relevance, expected[RELEVANCE_OUTPUT], rtol=1e-5, atol=1e-7)


def cast_model(pixel_type, body_type, nodes_before_cast=(), initializers=None):
    """pixels [N, 4, 4, 3] → [nodes] → Cast to ``body_type`` → Transpose → Conv → Relu → Flatten → Gemm,
    weights in ``body_type``; ``pixel_type`` None: the same model taking ``body_type`` pixels, no Cast."""
    rng = np.random.default_rng(5)
    dtype = np.float16 if body_type == TensorProto.FLOAT16 else np.float32
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(dtype), "fc": rng.normal(size=(3, 64)).astype(dtype),
             **(initializers or {})}
    before = list(nodes_before_cast)
    last = before[-1].output[0] if before else "pixels"
    cast = [helper.make_node("Cast", [last], ["f"], to=body_type)] if pixel_type is not None else []
    nodes = before + cast + [
        helper.make_node("Transpose", ["f" if cast else "pixels"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["flat"]), helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("pixels", pixel_type or body_type, ["N", 4, 4, 3])],
                      [helper.make_tensor_value_info("logits", body_type, ["N", 3])], inits)


@pytest.mark.parametrize("pixel_type", [TensorProto.UINT8, TensorProto.INT32])
@pytest.mark.parametrize("body_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32", "float16"])
def test_integer_pixels_cast_to_float32_or_float16(pixel_type, body_type):
    """The relevance of the same model fed the pixels as floats (exactly the values it casts them to)."""
    pixels = np.random.default_rng(6).integers(0, 256, (2, 4, 4, 3))
    relevance = run(compile_model(cast_model(pixel_type, body_type)),
                    {"pixels": pixels.astype(helper.tensor_dtype_to_np_dtype(pixel_type))})[RELEVANCE_OUTPUT]
    float_type = helper.tensor_dtype_to_np_dtype(body_type)
    expected = run(compile_model(cast_model(None, body_type)), {"pixels": pixels.astype(float_type)})
    assert relevance.dtype == np.float32 and relevance.shape == pixels.shape
    np.testing.assert_array_equal(relevance, expected[RELEVANCE_OUTPUT])


@pytest.mark.parametrize("before,reader", [
    ([helper.make_node("Sub", ["pixels", "offset"], ["moved"])], "sub (Sub)"),  # arithmetic on the integers
    ([helper.make_node("Identity", ["pixels"], ["same"]), helper.make_node("Gather", ["table", "same"], ["moved"])],
     "gather (Gather)")])  # the pixels as indices (a lookup table, token ids)
def test_integer_input_used_otherwise_than_cast(tmp_path, capsys, before, reader):
    """An integer input that reaches anything but a Cast to float, through ops that move values, is refused
    with one line naming the input and the node."""
    for node in before:
        node.name = node.op_type.lower()
    model = cast_model(TensorProto.UINT8, TensorProto.FLOAT, before,
                        {"offset": np.array(1, np.uint8), "table": np.arange(256, dtype=np.uint8)})
    path = tmp_path / "lookup.onnx"
    onnx.save(model, path)
    with pytest.raises(RlrpError, match=re.escape(f"input 'pixels' (uint8) reaches {reader} before any Cast")):
        compile_model(model)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "out.onnx")
    assert_one_line_error(code, err, "lookup.onnx", "input 'pixels' (uint8)", reader)


def test_explainer_feeds_whole_numbers_and_refuses_others(pixel_models):
    """uint8 arrays and floats holding whole pixel values give the same relevance; fractions and values
    outside 0..255 are refused (a cast would change them silently)."""
    explainer = Explainer(pixel_models[1]["torchscript"], device="cpu")
    pixels = _pixels(seed=7, batch=2)
    as_uint8, as_float = explainer.explain(pixels), explainer.explain(pixels.astype(np.float32))
    np.testing.assert_array_equal(as_uint8.relevance, as_float.relevance)
    for bad, found in [(pixels / 255.0, "fractions from 0"), (pixels.astype(np.int64) + 1, "values from 1 to 256"),
                       (pixels.astype(np.float32) - 1, "values from -1")]:
        with pytest.raises(RlrpError, match=f"input 'pixels' takes uint8 values, whole numbers from 0 to 255; "
                                            f"the images hold {found}"):
            explainer.explain(bad)


def test_cli_feeds_unscaled_pixels_to_an_integer_input(pixel_models, tmp_path, capsys):
    """Without a preset, ``explain`` feeds a uint8 model the photos' pixels unscaled, in its layout."""
    path, photos = pixel_models[1]["torchscript"], [MODELS_DIR / "images" / name for name in PHOTOS]
    code, _, err = run_cli(capsys, "explain", path, *photos, "--out", tmp_path, "--save-relevance")
    assert code == 0, err
    batch, _ = prepare(photos, infer_preprocessing(["N", *PIXELS], PRESETS["pixels"]))
    assert batch.min() >= 0 and batch.max() > 1 and np.all(batch == np.round(batch))
    expected = Explainer(path, device="cpu").explain(batch.astype(np.uint8)).relevance
    for photo, relevance in zip(photos, expected):
        np.testing.assert_array_equal(np.load(tmp_path / f"{photo.stem}_relevance.npy"), relevance)


def test_integer_scalars_and_shapes_beside_the_pixels_are_not_explained():
    """An int64 vector (a shape, passed through to an output) and an integer scalar cast to float are inputs
    too, but not images: only the pixels are explained (both had become images of their own)."""
    rng = np.random.default_rng(9)
    model = make_model(
        [helper.make_node("Identity", ["shape"], ["shape_out"]), helper.make_node("Cast", ["pixels"], ["f"], to=1),
         helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
         helper.make_node("Cast", ["offset"], ["o"], to=1), helper.make_node("Add", ["t", "o"], ["shifted"]),
         helper.make_node("Conv", ["shifted", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["flat"]), helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 4, 4, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("offset", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("shape_out", TensorProto.INT64, [4])],
        {"w": rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "fc": rng.normal(size=(2, 8)).astype(np.float32)})
    compiled = compile_model(model)
    assert [o.name for o in compiled.graph.output][2:3] == [RELEVANCE_OUTPUT]
    pixels = np.random.default_rng(10).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    out = run(compiled, {"pixels": pixels, "shape": np.array([2, 3, 4, 4]), "offset": np.array(-7)})
    assert out[RELEVANCE_OUTPUT].shape == pixels.shape


def test_a_cast_to_another_type_is_named():
    model = cast_model(TensorProto.UINT8, TensorProto.FLOAT, [helper.make_node("Cast", ["pixels"], ["wide"], to=11,
                                                                               name="to_double")])
    with pytest.raises(RlrpError, match=re.escape("reaches to_double (Cast to double) before any Cast to float32")):
        compile_model(model)


def test_explainer_compares_the_range_exactly():
    """float32 2147483647 is 2³¹, one past int32's largest value: refused, not wrapped."""
    explainer = Explainer(compile_model(cast_model(TensorProto.INT32, TensorProto.FLOAT)), device="cpu")
    images = np.zeros((1, 4, 4, 3), np.float32)
    images[0, 0, 0, 0] = 2147483647
    with pytest.raises(RlrpError, match="takes int32 values, whole numbers from -2147483648 to 2147483647; the "
                                        "images hold values from 0 to 2.14748e[+]09 [(]shift or scale"):
        explainer.explain(images)


def test_conservation_sums_each_tensor_whatever_its_batch_axis(tmp_path, capsys):
    """The dynamo exporter's channel reordering holds the batch on axis 1 between its Transposes: every
    tensor between the pixels and their cast carries the input's total (was the sum of one channel)."""
    model = MovedPixels(PIXEL_MOVES["bgr"]).eval()
    path = _export(model, torch.zeros((2, *PIXELS), dtype=torch.uint8), tmp_path / "bgr.onnx", "dynamo")
    code, out, err = run_cli(capsys, "conservation", path, MODELS_DIR / "images" / PHOTOS[0], "--device", "cpu")
    assert code == 0, err
    rows = {line.split()[1]: float(line.split()[2]) for line in out.splitlines()[2:]}
    assert {"GatherND", "Transpose", "Cast"} <= set(rows)
    for op in ("GatherND", "Transpose", "Cast"):
        assert rows[op] == pytest.approx(rows["rlrp_relevance"], rel=1e-5), (op, rows)

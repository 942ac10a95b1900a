"""float16 models: the relevance pass runs in float32 on the float16 forward pass, read through Casts.

The oracle is torch autograd on the same weights in float32 (float16 values widen exactly), with the
masks of the float16 forward pass (``kinks``, oracle.py) and the float16 input.

Where the kinks come from matters. ONNX Runtime's CPU provider has float16 kernels for few ops, so it
computes runs of float16 nodes in float32 and rounds to float16 only where a node that takes float16
reads a tensor (its insert-cast transformer), and it folds BatchNorm into Convs in float16 weights.
Which tensors are rounded depends on which nodes read them: the relevance pass's Casts are such nodes,
so the compiled model's logits can differ from the source's in the last float16 bits (asserted
loosely below), and so can the activations of a run with the activations added as outputs. The kinks
therefore come from the same run as the relevance they are checked against (``run_with_decisions``).
Where a Cast of the relevance pass reads a node ONNX Runtime runs in float32, its removal of Cast pairs
hands the relevance pass that float32 value: the score, for instance, is the logit before its rounding.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from rlrp_onnx import Explainer, RlrpError, compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT

from exporting import export_onnx
from family_models import Extremum
from oracle import input_times_gradient, relative_l2_error, run_with_decisions
from reference_models import init_deterministic
from test_cuda_kernels import METHODS, _compile, _method_id
from test_oracle import TOLERANCE, photos, run  # noqa: F401 (photos: a fixture)

HALF_ULP = 2.0**-10  # a float16 unit in the last place, relative
LOGITS_BOUND = 8 * HALF_ULP  # of the largest logit; measured up to 2.0e-3 (ONNX Runtime 1.32), 2.4e-3 (1.29)


class HalfNet(torch.nn.Module):
    """MaxPool of the input, Conv → ReLU, Conv → BatchNorm → ReLU6, depthwise Conv → BatchNorm → LeakyReLU
    plus the skip, global average, Linear.

    The max pool reads the input, exact in float16, so ONNX Runtime and torch pick the same winners.
    Behind a Conv they need not: depending on the graph, ONNX Runtime rounds the pool's input to float16
    or keeps it float32 (it folds BatchNorm into the Conv in float16 weights, too), where torch computes
    float32 from the float16 weights; the kinks align the masks, not a pool's choice."""

    def __init__(self, seed: int = 0):
        super().__init__()
        nn = torch.nn
        self.pool, self.conv1, self.relu = nn.MaxPool2d(2), nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
        self.conv2, self.bn2, self.relu6 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6()
        self.dw, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.leaky, self.head = nn.LeakyReLU(0.1), nn.Linear(16, 10)
        init_deterministic(self, seed)

    def forward(self, x):
        x = self.relu(self.conv1(self.pool(x)))
        y = self.relu6(self.bn2(self.conv2(x)))
        return self.head((self.leaky(self.bn3(self.dw(y))) + x).mean(dim=(2, 3)))


class FloatInterface(torch.nn.Module):
    """A float16 network behind float32 input and output (the Casts of mixed-precision exports)."""

    def __init__(self, half: torch.nn.Module):
        super().__init__()
        self.network = half

    def forward(self, x):
        return self.network(x.half()).float()


def export_half(model: torch.nn.Module, x: np.ndarray, path, exporter: str, float_interface: bool = False):
    """``model`` in float16 (BatchNorm kept, so the file holds the module's own weights), exported."""
    half = copy.deepcopy(model).half()
    net, dtype = (FloatInterface(half), torch.float32) if float_interface else (half, torch.float16)
    return export_onnx(net, x, path, exporter, fold_batchnorm=False, verify=False, dtype=dtype)


def check_half(model: torch.nn.Module, path, x: np.ndarray, targets=None, masks: str = "steps") -> dict:
    """Compile the float16 export (at ``path``) of the float32 ``model``, run it on ``x`` and compare it
    with the oracle."""
    compiled = compile_model(path, masks=masks)
    compiled_path = path.with_suffix(".rlrp.onnx")
    onnx.save(compiled, compiled_path)
    feed = {"image": x}
    if targets is not None:
        feed[TARGET_INPUT] = np.asarray(targets, dtype=np.int64)
    out = run(compiled, feed)
    source = run(path, {"image": x})["logits"]

    assert out[RELEVANCE_OUTPUT].dtype == np.float32 and out[SCORE_OUTPUT].dtype == np.float32
    assert out["logits"].dtype == source.dtype
    np.testing.assert_allclose(out["logits"], source, rtol=0, atol=LOGITS_BOUND * np.abs(source).max())
    explained = out["logits"][np.arange(len(x)), out[CLASS_OUTPUT]].astype(np.float32)
    np.testing.assert_array_equal(out[CLASS_OUTPUT], out["logits"].argmax(axis=1) if targets is None
                                  else np.where(np.asarray(targets) >= 0, targets, out["logits"].argmax(axis=1)))
    np.testing.assert_allclose(out[SCORE_OUTPUT], explained, rtol=HALF_ULP)

    # ONNX Runtime's float16 emulation on CPU depends on which tensors are outputs, so the kinks and the
    # relevance they are checked against come from one run of the compiled model with the activations
    # added as outputs; the plain run's relevance differs from it by mask flips at most
    kinks, checked = run_with_decisions(compiled_path, feed)
    float_model = copy.deepcopy(model).half().float()  # the float16 weights, widened
    kinks = [k.astype(np.float32) for k in kinks]
    relevance, classes, _ = input_times_gradient(float_model, x.astype(np.float32), targets, kinks=kinks)
    np.testing.assert_array_equal(checked[CLASS_OUTPUT], classes)
    errors = relative_l2_error(checked[RELEVANCE_OUTPUT], relevance)
    assert np.all(errors < TOLERANCE), errors
    flips = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    assert np.all(flips < 0.1), flips
    return out


def example(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float16)


@pytest.mark.parametrize("masks", ["steps", "comparisons"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_float16_model_matches_autograd(tmp_path, exporter, masks):
    model, x = HalfNet().eval(), example(4, seed=7)
    path = export_half(model, x, tmp_path / "net.onnx", exporter)
    check_half(model, path, x, targets=[1, -1, 4, 9], masks=masks)


def test_float16_network_behind_float32_casts(tmp_path):
    """Float32 input and output, float16 inside: the relevance is float32 of the float32 input."""
    model, x = HalfNet(seed=1).eval(), example(2, seed=3).astype(np.float32)  # exact in float16
    path = export_half(model, x, tmp_path / "mixed.onnx", "torchscript", float_interface=True)
    assert onnx.load(path).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    check_half(model, path, x)


def test_float16_efficientnet_on_real_photos(tmp_path, reference_model, photos):
    """EfficientNet-Lite0's real weights in float16 still call chelsea an Egyptian cat and the coffee an
    espresso, through the Explainer (which feeds float16) as through a plain run."""
    model = reference_model("efficientnet_lite0")
    path = export_half(model, photos, tmp_path / "efficientnet_lite0.onnx", "dynamo")
    out = check_half(model, path, photos.astype(np.float16))
    assert list(out[CLASS_OUTPUT]) == [285, 967]
    explained = Explainer(path, device="cpu").explain(photos)
    np.testing.assert_array_equal(explained.classes, out[CLASS_OUTPUT])
    np.testing.assert_allclose(explained.relevance, out[RELEVANCE_OUTPUT], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS, ids=[_method_id(m) for m in METHODS])
def test_every_method_explains_a_float16_model_like_its_float32_twin(tmp_path, method):
    """Each rule on the float16 model against the same rule on the float32 model with its weights: the
    two differ only by the float16 rounding of activations and the mask flips it causes (which the
    R-LRP oracle above aligns, and no plain reference of the classical rules here does)."""
    model, x = HalfNet(seed=2).eval(), example(3, seed=5)
    half = export_half(model, x, tmp_path / "half.onnx", "torchscript")
    twin = export_onnx(copy.deepcopy(model).half().float(), x, tmp_path / "twin.onnx", fold_batchnorm=False)
    out = run(_compile(half, method), {"image": x})
    expected = run(_compile(twin, method), {"image": x.astype(np.float32)})
    np.testing.assert_array_equal(out[CLASS_OUTPUT], expected[CLASS_OUTPUT])
    assert np.isfinite(out[RELEVANCE_OUTPUT]).all()
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT])
    assert np.all(errors < 0.05), errors


class MaxoutNet(torch.nn.Module):
    """Two maxouts (``torch.maximum`` and ``torch.minimum`` of two Convs) and a Linear: the maxima are
    the only nonlinearity."""

    def __init__(self):
        super().__init__()
        pieces = [torch.nn.Conv2d(cin, 8, 3, padding=1) for cin in (3, 3, 8, 8)]
        self.body = torch.nn.Sequential(Extremum(*pieces[:2]), Extremum(*pieces[2:], reduce=torch.minimum),
                                        torch.nn.Flatten(), torch.nn.Linear(8 * 32 * 32, 10))
        init_deterministic(self, 0)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_float16_maxout_routes_like_its_float32_twin(tmp_path, exporter):
    """The winner of a Max of two float16 tensors is found among the operands, not by equality with the
    rounded maximum, which the relevance pass may read rounded while it reads an operand before its
    rounding (it then sent the relevance to the loser: errors 0.86-1.02 against the twin)."""
    model, x = MaxoutNet().eval(), example(4, seed=3)
    half = export_half(model, x, tmp_path / "half.onnx", exporter)
    twin = export_onnx(copy.deepcopy(model).half().float(), x, tmp_path / "twin.onnx", exporter, fold_batchnorm=False)
    out = run(compile_model(half), {"image": x})
    expected = run(compile_model(twin), {"image": x.astype(np.float32)})
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT])
    assert np.all(errors < 1e-2), errors


class WrittenOutNet(torch.nn.Module):
    """Conv → ``nn.Softsign`` → tokens → a LayerNorm written with torch's std (``StdLayerNorm``) → Linear:
    in float16 the dynamo exporter computes |x| and the variance on float32 copies (Casts)."""

    def __init__(self):
        super().__init__()
        from test_families import StdLayerNorm

        self.conv, self.act = torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Softsign()
        self.norm, self.head = StdLayerNorm(8), torch.nn.Linear(8, 10)
        init_deterministic(self, 0)

    def forward(self, x):
        return self.head(self.norm(self.act(self.conv(x)).flatten(2).transpose(1, 2)).mean(1))


def test_float16_written_out_forms_through_casts(tmp_path):
    """The dynamo exporter's float32 copies are Casts the float32 twin keeps as float32 to float32; they
    hid Softsign and the LayerNorm from their recognisers (both refused). Against the float32 twin."""
    model, x = WrittenOutNet().eval(), example(3, seed=4)
    half = export_half(model, x, tmp_path / "half.onnx", "dynamo")
    assert "Cast" in {n.op_type for n in onnx.load(str(half)).graph.node}
    twin = export_onnx(copy.deepcopy(model).half().float(), x, tmp_path / "twin.onnx", "dynamo", fold_batchnorm=False)
    out = run(compile_model(half), {"image": x})
    expected = run(compile_model(twin), {"image": x.astype(np.float32)})
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT])
    assert np.all(errors < 1e-2), errors


def test_twin_widens_every_float16_declaration():
    """passes/float16.py on a hand-built graph: initializers, declarations, Constant values, Cast targets
    and an If's branches become float32; names and everything else stay."""
    from onnx import TensorProto, helper

    from rlrp_onnx.passes.float16 import float32_twin, uses_float16

    def branch(name, value):
        constant = helper.make_node("Constant", [], [f"{name}_out"],
                                    value=helper.make_tensor(f"{name}_v", TensorProto.FLOAT16, [1], [value]))
        return helper.make_graph([constant], name, [], [helper.make_tensor_value_info(f"{name}_out",
                                                                                      TensorProto.FLOAT16, [1])])

    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["h", "w"], ["y"]),
             helper.make_node("If", ["flag"], ["z"], then_branch=branch("then", 1.5), else_branch=branch("else", 2.5))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT16, [1])],
        [onnx.numpy_helper.from_array(np.array([0.1, 3.0], np.float16), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    twin = float32_twin(model)
    assert uses_float16(model) and not uses_float16(twin)
    text = onnx.printer.to_text(twin)
    assert "float16" not in text and "Cast <to: int = 1>" in text and "float16" in onnx.printer.to_text(model)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(twin.graph.initializer[0]),
                                  np.array([0.1, 3.0], np.float16).astype(np.float32))
    onnx.checker.check_model(twin, full_check=True)
    assert [n.name for n in twin.graph.node] == [n.name for n in model.graph.node]


def test_pixels_beyond_the_float16_range_are_refused(tmp_path):
    """A finite float32 pixel above 65504 would reach the model as infinity: NaN logits, class and relevance."""
    path = export_half(HalfNet().eval(), example(1, seed=0), tmp_path / "net.onnx", "torchscript")
    images = example(2, seed=1).astype(np.float32)
    images[1, 0, 0, 0] = -70000.0
    with pytest.raises(RlrpError, match=r"input 'image' takes float16 values; the images hold values up to 70000, "
                                        r"which it turns infinite \(its largest is 65504\)"):
        Explainer(path, device="cpu").explain(images)

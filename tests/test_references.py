"""Tests of the test-side references: reference models, exports and the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporting import EXPORTERS, INPUT_NAME, OUTPUT_NAME, count_batchnorm, run_onnx, torch_logits
from oracle import input_times_gradient, relative_l2_error, resolve_targets
from reference_models import (
    REFERENCE_MODELS,
    SMALL_MODELS,
    count_batchnorm_modules,
    example_input,
    make_model,
)

ALL_MODELS = tuple(REFERENCE_MODELS)


# --------------------------------------------------------------------------
# exports
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fold", [True, False], ids=["fold", "keep"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_export_matches_torch(exported_model, name, exporter, fold):
    exp = exported_model(name, exporter, fold)
    x = exp.example(batch=2, seed=7)
    ref = torch_logits(exp.model, x)
    got = run_onnx(exp.path, x)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    assert np.array_equal(got.argmax(1), ref.argmax(1))

    n_bn = count_batchnorm(exp.path)
    if fold:
        assert n_bn == 0
    else:
        assert n_bn == count_batchnorm_modules(exp.model)
        if name != "vgg16_like":  # plain VGG16 has no BN
            assert n_bn > 0


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_io_contract(exported_model, exporter):
    exp = exported_model("simple_cnn", exporter, True)
    m = onnx.load(str(exp.path))
    (inp,) = m.graph.input
    (out,) = m.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    opset = {o.domain: o.version for o in m.opset_import}[""]
    assert opset == (17 if exporter == "torchscript" else 18)
    for n in (1, 5):
        assert run_onnx(exp.path, exp.example(batch=n)).shape == (n, 10)


def test_vgg16_bn_variant_keeps_batchnorm(tmp_path):
    from exporting import export_onnx
    from reference_models import VGG16Like

    model = VGG16Like(seed=3, batch_norm=True)
    assert count_batchnorm_modules(model) == 13
    p = export_onnx(model, example_input("vgg16_like", 2), tmp_path / "vgg_bn.onnx",
                    "torchscript", fold_batchnorm=False)
    assert count_batchnorm(p) == 13


# --------------------------------------------------------------------------
# reference models
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL_MODELS)
def test_reference_models_are_deterministic(name):
    x = torch.from_numpy(example_input(name, 2))
    with torch.no_grad():
        a = make_model(name, seed=0)(x)
        b = make_model(name, seed=0)(x)
        c = make_model(name, seed=1)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all() and a.abs().max() > 1e-2


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_batchnorm_is_not_trivial(reference_model, name):
    model = reference_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not m.training
            assert m.running_var.std() > 0.05 and m.running_mean.abs().max() > 0.01
            assert m.weight.std() > 0.05 and m.bias.abs().max() > 0.01


def test_simple_cnn_covers_op_list(reference_model):
    model = reference_model("simple_cnn")
    kinds = [type(m) for m in model.modules()]
    for k in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool2d,
              nn.AvgPool2d, nn.Linear, nn.Dropout):
        assert k in kinds, k
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(c.groups == c.in_channels == c.out_channels > 1 for c in convs)
    assert any(c.dilation != (1, 1) for c in convs)
    assert any(c.bias is None for c in convs) and any(c.bias is not None for c in convs)
    assert any(c.stride == (2, 2) and c.padding != (0, 0) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert {p.count_include_pad for p in pools if p.padding} == {True, False}


def test_resnet_structures(reference_model):
    r18, r50 = reference_model("resnet18_like"), reference_model("resnet50_like")
    assert sum(isinstance(m, nn.Conv2d) for m in r18.modules()) == 20  # 17 + 3 downsample
    assert sum(isinstance(m, nn.Conv2d) for m in r50.modules()) == 53  # 49 + 4 downsample
    vgg = reference_model("vgg16_like")
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, nn.Linear) for m in vgg.modules()) == 3


def test_efficientnet_lite0_has_real_weights(reference_model):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = reference_model("efficientnet_lite0")
    imgs = [skimage_data.chelsea(), skimage_data.coffee()]
    x = np.stack([
        np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR), np.float32)
        for im in imgs
    ])
    x = ((x - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()
    top = torch_logits(model, x).argmax(1)
    assert top[0] in (281, 282, 285)  # tabby / tiger cat / Egyptian cat
    assert top[1] == 967  # espresso


# --------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------

def test_oracle_linear_model_is_exact():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 4, bias=False)).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 2, 2)).astype(np.float32)
    rel, cls, scores = input_times_gradient(lin, x, np.array([2, -1, 0]))
    w = lin[1].weight.detach().numpy()
    logits = x.reshape(3, -1) @ w.T
    assert cls.tolist() == [2, int(logits[1].argmax()), 0] and cls.dtype == np.int64
    np.testing.assert_allclose(scores, logits[np.arange(3), cls], rtol=1e-6)
    np.testing.assert_allclose(rel.reshape(3, -1), x.reshape(3, -1) * w[cls], rtol=1e-6)
    assert rel.dtype == np.float32 and rel.shape == x.shape


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18_like"])
def test_oracle_targets_and_batch_independence(reference_model, name):
    model = reference_model(name)
    x = example_input(name, 3, seed=5)
    logits = torch_logits(model, x)
    rel, cls, scores = input_times_gradient(model, x, None)
    assert np.array_equal(cls, logits.argmax(1))
    np.testing.assert_allclose(scores, logits.max(1), rtol=1e-5)
    # per-sample: explaining one sample alone gives the same relevance
    rel1, _, _ = input_times_gradient(model, x[1:2], cls[1:2])
    assert relative_l2_error(rel1, rel[1:2])[0] < 1e-5
    # an int target applies to every sample
    rel7, cls7, scores7 = input_times_gradient(model, x, 7)
    assert cls7.tolist() == [7, 7, 7]
    np.testing.assert_allclose(scores7, logits[:, 7], rtol=1e-5)


def test_oracle_completeness_for_bias_free_relu_net():
    # A bias-free ReLU/max-pool net is positively homogeneous: sum(x * grad) == logit.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5, bias=False),
    ).eval()
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    rel, _, scores = input_times_gradient(net, x, None)
    np.testing.assert_allclose(rel.reshape(4, -1).sum(1), scores, rtol=1e-4, atol=1e-5)


def test_resolve_targets_rejects_out_of_range():
    with pytest.raises(ValueError):
        resolve_targets(np.zeros((2, 3)), [0, 3])


def test_relative_l2_error():
    b = np.ones((2, 4))
    a = b.copy()
    a[1] *= 1.5
    np.testing.assert_allclose(relative_l2_error(a, b), [0.0, 0.5])
    z = np.zeros((2, 3))
    e = relative_l2_error(np.array([[0.0, 0, 0], [1, 0, 0]]), z)
    assert e[0] == 0.0 and np.isinf(e[1])
    with pytest.raises(ValueError):
        relative_l2_error(np.ones((2, 3)), np.ones((3, 2)))


def test_oracle_on_efficientnet_lite0(reference_model):
    model = reference_model("efficientnet_lite0")
    x = example_input("efficientnet_lite0", 2, seed=3)
    rel, cls, scores = input_times_gradient(model, x, np.array([-1, 285]))
    assert rel.shape == x.shape and np.isfinite(rel).all() and np.abs(rel).max() > 0
    assert cls[1] == 285
    rel1, _, scores1 = input_times_gradient(model, x[1:], [285])
    assert relative_l2_error(rel1, rel[1:])[0] < 1e-4
    # torch sums in a batch-size-dependent order; a logit near 0 needs an absolute bound (measured
    # 1.8e-7 on an AMD EPYC for a logit of 0.015)
    np.testing.assert_allclose(scores1, scores[1:], rtol=1e-5, atol=1e-6)

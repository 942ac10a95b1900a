"""The Python API (Explainer), IO binding, exposed inner relevance and the conservation command."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import rlrp_onnx.explainer as explainer_module
from rlrp_onnx import Explainer, RlrpError, compile_model, load_model, save_model
from onnx import TensorProto, helper

from rlrp_onnx.contract import LAYER_OUTPUT_PREFIX, LOGITS_OUTPUT, SCORE_OUTPUT
from rlrp_onnx.preprocess import PRESETS, prepare
from rlrp_onnx.runtime import create_session, run_bound

from test_errors import run_cli
from test_oracle import run

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="module")
def photos():
    paths = sorted((ROOT / "models" / "images").iterdir())
    batch, _ = prepare(paths * 2, PRESETS["efficientnet-lite0"])  # 6 images
    return batch


@pytest.fixture(scope="module")
def explainer():
    return Explainer(MODEL, device="cpu", batch_size=4)


def test_batches_do_not_change_the_result(explainer, photos):
    whole = explainer.explain(photos)
    single = Explainer(explainer.model, device="cpu", batch_size=1).explain(photos)
    assert explainer.provider == "CPUExecutionProvider"
    np.testing.assert_array_equal(whole.classes, single.classes)
    np.testing.assert_allclose(whole.relevance, single.relevance, rtol=1e-4, atol=1e-7)
    assert whole.relevance.shape == photos.shape and whole.scores.shape == (6,)


def test_top_k(explainer, photos):
    top = explainer.explain(photos, top_k=3)
    plain = explainer.explain(photos)
    logits = run(MODEL, {"image": photos})["logits"]
    np.testing.assert_array_equal(top.classes, np.argsort(-logits, axis=1)[:, :3])
    assert top.relevance.shape == (6, 3, *photos.shape[1:])
    np.testing.assert_allclose(top.scores, np.take_along_axis(logits, top.classes, 1), rtol=1e-6)
    np.testing.assert_allclose(top.relevance[:, 0], plain.relevance, rtol=1e-5, atol=1e-8)
    assert not np.allclose(top.relevance[:, 1], top.relevance[:, 0])


SATURATING = np.array([20.0, 30.0, -300.0, -200.0, 0.0], np.float32)  # logits of an image of ones


def saturating_model(head: str, batch="N") -> onnx.ModelProto:
    """Images [N, 3, 2, 2] → logits (``SATURATING`` for an image of ones) → ``head``, whose probabilities
    tie where the logits do not (sigmoid: 1.0 twice; softmax: 0.0 twice)."""
    from onnx_builders import make_model

    weights = np.tile(SATURATING / 12, (12, 1))
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node(head, ["logits"], ["probabilities"])]
    return make_model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 2, 2])],
                      [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 5])], {"w": weights})


@pytest.mark.parametrize("head", ["Sigmoid", "Softmax"])
def test_top_k_ranks_by_the_logits_the_class_is_chosen_from(head):
    """Saturated probabilities tie; the logits, which the class and score come from, do not."""
    images = np.ones((2, 3, 2, 2), np.float32)
    explainer = Explainer(saturating_model(head), device="cpu")
    top, plain = explainer.explain(images, top_k=5), explainer.explain(images)
    np.testing.assert_array_equal(top.classes, [[1, 0, 4, 3, 2]] * 2)
    np.testing.assert_allclose(top.scores, np.sort(SATURATING)[::-1][None].repeat(2, 0), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(plain.classes, top.classes[:, 0])
    np.testing.assert_allclose(run(explainer.model, {"image": images})[LOGITS_OUTPUT], SATURATING[None].repeat(2, 0),
                               rtol=1e-5, atol=1e-4)


def test_explicit_targets(explainer, photos):
    chosen = explainer.explain(photos, targets=[1, 2, 3, -1, 5, 6])
    assert list(chosen.classes[[0, 1, 2, 4, 5]]) == [1, 2, 3, 5, 6]
    assert chosen.classes[3] == explainer.explain(photos).classes[3]


def test_a_compiled_file_is_opened_from_its_path(explainer, photos, tmp_path, monkeypatch):
    """ONNX Runtime reads a compiled file itself (no serialised copy of its weights); a compiled
    ModelProto reaches it as such, a source file as the bytes of its compiled form. The explanations
    are the same."""
    path = tmp_path / "compiled.onnx"
    save_model(explainer.model, path)
    opened = []
    monkeypatch.setattr(explainer_module, "create_session",
                        lambda model, device: opened.append(model) or create_session(model, device))
    from_file = Explainer(path, device="cpu").explain(photos)
    Explainer(explainer.model, device="cpu")
    Explainer(MODEL, device="cpu")
    assert opened[0] == path
    assert [type(model).__name__ for model in opened[1:]] == ["ModelProto", "bytes"]
    np.testing.assert_array_equal(from_file.relevance, explainer.explain(photos).relevance)


def test_a_compiled_file_is_not_parsed_before_onnx_runtime_reads_it(explainer, tmp_path, monkeypatch):
    """Only the metadata of a compiled file is read (its rule, mask form and explained output); a
    compiled model whose metadata lacks what the compiler writes is refused with a clear error."""
    path = tmp_path / "compiled.onnx"
    save_model(explainer.model, path)
    loaded = []
    monkeypatch.setattr(explainer_module, "load_model", lambda model: loaded.append(model) or load_model(model))
    assert Explainer(path, device="cpu").explained_output == explainer.explained_output
    with pytest.raises(RlrpError, match="already compiled with masks 'steps'"):
        Explainer(path, masks="comparisons", device="cpu")
    assert loaded == []
    stripped = explainer.model
    kept = [p for p in stripped.metadata_props if p.key != "rlrp.explained_output"]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(kept)
    save_model(stripped, path)
    for model in (path, stripped):
        with pytest.raises(RlrpError, match="without its 'rlrp.explained_output' metadata"):
            Explainer(model, device="cpu")


def test_the_explainer_model_is_read_again_not_held(explainer, tmp_path):
    """``Explainer.model`` is read from the compiled file, or from the bytes ONNX Runtime was given, when
    asked: no ModelProto with the weights stays in memory beside ONNX Runtime's copy."""
    path = tmp_path / "compiled.onnx"
    save_model(explainer.model, path)
    from_file = Explainer(path, device="cpu")
    assert from_file.model == onnx.load(path)
    assert explainer.model == compile_model(MODEL, adjoints="winograd")  # on CPU: explainer.CPU_FORMS
    for held in (from_file, explainer):
        assert not [name for name, value in vars(held).items() if isinstance(value, onnx.ModelProto)]


def test_no_images_give_empty_results(explainer, photos):
    none = explainer.explain(photos[:0])
    assert none.relevance.shape == (0, *photos.shape[1:]) and none.classes.shape == none.scores.shape == (0,)
    top = explainer.explain(photos[:0], top_k=2)
    assert top.relevance.shape == (0, 2, *photos.shape[1:]) and top.classes.shape == (0, 2)


def test_api_errors(explainer, photos):
    with pytest.raises(RlrpError, match="batch_size"):
        Explainer(MODEL, batch_size=0)
    with pytest.raises(RlrpError, match="either targets or top_k"):
        explainer.explain(photos, targets=[1] * 6, top_k=2)
    for top_k in (0, -2, 1.5, True):
        with pytest.raises(RlrpError, match="top_k must be a whole number of classes, at least 1"):
            explainer.explain(photos, top_k=top_k)
    with pytest.raises(RlrpError, match="the 1001 best classes were asked for, but the model has only 1000"):
        explainer.explain(photos[:1], top_k=1001)
    with pytest.raises(RlrpError, match="target class 1000 does not exist: the model has 1000 classes"):
        explainer.explain(photos, targets=[1, 2, 1000, 3, 4, 5])
    with pytest.raises(RlrpError, match="already compiled with 'rlrp'"):
        Explainer(explainer.model, rule="epsilon")
    with pytest.raises(RlrpError, match="already compiled to explain output 'logits'; compile the source model "
                                        "to explain 'features'"):
        Explainer(explainer.model, output_name="features")
    # the whole array's shape is named, not that of the batch it would be cut into
    with pytest.raises(RlrpError, match=r"array of images of shape \[224, 224, 3\] does not fit input 'image' "
                                        r"of shape \[\?, 3, 224, 224\]"):
        explainer.explain(photos[0].transpose(1, 2, 0))
    broken = photos.copy()
    broken[4, 1, 100, 7] = np.nan
    with pytest.raises(RlrpError, match="image 4 holds NaN or infinite values"):
        explainer.explain(broken)
    broken[4, 1, 100, 7] = -np.inf
    with pytest.raises(RlrpError, match="image 4 holds NaN or infinite values"):
        explainer.explain(broken, top_k=2)
    with pytest.raises(RlrpError, match="images must be an array of numbers, got dtype <U1"):
        explainer.explain(np.full((1, 3, 224, 224), "a"))


def test_explain_images_refuses_a_bad_file_before_writing_anything(explainer, tmp_path):
    from rlrp_onnx.explain import explain_images

    good = []
    for i in range(explainer.batch_size):  # a whole batch before the bad file
        good.append(tmp_path / f"cat{i}.png")
        good[-1].write_bytes((ROOT / "models" / "images" / "chelsea.png").read_bytes())
    bad = tmp_path / "zz_notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(RlrpError, match="not an image.*zz_notes.jpg"):
        explain_images(explainer, [*good, bad], PRESETS["efficientnet-lite0"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_targets_batch_size_and_model():
    """Checked up front with one-line errors (targets were cast: 1.7 ran as class 1)."""
    from onnx_builders import dense_classifier

    model = dense_classifier(classes=4)
    tiny, rows = Explainer(model, device="cpu", batch_size=2), np.ones((3, 6), np.float32)
    assert tiny.explain(rows, 2).classes.tolist() == [2, 2, 2]
    for targets in ([1.7, 2.9, 0.5], ["1", "2", "3"], [True, False, True], [1, True, 2], [1, np.True_, 2],
                    [1, 2], [3], [[1], [2], [3]]):
        with pytest.raises(RlrpError, match="targets must be 3 integer class indices, one per image"):
            tiny.explain(rows, targets)
    for batch_size in (0, 2.5, "4", True):
        with pytest.raises(RlrpError, match="batch_size must be a whole number of images, at least 1"):
            Explainer(model, device="cpu", batch_size=batch_size)
    with pytest.raises(RlrpError, match="ONNX file path or an onnx.ModelProto .*, got bytes$"):
        Explainer(model.SerializeToString(), device="cpu")
    with pytest.raises(RlrpError, match="ONNX file path or an onnx.ModelProto .*, got bytes$"):
        compile_model(model.SerializeToString())
    with pytest.raises(RlrpError, match="images must be an array"):
        tiny.explain(None)


def test_images_that_are_not_arrays_of_numbers_and_bad_devices_are_named(monkeypatch):
    """File names, objects and torch tensors numpy cannot take are one-line errors that say what was given
    (not its whole repr, not a raw exception); an unknown device is refused before anything is compiled."""
    import torch
    from onnx_builders import dense_classifier

    model = dense_classifier(classes=4)
    tiny = Explainer(model, device="cpu")
    for images, error in [("photo.png", "got a str [(]image files: see rlrp_onnx.preprocess.prepare[)]$"),
                          (["a.png", "b.png"], "got dtype <U5 [(]preprocessed pixels; image files: see"),
                          ({"x": np.zeros((1, 6))}, "got a dict$"),
                          (torch.zeros(1, 6, requires_grad=True), "a Tensor could not become one: Can't call numpy"),
                          (torch.zeros(1, 6, dtype=torch.bfloat16), "a Tensor could not become one: .*BFloat16")]:
        with pytest.raises(RlrpError, match=error):
            tiny.explain(images)
    with pytest.raises(RlrpError, match="does not fit input"):  # the shape is named before any NaN
        tiny.explain(np.full((2, 5), np.nan, np.float32))
    monkeypatch.setattr(explainer_module, "explainer_model", lambda *args, **kwargs: pytest.fail("compiled"))
    for device in ("gpu", None):
        with pytest.raises(RlrpError, match=f"unknown device {device!r} .*: choose one of auto, cpu, cuda"):
            Explainer(model, device=device)


def test_top_k_reuses_the_ranking_run_and_refuses_too_many_classes_before_running(monkeypatch):
    """top_k=K runs the model K times (the run that ranks the classes explains the best one), with the
    results of K runs for chosen targets; more classes than the model has are refused before any run,
    for no images too."""
    from onnx_builders import dense_classifier

    tiny, rows = Explainer(dense_classifier(classes=4), device="cpu", batch_size=2), np.random.default_rng(3).normal(size=(3, 6))
    runs = []
    counted = explainer_module.run_explainer
    monkeypatch.setattr(explainer_module, "run_explainer", lambda *args: runs.append(1) or counted(*args))
    top = tiny.explain(rows.astype(np.float32), top_k=2)
    assert len(runs) == 2 * 2  # two passes of two batches (was three passes)
    for k in range(2):
        alone = tiny.explain(rows.astype(np.float32), top.classes[:, k])
        for field in ("relevance", "classes", "scores"):
            np.testing.assert_array_equal(getattr(top, field)[:, k], getattr(alone, field))
    runs.clear()
    for images in (rows.astype(np.float32), np.zeros((0, 6), np.float32)):
        with pytest.raises(RlrpError, match="the 5 best classes were asked for, but the model has only 4"):
            tiny.explain(images, top_k=5)
    assert runs == []


def test_masks_form_of_source_and_compiled_models(explainer, photos):
    """A source model compiles with the chosen mask form; a compiled one keeps its own, and asking for
    the other is an error, not a silent fallback."""
    comparisons = Explainer(MODEL, device="cpu", batch_size=4, masks="comparisons")
    meta = {p.key: p.value for p in comparisons.model.metadata_props}
    assert meta["rlrp.masks"] == "comparisons"
    assert not [n for n in comparisons.model.graph.node if n.op_type == "HardSigmoid"]
    a, b = explainer.explain(photos[:2]), comparisons.explain(photos[:2])
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(b.relevance, a.relevance, rtol=1e-4, atol=1e-5 * np.abs(a.relevance).max())
    given = comparisons.model
    assert Explainer(given, device="cpu").model is given
    with pytest.raises(RlrpError, match="already compiled with masks 'comparisons'"):
        Explainer(comparisons.model, masks="steps")
    with pytest.raises(RlrpError, match="masks must be one of steps, comparisons"):
        compile_model(MODEL, masks="fast")


def test_io_binding_gives_the_same_outputs(explainer, photos):
    session = explainer.runtime.session
    names = [o.name for o in session.get_outputs()]
    bound = run_bound(session, {"image": photos[:2]}, names, "cpu")
    plain = session.run(names, {"image": photos[:2]})
    for a, b in zip(bound, plain):
        np.testing.assert_array_equal(a, b)


def test_exposed_layers_conserve_the_logit_in_a_bias_free_network(tmp_path):
    import robustness

    path, x, _ = robustness.bias_free_case(tmp_path)
    compiled = compile_model(path, expose="all")
    out = run(compiled, {"image": x})
    exposed = [name for name in out if name.startswith(LAYER_OUTPUT_PREFIX)]
    assert len(exposed) >= 8
    for name in exposed:
        totals = out[name].reshape(len(x), -1).sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(totals, out[SCORE_OUTPUT], rtol=1e-4, err_msg=name)


def test_a_tensor_named_twice_is_exposed_once():
    compiled = compile_model(MODEL, expose=["/_swish/Clip_output_0"] * 2)
    exposed = [o.name for o in compiled.graph.output if o.name.startswith(LAYER_OUTPUT_PREFIX)]
    assert exposed == [LAYER_OUTPUT_PREFIX + "/_swish/Clip_output_0"]


def test_a_model_that_fails_at_run_time_is_reported_in_one_line(tmp_path, capfd):
    """A batch axis declared dynamic in a graph that runs one image only (a Reshape to [1, -1]), as older
    exports often are: ONNX Runtime's failure as an RlrpError that suggests a batch of one, no log line."""
    from onnx_builders import make_model
    from rlrp_onnx.cli import main

    model = make_model([helper.make_node("Reshape", ["image", "one_row"], ["flat"]),
                        helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                       [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                       {"one_row": np.array([1, -1]), "w": np.ones((12, 5), np.float32)})
    explainer = Explainer(model, device="cpu")
    assert explainer.explain(np.ones((1, 3, 2, 2), np.float32)).classes.shape == (1,)
    with pytest.raises(RlrpError, match=r"ONNX Runtime failed running the model on 2 image\(s\): .*MatMul.*"
                                        "if it runs one image at a time.*use a batch size of 1"):
        explainer.explain(np.ones((2, 3, 2, 2), np.float32))
    path = tmp_path / "one_row.onnx"
    onnx.save(model, path)
    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes((ROOT / "models" / "images" / "chelsea.png").read_bytes())
    capfd.readouterr()
    code = main(["explain", str(path), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--size", "2"])
    err = capfd.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("rlrp-onnx: error: ONNX Runtime failed running the model on 2 image(s)"), err


@pytest.mark.parametrize("element", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_relevance_at_the_output_of_a_cast(element):
    """Planning drops float Casts that change no type (in a float16 model's float32 twin, every float
    Cast); their outputs are still exposed, by name or with "all", as the tensors they copy (they were
    refused, or left out of "all")."""
    from onnx_builders import make_model

    dtype = helper.tensor_dtype_to_np_dtype(element)
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("Cast", ["c"], ["c32"], to=TensorProto.FLOAT),
                        helper.make_node("Relu", ["c32"], ["r32"]), helper.make_node("Cast", ["r32"], ["r"], to=element),
                        helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1)],
                       [helper.make_tensor_value_info("image", element, ["N", 3, 6, 6])],
                       [helper.make_tensor_value_info("logits", element, ["N", 5])],
                       {"w": rng.standard_normal((4, 3, 3, 3)).astype(dtype),
                        "w2": rng.standard_normal((5, 144)).astype(dtype)})
    compiled = compile_model(model, expose="all")
    exposed = [o.name[len(LAYER_OUTPUT_PREFIX):] for o in compiled.graph.output if o.name.startswith(LAYER_OUTPUT_PREFIX)]
    assert exposed == ["c", "c32", "r32", "r", "f"]
    out = run(compiled, {"image": rng.standard_normal((2, 3, 6, 6)).astype(dtype)})
    np.testing.assert_array_equal(out[LAYER_OUTPUT_PREFIX + "c32"], out[LAYER_OUTPUT_PREFIX + "c"])
    np.testing.assert_array_equal(out[LAYER_OUTPUT_PREFIX + "r"], out[LAYER_OUTPUT_PREFIX + "r32"])
    assert [o.name for o in compile_model(model, expose=["r"]).graph.output][-1] == LAYER_OUTPUT_PREFIX + "r"


def test_expose_unknown_tensor():
    with pytest.raises(RlrpError, match="not tensors on the relevance path"):
        compile_model(MODEL, expose=["no_such_tensor"])


def test_conservation_command(capsys):
    code, out, err = run_cli(capsys, "conservation", MODEL, ROOT / "models" / "images" / "coffee.jpg",
                             "--preset", "efficientnet-lite0", "--device", "cpu")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].endswith("class 967, logit 10.6892, rule rlrp")
    assert any("GlobalAveragePool" in line for line in lines) and lines[-2].startswith("input rlrp_relevance")
    assert any(line.endswith("  branch") for line in lines) and lines[-1].startswith("branch: ")  # residual blocks
    pool = next(line for line in lines if "GlobalAveragePool" in line).split()
    assert float(pool[-1]) == pytest.approx(float(pool[-2]) / 10.6892, rel=1e-3)


@pytest.mark.parametrize("bad_image, option, error", [
    (True, (), "not an image, or a format Pillow cannot read: {text}"),
    (False, ("--std", "1,1"), "mean and std need one value, or one per channel (3); got (0.0,) and (1.0, 1.0)"),
])
def test_conservation_refuses_a_bad_request_before_compiling(capsys, tmp_path, monkeypatch, bad_image, option, error):
    import rlrp_onnx.compiler

    def compile_model(*args, **kwargs):
        raise AssertionError("compiled before the request was checked")

    monkeypatch.setattr(rlrp_onnx.compiler, "compile_model", compile_model)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    image = text if bad_image else ROOT / "models" / "images" / "chelsea.png"
    code, _, err = run_cli(capsys, "conservation", MODEL, image, "--device", "cpu", *option)
    assert code != 0 and err.strip() == "rlrp-onnx: error: " + error.format(text=text)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's
@pytest.mark.parametrize("fixed", [1, 2])
def test_models_with_a_fixed_batch_size(tmp_path, fixed):
    """A model exported without a dynamic batch axis explains any number of images, like its dynamic twin."""
    import torch

    from exporting import export_onnx
    from reference_models import example_input, make_model

    model = make_model("simple_cnn")
    static = tmp_path / "static.onnx"
    with torch.no_grad():  # no dynamic axes: the batch size is fixed in the file
        torch.onnx.export(model, (torch.from_numpy(example_input("simple_cnn", fixed)),), str(static),
                          dynamo=False, opset_version=17, input_names=["image"])
    dynamic = export_onnx(model, example_input("simple_cnn", 2), tmp_path / "dynamic.onnx")
    images = example_input("simple_cnn", 5, seed=7)
    fixed_run, dynamic_run = Explainer(static, device="cpu", batch_size=4), Explainer(dynamic, device="cpu")
    assert fixed_run.batch_size == fixed
    for kwargs in ({}, {"targets": [1, 2, 3, -1, 5]}, {"top_k": 2}):
        got, want = fixed_run.explain(images, **kwargs), dynamic_run.explain(images, **kwargs)
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-4, atol=1e-6)
        assert got.scores.shape == want.scores.shape


def test_compiling_in_memory_leaves_no_graph_holding_the_weights():
    """The compiler's graphsurgeon graph (reference cycles, reaching the weights of the model compiled in
    place) is collected before ONNX Runtime loads its copy, even with automatic collection off."""
    import gc

    import onnx_graphsurgeon as gs

    def graphs() -> int:
        return sum(type(o) is gs.Graph for o in gc.get_objects())

    gc.collect()
    before = graphs()
    gc.disable()
    try:
        Explainer(MODEL, device="cpu")
        after = graphs()
    finally:
        gc.enable()
    assert after == before

"""Bad input gets one clear line naming the file, node or op, and a non-zero exit — never a traceback."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rlrp_onnx import Explainer, RlrpError, compile_model
from rlrp_onnx.cli import main

from onnx_builders import dense_classifier, make_model
from test_oracle import run


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rlrp-onnx: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def dense_path(tmp_path):
    path = tmp_path / "dense.onnx"
    onnx.save(dense_classifier(), path)
    return path


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compile", tmp_path / "absent.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "absent.onnx", "no such file")


def test_not_onnx(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "notes.onnx")


def test_opset_below_11(tmp_path, capsys):
    """Refused, with the re-export and the ONNX converter named; the converter's output compiles."""
    from onnx import version_converter

    old = dense_classifier()
    old.opset_import[0].version = 9
    path = tmp_path / "old.onnx"
    onnx.save(old, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "old.onnx", "opset 9 is not supported", "convert_version(model, 13)")
    onnx.save(version_converter.convert_version(old, 13), path)
    assert run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")[0] == 0


def _old_dense(opset: int, front=()) -> onnx.ModelProto:
    """x [1, 2, 3, 3] → ``front`` nodes → y → Flatten → Gemm (broadcast where opset < 7) → Relu → Gemm → logits,
    unchecked (ImageScaler has no schema in onnx any more)."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(size=(8, 18)), "b1": rng.normal(size=8), "w2": rng.normal(size=(4, 8)),
               "b2": rng.normal(size=4)}
    old = {"broadcast": 1} if opset < 7 else {}
    nodes = [*front, helper.make_node("Flatten", ["y"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1, **old),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], transB=1, **old)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4  # as such files are (helper's default, the newest, is past older ONNX Runtimes)
    return model


def test_opset_below_11_advice_fits_the_file(tmp_path, capsys):
    """The converter's advice carries the steps this file needs: two conversions below opset 6 (its Gemm
    adapter needs shapes the earlier adapters drop), ImageScaler rewritten first, and the coordinates of
    the Resize written for a linear Upsample; each followed as said, the converted model computes what the
    original does and compiles."""
    from onnx import version_converter

    x = np.random.default_rng(1).normal(size=(1, 2, 3, 3)).astype(np.float32)
    opset3 = _old_dense(3, [helper.make_node("Relu", ["x"], ["y"])])
    onnx.save(opset3, tmp_path / "old.onnx")
    code, _, err = run_cli(capsys, "compile", tmp_path / "old.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "opset 3 is not supported", "convert_version(model, 6), then "
                          "onnx.shape_inference.infer_shapes, then convert_version(..., 13)")
    converted = version_converter.convert_version(
        onnx.shape_inference.infer_shapes(version_converter.convert_version(opset3, 6)), 13)
    weights = {t.name: numpy_helper.to_array(t) for t in opset3.graph.initializer}
    hidden = np.maximum(np.maximum(x, 0).reshape(1, -1) @ weights["w1"].T + weights["b1"], 0)
    np.testing.assert_allclose(run(converted, {"x": x})["logits"], hidden @ weights["w2"].T + weights["b2"],
                               rtol=1e-5, atol=1e-5)
    compile_model(converted)

    scaler = _old_dense(8, [helper.make_node("ImageScaler", ["x"], ["y"], scale=0.5, bias=[0.1, -0.2])])
    with pytest.raises(RlrpError, match="rewrite its ImageScaler nodes as Mul and Add"):
        compile_model(scaler)

    upsample = _old_dense(9, [helper.make_node("Upsample", ["x", "scales"], ["u"], mode="linear"),
                              helper.make_node("MaxPool", ["u"], ["y"], kernel_shape=[2, 2], strides=[2, 2])])
    upsample.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    with pytest.raises(RlrpError, match="coordinate_transformation_mode 'asymmetric' on the Resize") as refusal:
        compile_model(upsample)
    assert "convert_version(model, 13)" in str(refusal.value)
    converted = version_converter.convert_version(upsample, 13)
    for node in (n for n in converted.graph.node if n.op_type == "Resize"):
        node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
    np.testing.assert_array_equal(run(converted, {"x": x})["logits"], run(upsample, {"x": x})["logits"])
    compile_model(converted)


def test_truncated_file(tmp_path, capsys, dense_path):
    data = dense_path.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
        assert_one_line_error(code, err, path.name)


@pytest.mark.parametrize("damage", ["missing", "cut"])
def test_external_data_missing_or_cut(tmp_path, capsys, damage):
    """A model whose weights live in a .data file beside it: that file gone or too short."""
    path = tmp_path / "outside.onnx"
    onnx.save_model(dense_classifier(), str(path), save_as_external_data=True, location="outside.onnx.data",
                    size_threshold=0)
    data = tmp_path / "outside.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:10])
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    if damage == "missing":
        assert_one_line_error(code, err, "outside.onnx: not a readable ONNX model", "outside.onnx.data")
    else:  # onnx 1.23 refuses to read it; 1.19 reads too little, which the checks after loading find
        assert_one_line_error(code, err, "outside.onnx: ")
        assert "exceeds available data" in err or "corrupt ONNX model" in err, err


def test_invalid_graph_is_reported_as_corrupt(tmp_path, capsys):
    """The ONNX checker rejects a node reading a tensor nothing defines; a weight whose data is shorter
    than its shape is rejected with every onnx version (its checker tests that from 1.23 on)."""
    weights = onnx.numpy_helper.from_array(np.ones((2048, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "undefined"], ["logits"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[weights])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "broken.onnx", "corrupt ONNX model", "undefined")

    graph.initializer[0].raw_data = weights.raw_data[:100]
    graph.node.pop()
    graph.output[0].name = "h"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "broken.onnx", "corrupt ONNX model", "declared shape")
    with pytest.MonkeyPatch.context() as patch:  # a checker before onnx 1.23, which lets it pass
        patch.setattr(onnx.checker, "check_model", lambda model: None)
        code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "broken.onnx", "corrupt ONNX model", "weight 'w'", "[2048, 4]")


@pytest.mark.parametrize("stored, fragments", [
    ("twice", ["stores its data twice, in raw_data and float_data"]),
    ("float_data cut", ["does not fit its declared shape [2048, 4]"]),
    ("raw_data cut", ["does not fit its declared shape [2048, 4]", "100 bytes of data, 32768 expected"]),
])
def test_large_weight_stored_wrongly_is_reported_as_corrupt(tmp_path, capsys, stored, fragments):
    """onnx's checker sees a copy without the large weights: the loader checks how they store their data."""
    values = np.ones((2048, 4), np.float32)
    weights = onnx.numpy_helper.from_array(values, "w")
    if stored == "twice":
        weights.float_data.extend(values.ravel().tolist())
    elif stored == "float_data cut":
        weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2048, 4], float_data=[1.0] * 100)
    else:
        weights.raw_data = weights.raw_data[:100]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[weights])
    path = tmp_path / "stored.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "stored.onnx", "corrupt ONNX model", "weight 'w'", *fragments)


def test_outputs_declared_without_a_shape(tmp_path, capsys):
    """ONNX Runtime runs a model whose outputs declare no shape, onnx's checker refuses it: the loader
    declares the inferred shape, and the model compiles and explains as with the shape written."""
    model = dense_classifier()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path, out = tmp_path / "unshaped.onnx", tmp_path / "unshaped.rlrp.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", out)
    assert code == 0, err
    assert onnx.load(out).graph == compile_model(dense_classifier()).graph


def test_directory_as_model(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compile", tmp_path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "not a file")


@pytest.mark.parametrize("kind,expected", [
    (TensorProto.DOUBLE, ["no float32, float16 or integer input", "(inputs: x double)",
                          "convert the model to float32"]),
    (TensorProto.BFLOAT16, ["no float32, float16 or integer input", "(inputs: x bfloat16)",
                            "convert the model to float32"])])
def test_no_input_to_explain(tmp_path, capsys, kind, expected):
    model = make_model(
        [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        [helper.make_tensor_value_info("x", kind, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        {"w": np.ones((3, 2), np.float32)})
    path = tmp_path / "other.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "other.onnx", *expected)


OTHER_FLOAT_SECTIONS = {  # the nodes, the weight's type, the tensor named, its type
    "double": ([helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.DOUBLE),
                helper.make_node("MatMul", ["wide", "w"], ["m"]),
                helper.make_node("Cast", ["m"], ["logits"], to=TensorProto.FLOAT)], np.float64, "wide", "float64"),
    "bfloat16": ([helper.make_node("Cast", ["x"], ["narrow"], to=TensorProto.BFLOAT16),
                  helper.make_node("Cast", ["narrow"], ["back"], to=TensorProto.FLOAT),
                  helper.make_node("MatMul", ["back", "w"], ["logits"])], np.float32, "narrow", "bfloat16"),
}


@pytest.mark.parametrize("kind", list(OTHER_FLOAT_SECTIONS))
def test_a_section_of_another_float_type_is_named(tmp_path, capsys, kind):
    """A float32 model computing in double between Casts, or rounding through bfloat16 (``h.bfloat16().float()``):
    refused, naming that tensor (bfloat16, which numpy has no type for, was reported as an output that
    depends on no float input, and onnx-graphsurgeon printed a warning on standard output)."""
    nodes, weight_type, name, type_name = OTHER_FLOAT_SECTIONS[kind]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                       {"w": np.ones((3, 2), weight_type)})
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, path)
    code, out, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert not out
    assert_one_line_error(code, err, f"{kind}.onnx", f"except through '{name}', a {type_name} tensor",
                          "convert the model to float32")


@pytest.mark.parametrize("static", [True, False])
def test_a_quantized_model_is_named_as_such(tmp_path, capsys, static):
    """QDQ (static) quantization turns the input into int8 before the first layer, dynamic quantization
    computes with integers: both refused as quantized models (the first was reported as an output that
    does not depend on any float input, nothing more)."""
    if static:
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quantize_x"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
                 helper.make_node("MatMul", ["dq", "w"], ["logits"])]
        weights = {"w": np.ones((3, 2), np.float32), "scale": np.float32(0.1), "zero": np.int8(0)}
        expected = ("except through the integers of QuantizeLinear 'quantize_x'",)
    else:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qscale", "qzero"], name="quantize_x"),
                 helper.make_node("MatMulInteger", ["q", "wq", "qzero"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["accf", "qscale"], ["logits"])]
        weights = {"wq": np.ones((3, 2), np.uint8)}
        expected = ("quantize_x (DynamicQuantizeLinear: no relevance rule",)
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], weights)
    path = tmp_path / "quantized.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "quantized.onnx", *expected,
                          "quantized models are not supported: explain the float model they were quantized from")


def test_ops_of_other_domains_are_not_taken_for_onnx_ops(tmp_path, capsys):
    """A custom-domain op is never read as the ONNX op of the same name (a custom "Relu" whose output type
    is declared was explained as a ReLU; one without was "an output that does not depend on any float
    input", nothing more); ONNX Runtime's own ops, which a saved optimized model holds, are named with the
    remedy."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["a"], domain="my.ops", name="custom_relu"),
         helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=list(dense_classifier().graph.initializer))
    custom = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    custom.ir_version = 8
    onnx.save(custom, tmp_path / "custom.onnx")
    code, _, err = run_cli(capsys, "compile", tmp_path / "custom.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "custom.onnx", "output 'logits' does not depend on any float input as far as "
                          "types tell", "the output of Relu 'custom_relu', domain 'my.ops'")
    custom.graph.value_info.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8]))  # typed
    onnx.save(custom, tmp_path / "custom.onnx")
    code, _, err = run_cli(capsys, "compile", tmp_path / "custom.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "custom.onnx", "custom_relu (Relu: an op of the domain 'my.ops', not of ONNX's own)")

    import onnxruntime

    options = onnxruntime.SessionOptions()  # ONNX Runtime fuses Gemm and Relu into its FusedGemm
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(dense_classifier().SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert any(n.domain == "com.microsoft" for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    code, _, err = run_cli(capsys, "compile", tmp_path / "optimized.onnx", "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "optimized.onnx", "an ONNX Runtime op (com.microsoft) from a model it optimized: "
                          "compile the model as exported")


def test_output_not_class_scores(tmp_path, capsys):
    model = make_model(
        [helper.make_node("Conv", ["image", "w"], ["map"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 2, 8, 8])],
        {"w": np.ones((2, 3, 3, 3), np.float32)})
    path = tmp_path / "segmenter.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "segmenter.onnx", "class scores", "'map'")


def test_several_outputs_could_be_class_scores(tmp_path, capsys):
    model = make_model(
        [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1), helper.make_node("Gemm", ["x", "w"], ["b"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2]) for name in ("a", "b")],
        {"w": np.ones((2, 3), np.float32)})
    path = tmp_path / "two_heads.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "two_heads.onnx", "several outputs could be class scores (a, b)", "--output")
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", "--output", "b")
    assert code == 0, err


def test_logits_beside_their_softmax(tmp_path, capsys):
    """``logits`` and ``prob = Softmax(logits)`` both outputs, as model-zoo files give them: the logits are
    explained without asking which (both name the same scores); beside a second head it is still asked."""
    from rlrp_onnx.contract import META_EXPLAINED_OUTPUT

    nodes = [helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 2]) for name in ("prob", "logits")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    compiled = compile_model(make_model(nodes, [x], outputs, w))
    assert {p.key: p.value for p in compiled.metadata_props}[META_EXPLAINED_OUTPUT] == "logits"
    other = make_model([*nodes, helper.make_node("Gemm", ["x", "w"], ["other"], transB=1)], [x],
                       [*outputs, helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 2])], w)
    with pytest.raises(RlrpError, match=r"several outputs could be class scores \(prob, logits, other\)"):
        compile_model(other)


def test_reshape_to_a_shape_fed_at_run_time(tmp_path, capsys):
    """A Reshape to a shape the caller feeds leaves the sizes of every tensor after it unknown to shape
    inference (symbolic, not missing): one line naming the Conv that needs them (was an internal error)."""
    rng = np.random.default_rng(9)
    model = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["moved"]), helper.make_node("Conv", ["moved", "w"], ["c"]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        {"w": rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "fc": rng.normal(size=(2, 8)).astype(np.float32)})
    path = tmp_path / "fed_shape.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "fed_shape.onnx", "(Conv: the spatial size of 'moved' is unknown to ONNX "
                          "shape inference (a reshape to a size computed at run time?))")


def test_uncovered_ops_all_listed_before_building(tmp_path, capsys):
    model = make_model(
        [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc1"),
         helper.make_node("Sin", ["h"], ["s"], name="odd_sin"),
         helper.make_node("Relu", ["s"], ["r"], name="relu"),
         helper.make_node("Cos", ["r"], ["c"], name="odd_cos"),
         helper.make_node("Pad", ["c", "pads"], ["logits"], mode="reflect", name="reflect_pad")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1])],
        {"w": np.ones((3, 4), np.float32), "pads": np.array([0, -1, 0, -1], np.int64)})
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "odd.onnx", "3 node(s) not covered", "odd_sin (Sin", "odd_cos (Cos",
                          "reflect_pad (Pad: Pad mode 'reflect' with a negative pad")
    assert not (tmp_path / "o.onnx").exists()


def test_unwritable_output_and_source_untouched(tmp_path, capsys, dense_path):
    before = hashlib.sha256(dense_path.read_bytes()).hexdigest()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", blocker / "sub" / "o.onnx")
    assert_one_line_error(code, err, "cannot write", "o.onnx")
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", tmp_path)
    assert_one_line_error(code, err, f"cannot write {tmp_path}", "directory")
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", dense_path)
    assert_one_line_error(code, err, "refusing to overwrite the source")
    assert hashlib.sha256(dense_path.read_bytes()).hexdigest() == before


def test_dynamic_spatial_size_needs_input_shape(tmp_path, capsys):
    path = _dynamic_gap_model(tmp_path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "dyn.onnx", "'image'", "--input-shape")
    code, out, _ = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", "--input-shape", "1,3,5,5")
    assert code == 0 and (tmp_path / "o.onnx").exists()


def _dynamic_gap_model(tmp_path):
    """image [N, 3, H, W] → GlobalAveragePool → Flatten → logits: its relevance scales with 1/(H·W)."""
    model = make_model(
        [helper.make_node("GlobalAveragePool", ["image"], ["p"]),
         helper.make_node("Flatten", ["p"], ["logits"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    return path


def test_pinned_sizes_are_declared_by_the_compiled_model(tmp_path):
    """A size pinned by input_shapes is fixed in the compiled model's input: the relevance pass is built
    for it, and at another size it would be silently wrong (scaled by the ratio of the areas)."""
    from rlrp_onnx import Explainer

    path = _dynamic_gap_model(tmp_path)
    compiled = compile_model(path, input_shapes={"image": [1, 3, 5, 5]})
    dims = compiled.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 5, 5]
    assert [d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    explainer = Explainer(compiled, device="cpu")
    x = np.random.default_rng(0).random((2, 3, 5, 5), dtype=np.float32)
    result = explainer.explain(x)
    assert np.allclose(result.relevance.sum(axis=(1, 2, 3)), result.scores, rtol=1e-5)
    with pytest.raises(RlrpError, match="does not fit input 'image'"):
        explainer.explain(np.ones((1, 3, 7, 7), np.float32))


@pytest.mark.parametrize("shape", [[1, 3, 0, 5], [1, 3, -5, 5], [1, 3, 5.5, 5], [0, 3, 5, 5]])
def test_input_shapes_must_be_whole_sizes(tmp_path, shape):
    """In Python (the command line refuses such sizes itself, naming --input-shape)."""
    with pytest.raises(RlrpError, match=r"dyn.onnx: the given shape .* must hold whole sizes >= 1 \(the batch's may "
                                        r"be a name or None\)"):
        compile_model(_dynamic_gap_model(tmp_path), input_shapes={"image": shape})


@pytest.mark.parametrize("shape, fragments", [
    ("1,1,5,5", ["declared [?, 3, ?, ?]", "differs on axes [1]"]),
    ("zz=1,3,5,5", ["no explained input named 'zz'", "explained inputs: image"]),
])
def test_bad_input_shapes(tmp_path, capsys, shape, fragments):
    path = _dynamic_gap_model(tmp_path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", "--input-shape", shape)
    assert_one_line_error(code, err, "dyn.onnx", *fragments)


@pytest.mark.parametrize("shape", [["batch", 3, 5, 5], [None, 3, 5, 5], [2, 3.0, 5, 5]])
def test_input_shapes_with_the_batch_named(tmp_path, shape):
    """In Python the batch may be given as a name or None (it stays as declared); other sizes whole numbers."""
    compiled = compile_model(_dynamic_gap_model(tmp_path), input_shapes={"image": shape})
    assert [d.dim_param or d.dim_value for d in compiled.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, 5, 5]


@pytest.mark.parametrize("shape", [[1, "three", 5, 5], [1, 3, 5.5, 5], [1, 3, True, 5]])
def test_input_shapes_with_sizes_not_whole_numbers(tmp_path, shape):
    """Refused in one line (a name past the batch raised a ValueError from int())."""
    with pytest.raises(RlrpError, match="must hold whole sizes >= 1"):
        compile_model(_dynamic_gap_model(tmp_path), input_shapes={"image": shape})


@pytest.mark.parametrize("option, value", [("--input-shape", "1,3,x"), ("--input-shape", "1,3,,5,5"),
                                           ("--input-shape", "1,3,5,5,"), ("--size", "224x")])
def test_sizes_with_an_empty_field_are_refused(tmp_path, capsys, option, value):
    # a size list is never read with a field left out ("1,3,x" was [1, 3])
    path = _dynamic_gap_model(tmp_path)
    if option == "--input-shape":
        code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", option, value)
        assert_one_line_error(code, err, repr(value))
    else:  # refused by the argument parser: its usage, then the error
        with pytest.raises(SystemExit) as exit_:
            main(["explain", str(path), "a.png", "--out", str(tmp_path), option, value])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.strip().splitlines()[-1].endswith(f"got {value!r}")


def test_explain_and_conservation_take_the_input_shape(tmp_path, capsys):
    from PIL import Image

    path, image = _dynamic_gap_model(tmp_path), tmp_path / "photo.png"
    Image.fromarray(np.full((9, 9, 3), 200, np.uint8)).save(image)
    code, _, err = run_cli(capsys, "explain", path, image, "--out", tmp_path / "out", "--device", "cpu")
    assert_one_line_error(code, err, "dyn.onnx", "--input-shape")
    code, out, err = run_cli(capsys, "explain", path, image, "--out", tmp_path / "out", "--input-shape", "1,3,5,5")
    assert code == 0, err
    assert (tmp_path / "out" / "photo_heatmap.png").exists()
    code, out, err = run_cli(capsys, "conservation", path, image, "--input-shape", "1,3,5,5")
    assert code == 0, err
    assert out.strip().splitlines()[-1].split()[-1] == "1"  # a mean pool conserves the logit
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", "--input-shape", "1,3,a,b")
    assert_one_line_error(code, err, "--input-shape takes [NAME=]N,C,H,W", "'1,3,a,b'")
    for value in ("--input-shape=0,3,5,5", "--input-shape=-1,3,5,5", "--input-shape=x=1,3,5,0"):
        code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx", value)
        assert_one_line_error(code, err, "--input-shape takes [NAME=]N,C,H,W in whole numbers >= 1 (N only fills "
                                         "the place: the batch stays as the model declares it)")


def test_a_compiled_model_keeps_its_rule_and_parameters(tmp_path, capsys, dense_path):
    from rlrp_onnx import Explainer

    compiled = tmp_path / "eps.onnx"
    assert run_cli(capsys, "compile", dense_path, "-o", compiled, "--rule", "epsilon", "--epsilon", "0.1")[0] == 0
    explainer = Explainer(compiled, device="cpu")
    meta = {p.key: p.value for p in explainer.model.metadata_props}
    assert meta["rlrp.rule"] == "epsilon" and meta["rlrp.rule.dense"] == "epsilon(epsilon=0.1)"
    with pytest.raises(RlrpError, match="already compiled with 'epsilon'"):
        Explainer(compiled, rule="rlrp", device="cpu")
    from rlrp_onnx.methods import Options
    rows = tmp_path / "rows.png"  # six values for the model's six features: a 1x2 RGB image
    from PIL import Image
    Image.fromarray(np.full((1, 2, 3), 100, np.uint8)).save(rows)
    for epsilon in (0.2, 1e-6, 0.1):  # another value, the default, its own: a parameter given is refused
        with pytest.raises(RlrpError, match="already compiled with its rule's parameters"):
            Explainer(compiled, options=Options(epsilon=epsilon), device="cpu")
        code, _, err = run_cli(capsys, "explain", compiled, rows, "--out", tmp_path / "o", "--rule", "epsilon",
                               "--epsilon", str(epsilon), "--device", "cpu")
        assert_one_line_error(code, err, "already compiled with its rule's parameters")
    with pytest.raises(RlrpError, match="input shapes apply to a source model"):
        Explainer(compiled, input_shapes={"x": [1, 6]}, device="cpu")


def test_shapes_shape_inference_cannot_tell_are_refused(tmp_path, capsys):
    """A Reshape to sizes read from an input at run time (not from a shape, which passes/reshape_targets.py
    would evaluate): the rules need the shapes (tf2onnx's Flatten below opset 17 crashed with a TypeError
    before that pass)."""
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Concat", ["n", "flat"], ["shape"], axis=0),
         helper.make_node("Reshape", ["r", "shape"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        {"flat": np.array([18]), "w": np.ones((18, 4), np.float32)}, opset=13)
    path = tmp_path / "flat13.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "flat13.onnx", "shape inference cannot tell the shape", "crosses (f)")


def test_compiling_a_compiled_model_is_refused(tmp_path, capsys, dense_path):
    compiled = tmp_path / "c.onnx"
    assert run_cli(capsys, "compile", dense_path, "-o", compiled)[0] == 0
    code, out, err = run_cli(capsys, "compile", compiled, "-o", tmp_path / "cc.onnx")
    assert_one_line_error(code, err, "c.onnx", "already compiled", "compile the source model")
    assert not out


def test_contract_names_taken_by_the_source_are_refused(tmp_path, capsys):
    model = dense_classifier()
    model.graph.node[-1].output[0] = model.graph.output[0].name = "rlrp_score"
    path = tmp_path / "taken.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "taken.onnx", "already has tensors named rlrp_score")


def test_source_names_like_the_compilers_own_are_kept_clear_of(tmp_path):
    """Tensors named rlrp1, rlrp2, … on float→float Casts, which planning drops: the new nodes take other
    names (they clashed: "internal error, the compiled model is invalid"), and the outputs are those of
    the same model without the Casts."""
    model = dense_classifier()
    relu = next(node for node in model.graph.node if node.op_type == "Relu")
    casts, previous = [], relu.input[0]
    for i in range(1, 6):
        casts.append(helper.make_node("Cast", [previous], [f"rlrp{i}"], name=f"cast{i}", to=TensorProto.FLOAT))
        previous = f"rlrp{i}"
    relu.input[0] = previous
    position = list(model.graph.node).index(relu)
    for offset, cast in enumerate(casts):
        model.graph.node.insert(position + offset, cast)
    x = {"x": np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)}
    with_casts, plain = run(compile_model(model), x), run(compile_model(dense_classifier()), x)
    assert with_casts.keys() == plain.keys()
    for name in plain:
        np.testing.assert_array_equal(with_casts[name], plain[name])


def test_zbox_bounds_must_fit_the_layers_they_apply_to(tmp_path, capsys, dense_path):
    """dense_classifier: the first Gemm reads 6 features, the second 8. Per-feature bounds fit the first
    layer only: with zbox on every layer they are refused; as the first-layer rule of a composite they
    compile."""
    bounds = ["--low", ",".join(["0"] * 6), "--high", ",".join(["1"] * 6)]
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", tmp_path / "o.onnx", "--rule", "zbox", *bounds)
    assert_one_line_error(code, err, "dense.onnx", "zbox bounds", "(8 channels)")
    code, _, _ = run_cli(capsys, "compile", dense_path, "-o", tmp_path / "o.onnx",
                         "--composite", "epsilon_gamma_box", *bounds)
    assert code == 0
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", tmp_path / "o.onnx",
                           "--composite", "epsilon_gamma_box", "--low", "0,0", "--high", "1,1")
    assert_one_line_error(code, err, "dense.onnx", "zbox bounds", "(6 channels)")
    code, _, err = run_cli(capsys, "inspect", dense_path, "--rule", "zbox", *bounds)  # inspect checks them too
    assert_one_line_error(code, err, "dense.onnx", "zbox bounds", "(8 channels)")


def test_expose_takes_one_tensor_name(dense_path):
    compiled = compile_model(dense_path, expose="a")
    assert "rlrp_relevance/a" in [o.name for o in compiled.graph.output]
    with pytest.raises(RlrpError, match=r"cannot expose relevance at \['bogus'\]"):
        compile_model(dense_path, expose="bogus")


def test_python_api_raises_rlrp_error(tmp_path):
    with pytest.raises(RlrpError, match="no such file"):
        compile_model(tmp_path / "absent.onnx")


def test_inspect_lists_ops_and_coverage(dense_path, capsys):
    code, out, _ = run_cli(capsys, "inspect", dense_path)
    assert code == 0
    assert "Gemm ×2" in out and "Relu ×1" in out
    assert "3 nodes, 3 covered (100.0%)" in out


def test_inspect_reports_uncovered(tmp_path, capsys):
    model = make_model(
        [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
         helper.make_node("Sin", ["h"], ["logits"], name="odd_sin")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        {"w": np.ones((3, 4), np.float32)})
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    code, out, _ = run_cli(capsys, "inspect", path)
    assert code == 0
    assert "2 nodes, 1 covered (50.0%)" in out
    assert "uncovered node odd_sin (Sin): no relevance rule" in out


def test_internal_errors_are_one_line(monkeypatch, capsys, dense_path, tmp_path):
    import rlrp_onnx.compiler

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(rlrp_onnx.compiler, "compile_model", broken)
    code, _, err = run_cli(capsys, "compile", dense_path, "-o", tmp_path / "o.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("rlrp-onnx: internal error: KeyError") and "RLRP_DEBUG" in err


def test_a_model_onnx_shape_inference_refuses_is_blamed_not_the_compiler(tmp_path, capsys):
    """A Gemm whose weight does not fit its input (the onnx checker without shape inference passes it;
    ONNX Runtime refuses to load it; onnx 1.19's strict shape inference does not see it): the error says
    the model is invalid, not that the compiler made an invalid model."""
    model = dense_classifier()
    weights = next(t for t in model.graph.initializer if t.name == "w2")
    weights.CopyFrom(onnx.numpy_helper.from_array(np.ones((4, 5), np.float32), "w2"))  # 5 inputs, 8 given
    path = tmp_path / "mismatch.onnx"
    onnx.save(model, path)
    code, out, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err, "mismatch.onnx", "the model itself is invalid", "Gemm")
    assert "internal error" not in err and not (tmp_path / "o.onnx").exists()


def test_an_invalid_compiled_model_is_reported_as_a_compiler_bug(monkeypatch, dense_path):
    """The compiler's own mistake (stood in for by a relevance node with mismatched shapes) is an internal
    error; the source passes the same checks."""
    import rlrp_onnx.compiler as compiler

    def broken_graft(*args, **kwargs):
        compiled = graft(*args, **kwargs)
        compiled.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(7, np.float32), "seven"))
        compiled.graph.node.append(helper.make_node("Add", ["rlrp_relevance", "seven"], ["broken"]))
        compiled.graph.output.append(helper.make_tensor_value_info("broken", TensorProto.FLOAT, None))
        return compiled

    graft = compiler.graft
    monkeypatch.setattr(compiler, "graft", broken_graft)
    with pytest.raises(RlrpError, match="internal error, the compiled model is invalid"):
        compile_model(dense_path)


PINNED = {"image": [1, 3, 5, 5]}


@pytest.mark.parametrize("keywords, fragment", [
    ({"input_shapes": [1, 3, 5, 5]}, "input_shapes must map input names to shapes, e.g. {'image': [1, 3, 224, 224]}"),
    ({"input_shapes": "1,3,5,5"}, "input_shapes must map input names to shapes"),
    ({"input_shapes": {"image": 5}}, "input_shapes must map input names to shapes"),
    ({"expose": 123, "input_shapes": PINNED}, "expose must be a tensor name, a list of them or \"all\"; got 123"),
    ({"expose": [1], "input_shapes": PINNED}, "expose must be a tensor name"),
    ({"rule": "epsilon", "options": {"epsilon": 0.1}}, "options must be rlrp_onnx.Options(...)"),
])
def test_malformed_keywords_are_errors_not_tracebacks(tmp_path, keywords, fragment):
    """Python callers get an RlrpError saying what each keyword takes (these raised TypeError,
    ValueError or AttributeError from inside the compiler)."""
    with pytest.raises(RlrpError) as error:
        compile_model(_dynamic_gap_model(tmp_path), **keywords)
    assert fragment in str(error.value)


def test_images_of_different_sizes_are_an_error(tmp_path):
    explainer = Explainer(_dynamic_gap_model(tmp_path), device="cpu", input_shapes={"image": [1, 3, 4, 4]})
    with pytest.raises(RlrpError, match="one array .* of one size; got a sequence of differently shaped arrays"):
        explainer.explain([np.zeros((3, 4, 4), np.float32), np.zeros((3, 2, 2), np.float32)])

"""ONNX Runtime sessions: device choice (with fakes, no GPU needed) and running a contract model."""

import re
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from rlrp_onnx import Explainer, compile_model, loading, runtime, save_model
from rlrp_onnx.contract import CLASS_OUTPUT, META_EXPLAINED_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT
from rlrp_onnx.errors import RlrpError
from rlrp_onnx.loading import PROTOBUF_LIMIT
from rlrp_onnx.runtime import CPU, CUDA, CUDA_OPTIONS, RuntimeSession, create_session, run_explainer

N_CLASSES, SHAPE = 5, (3, 4, 4)


def contract_model(weights: np.ndarray) -> onnx.ModelProto:
    """A linear classifier ``logits = flatten(image) @ W`` with the compiled-model contract by hand.

    Relevance is input × gradient of the explained logit, ``image ⊙ W[:, c]``; the target input
    defaults to [-1] (arg-max) through an initializer of the same name.
    """
    features = int(np.prod(SHAPE))
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0),
        helper.make_node("Less", [TARGET_INPUT, "zero"], ["use_best"]),
        helper.make_node("Where", ["use_best", "best", TARGET_INPUT], [CLASS_OUTPUT]),
        helper.make_node("Unsqueeze", [CLASS_OUTPUT, "axis1"], ["class_column"]),
        helper.make_node("GatherElements", ["logits", "class_column"], ["score_column"], axis=1),
        helper.make_node("Squeeze", ["score_column", "axis1"], [SCORE_OUTPUT]),
        helper.make_node("Gather", ["WT", CLASS_OUTPUT], ["gradient_flat"], axis=0),
        helper.make_node("Reshape", ["gradient_flat", "image_shape"], ["gradient"]),
        helper.make_node("Mul", ["image", "gradient"], [RELEVANCE_OUTPUT]),
    ]
    initializers = [
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(weights.T.astype(np.float32).copy(), "WT"),
        numpy_helper.from_array(np.array([-1], np.int64), TARGET_INPUT),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1, *SHAPE], np.int64), "image_shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_explainer",
        inputs=[
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *SHAPE]),
            helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, ["N"]),
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_CLASSES]),
            helper.make_tensor_value_info(RELEVANCE_OUTPUT, TensorProto.FLOAT, ["N", *SHAPE]),
            helper.make_tensor_value_info(CLASS_OUTPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
        ],
        initializer=initializers,
    )
    assert features == weights.shape[0]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {META_EXPLAINED_OUTPUT: "logits"})
    model.ir_version = 8  # what exporters write at opset 17; onnx's newest IR is too new for older runtimes
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def weights():
    return np.random.default_rng(1).normal(size=(int(np.prod(SHAPE)), N_CLASSES)).astype(np.float32)


@pytest.fixture
def images():
    return np.random.default_rng(2).uniform(0, 1, size=(3, *SHAPE)).astype(np.float32)


# --- running a contract model on CPU -------------------------------------------------------------


def test_run_explainer_explains_the_argmax_class(weights, images):
    runtime = create_session(contract_model(weights), device="cpu")
    assert runtime.provider == CPU and runtime.notice is None
    relevance, classes, scores, outputs = run_explainer(runtime, images)

    logits = images.reshape(len(images), -1) @ weights
    assert np.array_equal(classes, logits.argmax(axis=1))
    assert np.allclose(scores, logits.max(axis=1), atol=1e-5)
    assert relevance.shape == images.shape
    expected = images * weights[:, classes].T.reshape(images.shape)
    assert np.allclose(relevance, expected, atol=1e-6)
    # bias-free linear model: relevance sums to the explained logit
    assert np.allclose(relevance.reshape(len(images), -1).sum(axis=1), scores, atol=1e-4)
    assert np.allclose(outputs["logits"], logits, atol=1e-5)


def test_run_explainer_feeds_targets(weights, images, tmp_path):
    path = tmp_path / "tiny.rlrp.onnx"
    onnx.save(contract_model(weights), path)
    runtime = create_session(path, device="auto")
    # The real runtime: a CPU build runs on CPU quietly; a GPU build runs on CUDA or says why not.
    cuda_built = CUDA in onnxruntime.get_available_providers()
    assert runtime.provider in (CPU, CUDA)
    assert (runtime.notice is None) == (runtime.provider == CUDA or not cuda_built), runtime.notice

    result = run_explainer(runtime, images, targets=[4, -1, 0])
    logits = images.reshape(len(images), -1) @ weights
    assert result.classes.tolist() == [4, int(logits[1].argmax()), 0]
    assert np.allclose(result.scores, logits[[0, 1, 2], result.classes], atol=1e-5)

    same_class = run_explainer(runtime.session, images, targets=2)  # a bare InferenceSession works too
    assert same_class.classes.tolist() == [2, 2, 2]


def test_target_input_without_default_value_gets_argmax(weights, images):
    model = contract_model(weights)
    defaults = [tensor for tensor in model.graph.initializer if tensor.name == TARGET_INPUT]
    model.graph.initializer.remove(defaults[0])  # rlrp_target becomes a required input
    runtime = create_session(model, device="cpu")
    logits = images.reshape(len(images), -1) @ weights
    assert np.array_equal(run_explainer(runtime, images).classes, logits.argmax(axis=1))
    assert run_explainer(runtime, images, targets=[1, 1, 3]).classes.tolist() == [1, 1, 3]


def test_run_explainer_rejects_bad_batches_and_targets(weights, images):
    runtime = create_session(contract_model(weights), device="cpu")
    with pytest.raises(RlrpError, match="does not fit input 'image'"):
        run_explainer(runtime, images[:, :2])
    with pytest.raises(RlrpError, match="one per image"):
        run_explainer(runtime, images, targets=[1, 2])
    with pytest.raises(RlrpError, match=r"target class 5 does not exist: the model has 5 classes \(0 to 4"):
        run_explainer(runtime, images, targets=[0, 5, -1])


@pytest.mark.parametrize("targets", [[1.7, 2.9, 0.0], ["1", "2", "3"], [True, False, True], True, 2.0,
                                     [1, 2], [1, 2, 3, 4], [[1], [2], [3]], [[1], [2, 3], [4]]])
def test_target_classes_are_integers_one_per_image(targets):
    with pytest.raises(RlrpError, match=r"^targets must be 3 integer class indices, one per image; got "):
        runtime.target_classes(targets, 3, N_CLASSES)


def test_target_classes_as_int64():
    """One int applies to all images; numpy integers of any width, unsigned too, are range-checked."""
    assert runtime.target_classes(np.int32(4), 3, N_CLASSES).tolist() == [4, 4, 4]
    got = runtime.target_classes(np.array([0, 4, 1], np.uint8), 3, N_CLASSES)
    assert got.dtype == np.int64 and got.tolist() == [0, 4, 1]
    assert runtime.target_classes([], 0, N_CLASSES).shape == (0,)
    with pytest.raises(RlrpError, match="target class 9223372036854775809 does not exist"):
        runtime.target_classes(np.array([2**63 + 1, 1], np.uint64), 2, N_CLASSES)


def test_class_count_from_the_explained_output(weights):
    """The named explained output's class axis; nothing when the model does not name it (the range
    check is then left to the model)."""
    model = contract_model(weights)
    assert runtime.class_count(create_session(model, device="cpu")) == N_CLASSES
    del model.metadata_props[:]
    assert runtime.class_count(create_session(model, device="cpu")) is None


def test_run_explainer_needs_a_compiled_model(weights):
    model = contract_model(weights)
    del model.graph.output[1:]  # only the logits left
    runtime = create_session(model, device="cpu")
    with pytest.raises(RlrpError, match="rlrp-onnx compile"):
        run_explainer(runtime, np.zeros((1, *SHAPE), np.float32))


def test_missing_or_broken_model_file(tmp_path):
    with pytest.raises(RlrpError, match="not found.*absent.onnx"):
        create_session(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(RlrpError, match="broken.onnx"):
        create_session(broken, device="cpu")


def test_model_protobuf_cannot_hold_runs_from_a_temporary_copy(weights, images, tmp_path, monkeypatch):
    """Stands in for a model past 2 GB in memory: it is opened from a copy with external data, which is
    removed once the session is open; the results are those of the model passed as bytes."""
    model = contract_model(weights)
    expected = run_explainer(create_session(model, device="cpu"), images)
    monkeypatch.setattr(loading, "serialized", lambda model: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_explainer(create_session(model, device="cpu"), images)
    assert list(tmp_path.iterdir()) == []
    for name, value in expected.outputs.items():
        np.testing.assert_array_equal(result.outputs[name], value)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # no folder can be made there
    with pytest.raises(RlrpError, match="cannot write a temporary copy of the model.*external data"):
        create_session(model, device="cpu")


@pytest.mark.slow
def test_explainer_of_a_model_past_two_gigabytes(tmp_path):
    """A linear classifier whose weights take 2.2 GB, compiled and run in memory: relevance is
    image ⊙ W[:, class] (input × gradient of a linear map)."""
    shape, classes = (3, 224, 224), 3700
    rng = np.random.default_rng(0)
    features = int(np.prod(shape))
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "wide", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    weights = model.graph.initializer.add(name="W", data_type=TensorProto.FLOAT, dims=[features, classes])
    w = rng.standard_normal((features, classes), np.float32)
    weights.raw_data = w.tobytes()
    image = rng.uniform(0, 1, (1, *shape)).astype(np.float32)

    explanation = Explainer(model, device="cpu").explain(image)
    best = int((image.reshape(1, -1) @ w).argmax())
    assert explanation.classes.tolist() == [best]
    np.testing.assert_allclose(explanation.relevance[0], image[0] * w[:, best].reshape(shape), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_graph_past_two_gigabytes_without_its_initializers_is_refused_clearly(tmp_path, monkeypatch):
    """A 2.1 GB weight in a Constant node (not an initializer, so no external data can take it): every
    entry point says the model is too large, in one message, and leaves no file behind."""
    elements = PROTOBUF_LIMIT // 4 + 1000
    model = helper.make_model(helper.make_graph(
        [], "constant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])]),
        opset_imports=[helper.make_opsetid("", 17)])
    constant = model.graph.node.add(op_type="Constant", output=["c"])
    value = constant.attribute.add(name="value", type=AttributeProto.TENSOR)
    value.t.data_type, value.t.raw_data = TensorProto.FLOAT, np.zeros(elements, np.float32).tobytes()
    value.t.dims.append(elements)
    model.graph.node.add(op_type="Add", input=["x", "c"], output=["y"])  # set in place: copying serialises
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for attempt in (lambda: create_session(model, device="cpu"), lambda: compile_model(model),
                    lambda: Explainer(model, device="cpu"), lambda: save_model(model, tmp_path / "out.onnx")):
        with pytest.raises(RlrpError, match="passes protobuf's 2 GB limit even without its initializers' raw data"):
            attempt()
    assert list(tmp_path.iterdir()) == []


def test_unknown_device():
    with pytest.raises(RlrpError, match="device.*auto, cpu, cuda"):
        create_session(onnx.ModelProto(), device="gpu")


# --- provider choice, with a fake ONNX Runtime -------------------------------------------------


class FakeSession:
    """Stands in for InferenceSession: records the providers asked for, reports ``runs_on``."""

    runs_on: list[str] = [CPU]
    requested: list[list[str]] = []

    def __init__(self, source, options=None, providers=()):
        FakeSession.requested.append(list(providers))

    def get_providers(self):
        return list(self.runs_on)


@pytest.fixture
def fake_ort(monkeypatch):
    """ONNX Runtime that lists CUDA as available; whether it loads is set by FakeSession.runs_on."""
    FakeSession.requested = []
    FakeSession.runs_on = [CPU]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: None, raising=False)  # new in 1.21
    monkeypatch.setattr(runtime.ctypes, "CDLL", FakeDriver)
    FakeDriver.missing, FakeDriver.init_status, FakeDriver.devices = False, 0, 1
    return FakeSession


class FakeDriver:
    """Stands in for the NVIDIA driver library (libcuda): missing, failing cuInit, or counting devices."""

    missing, init_status, devices = False, 0, 1

    def __init__(self, name):
        if FakeDriver.missing:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    def cuInit(self, flags):
        return FakeDriver.init_status

    def cuDeviceGetCount(self, count):
        count._obj.value = FakeDriver.devices
        return 0

    def cuGetErrorString(self, status, text):
        text._obj.value = {100: b"no CUDA-capable device is detected"}.get(status)
        return 0


def test_cuda_is_expected_where_it_is_tried_and_the_driver_finds_a_device(fake_ort, monkeypatch):
    """``expects_cuda`` (which picks the Explainer's forms before a session is opened): "cuda" always,
    "cpu" never, "auto" with onnxruntime-gpu only where the NVIDIA driver finds a device, and never
    without onnxruntime-gpu."""
    assert runtime.expects_cuda("cuda") and runtime.expects_cuda("auto") and not runtime.expects_cuda("cpu")
    FakeDriver.devices = 0
    assert not runtime.expects_cuda("auto") and runtime.expects_cuda("cuda")
    FakeDriver.devices, FakeDriver.missing = 1, True
    assert not runtime.expects_cuda("auto")
    FakeDriver.missing = False
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    assert not runtime.tries_cuda("auto") and not runtime.expects_cuda("auto")


def test_cpu_asks_for_the_cpu_provider_only(fake_ort):
    runtime = create_session(onnx.ModelProto(), device="cpu")
    assert fake_ort.requested == [[CPU]]
    assert runtime.provider == CPU and runtime.notice is None


def test_auto_uses_cuda_when_it_loads(fake_ort):
    fake_ort.runs_on = [CUDA, CPU]
    runtime = create_session(onnx.ModelProto(), device="auto")
    assert fake_ort.requested == [[(CUDA, {"use_tf32": "0"}), CPU]]  # full float32 convolutions
    assert runtime.provider == CUDA and runtime.notice is None


def test_auto_falls_back_to_cpu_and_says_so(fake_ort):
    runtime = create_session(onnx.ModelProto(), device="auto")
    assert fake_ort.requested == [[(CUDA, CUDA_OPTIONS), CPU]]
    assert isinstance(runtime, RuntimeSession)
    assert runtime.provider == CPU
    assert "CUDA" in runtime.notice and "CPU" in runtime.notice


def test_cuda_raises_when_its_libraries_do_not_load(fake_ort, monkeypatch):
    def preload():
        print("\033[33mFailed to load libcudnn.so.9: cannot open shared object file\033[0m")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload, raising=False)
    with pytest.raises(RlrpError, match="CUDA is not available.*failed to load.*libcudnn.so.9"):
        create_session(onnx.ModelProto(), device="cuda")


@pytest.mark.parametrize("driver, reason", [
    (dict(missing=True), r"no NVIDIA driver \(libcuda.so.1: cannot open shared object file"),
    (dict(init_status=100), r"driver cannot start CUDA \(error 100: no CUDA-capable device is detected\)"),
    (dict(init_status=35), r"driver cannot start CUDA \(error 35: unknown\)"),
    (dict(devices=0), "driver finds no CUDA device"),
    (dict(), "ONNX Runtime could not create its CUDA provider"),
])
def test_fallback_says_why_cuda_did_not_run(fake_ort, driver, reason):
    # The toolkit libraries loaded (preload_dlls printed nothing), as with the gpu extra on a machine
    # without an NVIDIA GPU: the reason comes from the driver.
    for name, value in driver.items():
        setattr(FakeDriver, name, value)
    notice = create_session(onnx.ModelProto(), device="auto").notice
    assert re.match(f"CUDA could not be used: .*{reason}.*; running on CPU$", notice), notice
    with pytest.raises(RlrpError, match=f"CUDA is not available: .*{reason}"):
        create_session(onnx.ModelProto(), device="cuda")


def test_driver_probe_on_this_machine():
    # Unfaked: None where the driver finds a device, otherwise a reason naming the driver.
    problem = runtime._cuda_driver_problem()
    assert problem is None or "NVIDIA driver" in problem


def test_cuda_raises_when_onnxruntime_gpu_is_missing(fake_ort, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.raises(RlrpError, match="CUDA is not available.*onnxruntime-gpu"):
        create_session(onnx.ModelProto(), device="cuda")
    assert fake_ort.requested == []


def test_auto_without_onnxruntime_gpu_is_quietly_cpu(fake_ort, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    runtime = create_session(onnx.ModelProto(), device="auto")
    assert fake_ort.requested == [[CPU]]
    assert runtime.provider == CPU and runtime.notice is None


def test_missing_onnxruntime_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(RlrpError, match=r"rlrp-onnx\[cpu\].*rlrp-onnx\[gpu\]"):
        create_session(onnx.ModelProto(), device="cpu")

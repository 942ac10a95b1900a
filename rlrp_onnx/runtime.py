"""Run compiled explainer models with ONNX Runtime: choose the device, feed images, read the contract."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import onnx

from . import loading
from .contract import (CLASS_OUTPUT, META_EXPLAINED_OUTPUT, RELEVANCE_OUTPUT, SCORE_OUTPUT, TARGET_INPUT,
                       holds_class_scores)
from .errors import RlrpError, first_line

if TYPE_CHECKING:
    import onnxruntime

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Full float32 convolutions on CUDA: TensorFloat-32, ONNX Runtime's default on Ampere and newer GPUs,
# rounds a convolution's inputs to 10 bits, enough to move a value next to a Clip bound (ReLU6's 6)
# onto it, which flips that mask's step (a Conv, ``Emitter.step``).
CUDA_OPTIONS = {"use_tf32": "0"}
DEVICES = ("auto", "cpu", "cuda")

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    **{f"tensor({np.dtype(t).name})": t for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64)},
}


@dataclass(frozen=True)
class RuntimeSession:
    """An ONNX Runtime session and the execution provider it really runs on.

    ``notice`` is set when ``device="auto"`` tried CUDA and ONNX Runtime fell back to CPU; the caller
    shows it to the user once (the CLI prints it on stderr).
    """

    session: onnxruntime.InferenceSession
    provider: str
    notice: str | None = None


class ExplainerResult(NamedTuple):
    """What one run of a compiled model returns; unpacks as ``relevance, classes, scores, outputs``."""

    relevance: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    outputs: dict[str, np.ndarray]


def check_device(device: str) -> None:
    """RlrpError unless ``device`` is one ``create_session`` takes and, for "cuda", ONNX Runtime's CUDA
    provider is installed: checked before a model is compiled or opened."""
    if device not in DEVICES:
        raise RlrpError(f"unknown device {device!r} (option device): choose one of {', '.join(DEVICES)}")
    if device == "cuda" and CUDA not in _onnxruntime().get_available_providers():
        raise RlrpError(
            "CUDA is not available: onnxruntime-gpu is not installed (install rlrp-onnx[gpu] "
            "in an environment without the CPU-only onnxruntime package)"
        )


def tries_cuda(device: str) -> bool:
    """Whether ``create_session`` tries CUDA for ``device``: "cuda", or "auto" with onnxruntime-gpu
    installed (it may still fall back to CPU there, when CUDA fails to load)."""
    return device == "cuda" or (device == "auto" and CUDA in _onnxruntime().get_available_providers())


def expects_cuda(device: str) -> bool:
    """Whether a session ``create_session`` opens on ``device`` should run on CUDA: CUDA is tried and,
    unless asked for by name, the NVIDIA driver finds a device (a guess made before opening one)."""
    return tries_cuda(device) and (device == "cuda" or _cuda_driver_problem() is None)


def create_session(model: onnx.ModelProto | bytes | str | os.PathLike, device: str = "auto") -> RuntimeSession:
    """Open ``model`` (a ModelProto, its bytes or a path) in ONNX Runtime on ``device``: "auto", "cpu" or
    "cuda".

    "cpu" uses only the CPU provider. "cuda" requires CUDA and raises RlrpError when it is missing or
    its libraries fail to load. "auto" uses CUDA when it loads and otherwise CPU, saying so in
    ``RuntimeSession.notice`` when CUDA was tried and failed. The provider reported is the one
    ``session.get_providers()`` lists first, not the one asked for.
    """
    check_device(device)
    ort = _onnxruntime()
    with _model_source(model) as source:
        wants_cuda = tries_cuda(device)
        load_failure = _preload_cuda_libraries() if wants_cuda else None
        providers = [(CUDA, CUDA_OPTIONS), CPU] if wants_cuda else [CPU]
        session = _open_session(ort, source, providers)

    provider = session.get_providers()[0]
    if not wants_cuda or provider == CUDA:
        return RuntimeSession(session, provider)

    reason = (f"the CUDA libraries failed to load ({load_failure})" if load_failure
              else _cuda_driver_problem() or "ONNX Runtime could not create its CUDA provider")
    if device == "cuda":
        raise RlrpError(f"CUDA is not available: {reason}; use --device cpu or fix the CUDA installation")
    return RuntimeSession(session, provider, notice=f"CUDA could not be used: {reason}; running on CPU")


def run_explainer(
    session: RuntimeSession | onnxruntime.InferenceSession,
    images: np.ndarray,
    targets: int | Sequence[int] | np.ndarray | None = None,
) -> ExplainerResult:
    """Run a compiled model on a batch ``images`` laid out as its image input expects.

    ``targets`` are the classes to explain, one per sample (a single int applies to all; a negative
    value means the arg-max class). When ``targets`` is None every sample is explained for its
    arg-max class: ``rlrp_target`` is not fed, unless the model declares it without a default value,
    then it gets -1. ``outputs`` holds every output of the model by name. A model whose batch size is
    fixed runs a full batch: fewer images are filled up by repeating the last one, and the results
    are cut back to the images given.
    """
    inference = session.session if isinstance(session, RuntimeSession) else session
    inputs = {node.name: node for node in inference.get_inputs()}
    output_names = [node.name for node in inference.get_outputs()]

    missing = [name for name in (RELEVANCE_OUTPUT, CLASS_OUTPUT, SCORE_OUTPUT) if name not in output_names]
    if missing:
        raise RlrpError(
            f"the model has no output {missing[0]!r}: it is not a compiled explainer model "
            "(run `rlrp-onnx compile` on it first)"
        )

    image = image_input(inference)
    count, fixed = len(images), fixed_batch(image)
    feed = {image.name: _image_feed(image, images)}
    if targets is None and TARGET_INPUT in inputs:  # declared without a default: feed "arg-max"
        targets = -1
    if targets is not None:
        # An input with a default value (an initializer of the same name) is listed apart.
        overridable = {node.name for node in inference.get_overridable_initializers()}
        if TARGET_INPUT not in inputs and TARGET_INPUT not in overridable:
            raise RlrpError(f"the model has no input {TARGET_INPUT!r}, so a target class cannot be chosen")
        feed[TARGET_INPUT] = _filled(target_classes(targets, count, class_count(inference)), fixed)

    device = "cuda" if isinstance(session, RuntimeSession) and session.provider == CUDA else None
    try:
        values = run_bound(inference, feed, output_names, device) if device else inference.run(output_names, feed)
    except Exception as error:  # ONNX Runtime raises its own pybind exception types
        advice = ("; if it runs one image at a time, its batch size is not as dynamic as it is declared: "
                  "use a batch size of 1" if count > 1 and not fixed else "")
        raise RlrpError(f"ONNX Runtime failed running the model on {count} image(s): {_run_failure(error)}{advice}") \
            from None
    outputs = {name: value[:count] if fixed and value.shape[:1] == (fixed,) else value
               for name, value in zip(output_names, values)}
    return ExplainerResult(outputs[RELEVANCE_OUTPUT], outputs[CLASS_OUTPUT], outputs[SCORE_OUTPUT], outputs)


def _run_failure(error: Exception) -> str:
    """ONNX Runtime's message of a failed run without its status code and the source location of its
    check, so that the node and the cause fit on the line."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Non-zero status code returned while running )?", "",
                  first_line(error, limit=2000))
    return re.sub(r"\S+\.(?:cc|cpp|h):\d+ [^(]*\([^)]*\)(?: const)? ", "", text)[:400]


def quiet_onnxruntime() -> None:
    """Let ONNX Runtime's process-wide logger print fatal errors only, when ONNX Runtime is installed.

    For programs that report ONNX Runtime's failures themselves, as the CLI does: a CUDA provider that
    does not load is then said once (``RuntimeSession.notice`` or an error), not also in its log.
    """
    try:
        _onnxruntime().set_default_logger_severity(4)
    except RlrpError:  # not installed: the commands that need it say so
        pass


def cpu_session(model: onnx.ModelProto, optimize: bool = True) -> onnxruntime.InferenceSession:
    """A CPU session of ``model`` that logs nothing, for the compiler's own uses of ONNX Runtime (loading
    a model as a check, reading its types, evaluating an op); ``optimize=False``: no graph optimization.
    ONNX Runtime's errors propagate."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=[CPU])


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise RlrpError(
            f"ONNX Runtime is not installed ({error}): install rlrp-onnx[cpu] or, for NVIDIA GPUs, rlrp-onnx[gpu]"
        ) from None
    return onnxruntime


@contextlib.contextmanager
def _model_source(model: onnx.ModelProto | bytes | str | os.PathLike):
    """What InferenceSession accepts: the bytes of a proto, or the path of a model file; for a proto
    protobuf cannot serialise (2 GB), the path of a copy with external data, removed once the session
    is open (ONNX Runtime has read or mapped it by then)."""
    if isinstance(model, bytes):
        yield model
        return
    if not isinstance(model, onnx.ModelProto):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise RlrpError(f"model file not found: {path}")
        yield path
        return
    data = loading.serialized(model)
    if data is not None:
        yield data
        return
    folder = None
    try:
        folder = tempfile.TemporaryDirectory(prefix="rlrp-onnx-", ignore_cleanup_errors=True)
        path = Path(folder.name) / "model.onnx"
        loading.save_with_external_data(model, path)  # not save_model: it would try serialising again
    except (OSError, RlrpError) as error:
        if folder is not None:
            folder.cleanup()
        if isinstance(error, RlrpError):  # the model is too large even so
            raise
        raise RlrpError("cannot write a temporary copy of the model, which is too large (2 GB) to pass in "
                        f"memory ({first_line(error)}); save it with external data and pass its path") from None
    with folder:
        yield str(path)


def _open_session(ort, source: bytes | str, providers: list) -> onnxruntime.InferenceSession:
    name = "the model" if isinstance(source, bytes) else source
    options = ort.SessionOptions()
    # Fatal errors only: the defaulted rlrp_target input is intended, and the failures its log would show
    # (CUDA not loading, a run failing) are reported once, by the callers
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as error:  # ONNX Runtime raises its own pybind exception types
        raise RlrpError(f"ONNX Runtime cannot load {name}: {first_line(error)}") from None


def _preload_cuda_libraries() -> str | None:
    """Load CUDA and cuDNN from NVIDIA's pip packages, as onnxruntime-gpu documents; return what failed.

    ``onnxruntime.preload_dlls`` reports failures by printing them; they are captured here so that an
    error can say why CUDA is missing.
    """
    preload = getattr(_onnxruntime(), "preload_dlls", None)
    if preload is None:
        return None
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except (OSError, RuntimeError) as error:
        return str(error)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in printed.getvalue().splitlines()]
    failures = [line for line in lines if line.startswith(("Failed to load", "WARNING"))]
    return failures[0] if failures else None


def _cuda_driver_problem() -> str | None:
    """Why the NVIDIA driver cannot run CUDA on this machine, or None when it finds a device.

    The toolkit libraries (``_preload_cuda_libraries``) may all load on a machine without a GPU; the
    driver library is what is missing there, and ONNX Runtime only logs that.
    """
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError as error:
        return f"no NVIDIA driver ({error})"
    status = driver.cuInit(0)
    if status == 0:
        count = ctypes.c_int(0)
        status = driver.cuDeviceGetCount(ctypes.byref(count))
        if status == 0:
            return None if count.value else "the NVIDIA driver finds no CUDA device"
    text = ctypes.c_char_p()
    driver.cuGetErrorString(status, ctypes.byref(text))
    return f"the NVIDIA driver cannot start CUDA (error {status}: {(text.value or b'unknown').decode()})"


def check_image_shape(node: Any, shape: Sequence[int], batch_limit: int | None = None,
                      what: str = "image batch") -> None:
    """RlrpError unless images of ``shape`` have the rank and fixed sizes (after the batch axis) of the
    image input ``node``, and at most ``batch_limit`` of them when given."""
    expected = node.shape
    fits = len(shape) == len(expected) and (batch_limit is None or shape[0] <= batch_limit) and all(
        not isinstance(dim, int) or dim == size for dim, size in zip(expected[1:], shape[1:])
    )
    if not fits:
        shown = "[" + ", ".join(str(dim) if isinstance(dim, int) else "?" for dim in expected) + "]"
        raise RlrpError(f"{what} of shape {list(shape)} does not fit input {node.name!r} of shape {shown}")


def _image_feed(node: Any, images: np.ndarray) -> np.ndarray:
    """``images`` converted to the input's element type and filled up to a fixed batch size, after
    checking its rank and fixed sizes (at most the fixed batch size of images)."""
    images = np.asarray(images)
    fixed = fixed_batch(node)
    check_image_shape(node, images.shape, fixed)
    dtype = _NUMPY_TYPES.get(node.type)
    if dtype is None:
        raise RlrpError(f"input {node.name!r} has type {node.type}; expected a float or integer tensor")
    if np.issubdtype(dtype, np.integer) and images.size:
        _check_whole(node, images, dtype)
    if np.issubdtype(dtype, np.floating) and images.size:
        _check_within(node, images, dtype)
    return np.ascontiguousarray(_filled(images, fixed), dtype=dtype)


def _check_whole(node: Any, images: np.ndarray, dtype) -> None:
    """Images for an integer input must be whole numbers in its type's range: a cast would change others."""
    limits, low, high = np.iinfo(dtype), images.min().item(), images.max().item()  # compared exactly
    whole = images.dtype.kind in "biu" or bool(np.all(np.mod(images, 1) == 0))
    if not whole or low < limits.min or high > limits.max:
        advice = ("the model scales its pixels itself: feed them unscaled" if not whole else
                  "shift or scale them into that range (the command line's --mean and --scale act on 0..255 pixels)")
        raise RlrpError(f"input {node.name!r} takes {np.dtype(dtype).name} values, whole numbers from {limits.min} "
                        f"to {limits.max}; the images hold {'values' if whole else 'fractions'} from {low:g} to "
                        f"{high:g} ({advice})")


def _check_within(node: Any, images: np.ndarray, dtype) -> None:
    """Images for a float input must be within its type's range: a float16 input turns larger pixels
    infinite, and the logits, class and relevance into NaN."""
    largest, limit = float(np.abs(images).max()), float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):
        overflows = np.isinf(np.asarray(largest).astype(dtype))  # 65519 still rounds to float16's 65504
    if overflows:
        raise RlrpError(f"input {node.name!r} takes {np.dtype(dtype).name} values; the images hold values up to "
                        f"{largest:g}, which it turns infinite (its largest is {limit:g})")


def image_input(session: RuntimeSession | onnxruntime.InferenceSession):
    """The session's one image input (every input but ``rlrp_target``): name, type, shape."""
    inference = session.session if isinstance(session, RuntimeSession) else session
    images = [node for node in inference.get_inputs() if node.name != TARGET_INPUT]
    if len(images) != 1:
        names = ", ".join(node.name for node in images)
        raise RlrpError(f"the model has {len(images)} image inputs ({names}); explaining feeds one")
    return images[0]


def run_bound(session, feed: dict[str, np.ndarray], output_names: Sequence[str], device: str) -> list:
    """Run through IO binding: inputs copied to ``device`` ("cuda" or "cpu") once, outputs allocated
    there by ONNX Runtime and copied back to numpy at the end."""
    ort = _onnxruntime()
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    for name in output_names:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def fixed_batch(node: Any) -> int | None:
    """The batch size an input fixes (its first dimension), or None when it is dynamic."""
    return node.shape[0] if node.shape and isinstance(node.shape[0], int) else None


def _filled(values, batch: int | None) -> np.ndarray:
    """``values`` with the last one repeated up to ``batch`` of them (a fixed batch), else as given."""
    values = np.asarray(values)
    if batch is None or not 0 < len(values) < batch:
        return values
    return np.concatenate([values, np.repeat(values[-1:], batch - len(values), axis=0)])


def class_count(session: RuntimeSession | onnxruntime.InferenceSession) -> int | None:
    """The number of classes of the explained output (N, classes) that the compiled model's metadata
    names, or None when the model does not say or that size is dynamic."""
    inference = session.session if isinstance(session, RuntimeSession) else session
    name = inference.get_modelmeta().custom_metadata_map.get(META_EXPLAINED_OUTPUT)
    shape = next((node.shape for node in inference.get_outputs() if node.name == name), None)
    return shape[1] if holds_class_scores(shape) and isinstance(shape[1], int) else None


def target_classes(targets: int | Sequence[int] | np.ndarray, count: int, classes: int | None) -> np.ndarray:
    """``targets`` checked and as int64, one per image: integers (not bools), one for each of the
    ``count`` images or a single one for all, each below ``classes`` (negative: the arg-max class)."""
    try:
        values = np.asarray(targets)
    except ValueError:  # ragged nesting
        values = np.asarray(targets, dtype=object)
    integers = np.issubdtype(values.dtype, np.integer) or values.shape == (0,)  # [] for no images
    if any(isinstance(t, (bool, np.bool_)) for t in np.ravel(np.asarray(targets, dtype=object))):
        integers = False  # [1, True] is an int64 array of [1, 1]
    if values.shape not in ((), (count,)) or not integers:
        raise RlrpError(f"targets must be {count} integer class indices, one per image; got {values.tolist()!r}")
    if values.ndim == 0:
        values = np.full(count, values)
    if classes is not None and values.size and values.max() >= classes:  # no max(initial=-1): unsigned dtypes
        raise RlrpError(f"target class {values.max()} does not exist: the model has {classes} classes "
                        f"(0 to {classes - 1}; a negative target means the top class)")
    return values.astype(np.int64)

"""Plain-torch reference explanation the compiler's output is checked against.

Independent of ``rlrp_onnx``: only torch autograd on the original
``nn.Module``.

API
---
``input_times_gradient(model, x, targets=None) -> (relevance, classes, scores)``
    ``model``: a torch classifier (put in eval mode here), run in float32 as
    exported.  ``x``: float32 array ``(N, C, H, W)``.  ``targets``: ``None``,
    an int, or an int array of shape ``(N,)``; an entry ``>= 0`` picks that
    class, a negative entry (or ``None``) picks the argmax of that sample's
    logits.  Returns

    * ``relevance``: float32 ``(N, C, H, W)`` = ``x * d(sum_i logit[i, c_i]) / dx``
      (each sample's relevance only depends on its own logit, the model being
      per-sample in eval mode);
    * ``classes``: int64 ``(N,)``, the ``c_i`` used;
    * ``scores``: float32 ``(N,)``, ``logit[i, c_i]``.

``branch_decisions(onnx_path, x)``, ``run_with_decisions(onnx_path, feed)``, ``input_times_gradient(..., kinks=...)``
    In float32, a pre-activation within rounding distance of a kink (0 for ReLU, 0 and 6 for
    ReLU6) can fall on different sides in torch and in ONNX Runtime, which differ in summation
    order; each such flip moves a patch of the gradient. On a real photo through a deep net, a
    few flips are certain, so the relative error grows to ~1e-2 for reasons unrelated to the
    compiler. ``branch_decisions`` runs the *source* ONNX model (not the compiled one) in ONNX
    Runtime and returns the outputs of its Relu/Clip/LeakyRelu nodes in graph order;
    ``kinks=`` hands them to torch, whose piecewise-linear modules then take their slope from
    those outputs while every other step of the backward pass stays torch autograd.
    ``run_with_decisions`` runs any model (a compiled one too) with those outputs added and returns
    them and the model's own outputs from the same run: for float16 models, whose float32
    emulation on CPU depends on which tensors are read (test_float16.py).

``relative_l2_error(a, b) -> np.ndarray``
    Per-sample ``||a_i - b_i||_2 / ||b_i||_2`` over all non-batch axes, in
    float64, shape ``(N,)``.  ``b`` is the reference.  A sample whose ``b_i`` is
    all zero gives 0 if ``a_i`` is all zero too, else ``inf``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["branch_decisions", "input_times_gradient", "relative_l2_error", "resolve_targets", "run_with_decisions"]


def resolve_targets(logits: np.ndarray, targets) -> np.ndarray:
    """Classes ``c_i``: ``targets[i]`` where given and ``>= 0``, else argmax of row ``i``."""
    logits = np.asarray(logits)
    n, k = logits.shape
    argmax = logits.argmax(axis=1).astype(np.int64)
    if targets is None:
        return argmax
    t = np.broadcast_to(np.asarray(targets, dtype=np.int64), (n,))
    if np.any(t >= k):
        raise ValueError(f"target class out of range for {k} classes: {t}")
    return np.where(t >= 0, t, argmax).astype(np.int64)


PIECEWISE_ONNX = ("Relu", "Clip", "LeakyRelu")
PIECEWISE_TORCH = (torch.nn.ReLU, torch.nn.Hardtanh, torch.nn.LeakyReLU)  # ReLU6 is a Hardtanh


def branch_decisions(onnx_path, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of the source model's piecewise-linear nodes, in graph order, run by ONNX Runtime."""
    import onnx

    return run_with_decisions(onnx_path, {onnx.load(str(onnx_path)).graph.input[0].name: x})[0]


def run_with_decisions(onnx_path, feed: dict) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The outputs of the piecewise-linear nodes and the model's own outputs, from one ONNX Runtime run
    (CPU) of the model with the former added as outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    names = [n.output[0] for n in model.graph.node if n.op_type in PIECEWISE_ONNX]
    own = [o.name for o in model.graph.output]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(names + own, feed)
    return values[:len(names)], dict(zip(own, values[len(names):]))


def _slope(module: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """d act / dx read off the activation's output y."""
    if isinstance(module, torch.nn.Hardtanh):
        return ((y > module.min_val) & (y < module.max_val)).to(y.dtype)
    if isinstance(module, torch.nn.LeakyReLU):
        return torch.where(y > 0, 1.0, module.negative_slope).to(y.dtype)
    return (y > 0).to(y.dtype)


@contextlib.contextmanager
def _aligned_kinks(model: torch.nn.Module, kinks: list[np.ndarray]):
    """Make each piecewise-linear module call take its slope from the next array of ``kinks``."""
    pending = list(kinks)

    def hook(module, inputs, output):
        if not pending:
            raise AssertionError("more activation calls in torch than activation nodes in ONNX")
        y = torch.from_numpy(pending.pop(0))
        if y.shape != output.shape:
            raise AssertionError(f"activation order differs: torch {tuple(output.shape)} vs ONNX {tuple(y.shape)}")
        x = inputs[0]
        return output.detach() + (x - x.detach()) * _slope(module, y)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PIECEWISE_TORCH)]
    try:
        yield
        if pending:
            raise AssertionError(f"{len(pending)} ONNX activation nodes were not matched in torch")
    finally:
        for handle in handles:
            handle.remove()


def input_times_gradient(model: torch.nn.Module, x: np.ndarray, targets=None, kinks=None):
    """Input x gradient of the selected logits (see module docstring)."""
    model = model.eval()
    if kinks is not None:
        with _aligned_kinks(model, kinks):
            return input_times_gradient(model, x, targets)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).requires_grad_(True)
    with torch.enable_grad():
        logits = model(xt)
        if logits.ndim != 2 or logits.shape[0] != xt.shape[0]:
            raise ValueError(f"expected logits of shape (N, K), got {tuple(logits.shape)}")
        classes = resolve_targets(logits.detach().numpy(), targets)
        idx = torch.from_numpy(classes)
        selected = logits.gather(1, idx[:, None])[:, 0]
        (grad,) = torch.autograd.grad(selected.sum(), xt)
    relevance = (xt.detach() * grad).numpy().astype(np.float32, copy=False)
    scores = selected.detach().numpy().astype(np.float32, copy=False)
    return relevance, classes, scores


def relative_l2_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample relative L2 error of ``a`` against the reference ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    n = a.shape[0]
    diff = np.linalg.norm((a - b).reshape(n, -1), axis=1)
    ref = np.linalg.norm(b.reshape(n, -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = diff / ref
    out[(ref == 0) & (diff == 0)] = 0.0
    return out

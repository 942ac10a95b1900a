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

``relative_l2_error(a, b) -> np.ndarray``
    Per-sample ``||a_i - b_i||_2 / ||b_i||_2`` over all non-batch axes, in
    float64, shape ``(N,)``.  ``b`` is the reference.  A sample whose ``b_i`` is
    all zero gives 0 if ``a_i`` is all zero too, else ``inf``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["input_times_gradient", "relative_l2_error", "resolve_targets"]


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


def input_times_gradient(model: torch.nn.Module, x: np.ndarray, targets=None):
    """Input x gradient of the selected logits (see module docstring)."""
    model = model.eval()
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

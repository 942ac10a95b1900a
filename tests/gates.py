"""Gates detached for the oracle (shared/RLRP.md, "An exact oracle"): with gates or gated activations,
R-LRP equals input × gradient with the gates held constant.

``detached_gates(model)`` is a context manager: while it is active, forward hooks make

* every ``nn.Sigmoid`` / ``nn.Hardsigmoid`` / ``nn.Softmax`` module a gate: its output is detached (use
  it on models where these modules only gate, e.g. squeeze-excitation, attention weights);
* every gated activation ``y = x·g(x)`` — ``nn.SiLU`` (g = sigmoid), ``nn.Hardswish`` (g = hardsigmoid),
  ``nn.GELU`` (g = Φ, exact or tanh form), ``nn.Mish`` (g = tanh∘softplus) — return the same value with
  gradient ``g(x)``: ``y.detach() + (x − x.detach())·g(x).detach()``;
* every ``nn.LayerNorm``, ``nn.GroupNorm`` and ``nn.RMSNorm`` hold its statistics (mean and standard
  deviation, per sample, and per group; the root mean square) constant: gradient ``weight / σ``;
* every ``nn.LocalResponseNorm`` hold its denominator (k + α·mean of x² over neighbouring channels)^β
  constant, computed from torch's documented formula;
* every module with a ``hold_statistics`` attribute (a normalization written by a test, such as
  ``family_models.L2Normalize``) has it set to True, and computes its statistics detached.

Independent of ``rlrp_onnx``; use with ``oracle.input_times_gradient``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def _gelu_gate(module: nn.GELU, x: torch.Tensor) -> torch.Tensor:
    if module.approximate == "tanh":
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


GATED = {
    nn.SiLU: lambda m, x: torch.sigmoid(x),
    nn.Hardswish: lambda m, x: F.hardsigmoid(x),
    nn.GELU: _gelu_gate,
    nn.Mish: lambda m, x: torch.tanh(F.softplus(x)),
}
GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _held_statistics(module: nn.LayerNorm | nn.GroupNorm | nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    eps = module.eps
    if isinstance(module, nn.GroupNorm):  # over each group's channels and all positions
        groups = x.detach().reshape(x.shape[0], module.num_groups, -1)
        variance = groups.var(dim=2, unbiased=False, keepdim=True).expand_as(groups).reshape(x.shape)
        weight = 1.0 if module.weight is None else module.weight.detach().reshape(1, -1, *[1] * (x.ndim - 2))
    else:  # over the trailing normalized_shape; RMSNorm: the mean square, ε None meaning float32's ε
        axes = tuple(range(-len(module.normalized_shape), 0))
        weight = 1.0 if module.weight is None else module.weight.detach()  # (no affine)
        if isinstance(module, nn.RMSNorm):
            variance = x.detach().pow(2).mean(dim=axes, keepdim=True)
            eps = torch.finfo(x.dtype).eps if eps is None else eps
        else:
            variance = x.detach().var(dim=axes, unbiased=False, keepdim=True)
    return weight / torch.sqrt(variance + eps)


def _held_response(module: nn.LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    """1 / (k + α/n·Σ x² over the n channels around each, zeros past the ends)^β, from x detached."""
    square = x.detach().pow(2)
    padded = F.pad(square, (0, 0, 0, 0, module.size // 2, (module.size - 1) // 2))
    window = sum(padded[:, i:i + x.shape[1]] for i in range(module.size)) / module.size
    return (module.k + module.alpha * window).pow(-module.beta)


def _hook(module, inputs, output):
    if isinstance(module, GATES):
        return output.detach()
    x = inputs[0]
    if isinstance(module, NORMS):
        return output.detach() + (x - x.detach()) * _held_statistics(module, x)
    if isinstance(module, nn.LocalResponseNorm):
        return output.detach() + (x - x.detach()) * _held_response(module, x)
    gate = GATED[type(module)](module, x.detach())
    return output.detach() + (x - x.detach()) * gate


@contextlib.contextmanager
def detached_gates(model: nn.Module):
    """Hold every gate of ``model`` constant in autograd while the context is active."""
    handles = [m.register_forward_hook(_hook) for m in model.modules()
               if isinstance(m, (*GATES, *NORMS, nn.LocalResponseNorm)) or type(m) in GATED]
    holding = [m for m in model.modules() if hasattr(m, "hold_statistics")]
    for module in holding:
        module.hold_statistics = True
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in holding:
            module.hold_statistics = False

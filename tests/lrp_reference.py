"""Slow, plain NumPy implementations of the classical LRP rules, written from the formulas of
shared/RLRP.md ("Comparators"), independent of rlrp_onnx.

Layers are 2-D convolutions (stride, zero padding, groups) and dense layers ``y = x·Wᵀ + b``; each
offers ``forward(x, W, b)`` and ``adjoint(s, W)`` (the transpose of the linear part), written with
explicit loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def stab(z, eps):
    """z + ε·(sign(z) + [z = 0])."""
    return z + eps * (np.sign(z) + (z == 0))


@dataclass
class Conv:
    stride: int = 1
    pad: int = 0
    groups: int = 1

    def forward(self, x, w, b):
        n, c, h, wd = x.shape
        o, cg, k, _ = w.shape
        xp = np.pad(x, ((0, 0), (0, 0), (self.pad, self.pad), (self.pad, self.pad)))
        ho, wo = (h + 2 * self.pad - k) // self.stride + 1, (wd + 2 * self.pad - k) // self.stride + 1
        y = np.zeros((n, o, ho, wo))
        per_group = o // self.groups
        for out in range(o):
            g = out // per_group
            for i in range(ho):
                for j in range(wo):
                    patch = xp[:, g * cg:(g + 1) * cg, i * self.stride:i * self.stride + k,
                               j * self.stride:j * self.stride + k]
                    y[:, out, i, j] = (patch * w[out]).sum(axis=(1, 2, 3))
        return y + (0 if b is None else b.reshape(1, -1, 1, 1))

    def adjoint(self, s, w, x_shape):
        n, c, h, wd = x_shape
        o, cg, k, _ = w.shape
        gx = np.zeros((n, c, h + 2 * self.pad, wd + 2 * self.pad))
        per_group = o // self.groups
        for out in range(o):
            g = out // per_group
            for i in range(s.shape[2]):
                for j in range(s.shape[3]):
                    gx[:, g * cg:(g + 1) * cg, i * self.stride:i * self.stride + k,
                       j * self.stride:j * self.stride + k] += s[:, out, i, j][:, None, None, None] * w[out]
        return gx[:, :, self.pad:self.pad + h, self.pad:self.pad + wd]


class Dense:
    def forward(self, x, w, b):
        return x @ w.T + (0 if b is None else b)

    def adjoint(self, s, w, x_shape):
        return s @ w


def _pos(a):
    return None if a is None else np.maximum(a, 0)


def _neg(a):
    return None if a is None else np.minimum(a, 0)


def lrp(layer, x, w, b, relevance, rule, eps=1e-6, **params):
    """The relevance of a layer's input under ``rule``, exactly as RLRP.md writes it."""
    A = layer.forward
    def AT(s, weights):
        return layer.adjoint(s, weights, x.shape)
    xp, xn, wp, wn = np.maximum(x, 0), np.minimum(x, 0), np.maximum(w, 0), np.minimum(w, 0)
    if rule == "epsilon":
        return x * AT(relevance / stab(A(x, w, b), eps), w)
    if rule == "lrp0":
        with np.errstate(divide="ignore", invalid="ignore"):
            return x * AT(relevance / A(x, w, b), w)
    if rule == "zplus":
        s = relevance / stab(A(xp, wp, _pos(b)) + A(xn, wn, None), eps)
        return xp * AT(s, wp) + xn * AT(s, wn)
    if rule == "alphabeta":
        alpha, beta = params["alpha"], params["beta"]
        sp = relevance / stab(A(xp, wp, _pos(b)) + A(xn, wn, None), eps)
        sn = relevance / stab(A(xp, wn, _neg(b)) + A(xn, wp, None), eps)
        return alpha * (xp * AT(sp, wp) + xn * AT(sp, wn)) - beta * (xp * AT(sn, wn) + xn * AT(sn, wp))
    if rule == "gamma":
        g = params["gamma"]
        w_up, w_down = w + g * wp, w + g * wn
        b_up = None if b is None else b + g * _pos(b)
        b_down = None if b is None else b + g * _neg(b)
        z = A(x, w, b)
        g1 = (z > 0) * relevance / stab(A(xp, w_up, b_up) + A(xn, w_down, None), eps)
        g2 = (z < 0) * relevance / stab(A(xp, w_down, b_down) + A(xn, w_up, None), eps)
        return xp * AT(g1, w_up) + xn * AT(g1, w_down) + xp * AT(g2, w_down) + xn * AT(g2, w_up)
    if rule == "zbox":
        low = np.broadcast_to(np.reshape(params["low"], (1, -1) + (1,) * (x.ndim - 2)), x.shape)
        high = np.broadcast_to(np.reshape(params["high"], (1, -1) + (1,) * (x.ndim - 2)), x.shape)
        s = relevance / stab(A(x, w, b) - A(low, wp, _pos(b)) - A(high, wn, _neg(b)), eps)
        return x * AT(s, w) - low * AT(s, wp) - high * AT(s, wn)
    if rule == "flat":
        ones_w = np.ones_like(w)
        return AT(relevance / stab(A(np.ones_like(x), ones_w, None), eps), ones_w)
    if rule == "wsquare":
        return AT(relevance / stab(A(np.ones_like(x), w ** 2, None if b is None else b ** 2), eps), w ** 2)
    raise ValueError(rule)


def max_pool_winner(x, relevance, k):
    """Non-overlapping k×k max pooling: each output's relevance goes to the first maximum of its window."""
    out = np.zeros_like(x)
    n, c, h, w = x.shape
    for i in range(h // k):
        for j in range(w // k):
            window = x[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].reshape(n, c, -1)
            first = window.argmax(axis=2)
            for a in range(n):
                for b in range(c):
                    di, dj = divmod(first[a, b], k)
                    out[a, b, i * k + di, j * k + dj] += relevance[a, b, i, j]
    return out


def avg_pool_z(x, relevance, k, eps=1e-6):
    """Non-overlapping k×k average pooling under the z-rule: x ⊙ Aᵀ(R / stab(A(x)))."""
    n, c, h, w = x.shape
    z = x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))
    s = relevance / stab(z, eps) / (k * k)
    return x * np.repeat(np.repeat(s, k, axis=2), k, axis=3)

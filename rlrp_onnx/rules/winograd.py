"""A stride-1 3x3 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016), written in
ONNX ops: ``compile_model(adjoints="winograd")`` computes the relevance pass's large 3x3 adjoints so.

Each 6x6 tile of the input (stride 4) is transformed (``Bᵀ d B``, a grouped Conv), the channels are
contracted for each of the 36 tile positions by one batched MatMul with the transformed weights
(``G g Gᵀ``, computed in the graph from the weights: ONNX Runtime folds it when it opens the model),
and each tile's 4x4 outputs are taken back (``Aᵀ m A``, a MatMul) and put in place (DepthToSpace).
That is 36 multiplications per 16 outputs and channel pair instead of 144; the transforms cost passes
over tensors 2.25 times the input's size, which pays only for many channels on large grids
(``pays``, from ``tools/bench.py``-style timings of single layers on this project's 2-core CPU).
The result equals the Conv up to float32 rounding, about 1e-6 of the output's scale per layer.
"""

from __future__ import annotations

import numpy as np

TILE = 4  # outputs per tile along each axis (m of F(m, 3))
KERNEL = 3
POINTS = (0.0, 1.0, -1.0, 2.0, -0.5)  # interpolation points beside infinity: the least float32 error tried
MIN_CHANNELS = 256  # both channel counts at least this
MIN_WORK = 512 * 14 * 14  # and the smaller channel count times the grid's cells at least this


def transforms(points=POINTS, m: int = TILE, r: int = KERNEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Toom-Cook matrices ``Aᵀ`` (m x n), ``G`` (n x r) and ``Bᵀ`` (n x n), n = m + r - 1, such that
    ``Aᵀ[(G g) ⊙ (Bᵀ d)]`` is the valid correlation of ``d`` (n values) with ``g`` (r values)."""
    n = m + r - 1
    p = np.asarray(points, np.float64)
    a_t, g = np.zeros((m, n)), np.zeros((n, r))
    for j in range(n - 1):
        a_t[:, j] = p[j] ** np.arange(m)
        g[j] = p[j] ** np.arange(r) / np.prod([p[j] - p[k] for k in range(n - 1) if k != j])
    a_t[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    # Bᵀ solves sum_j Aᵀ[i, j] G[j, k] Bᵀ[j, l] = [l = i + k] for every output i, tap k and input l
    system = np.einsum("ij,jk,jJ,lL->iklJL", a_t, g, np.eye(n), np.eye(n)).reshape(m * r * n, n * n)
    wanted = np.array([[[float(l == i + k) for l in range(n)] for k in range(r)] for i in range(m)]).ravel()
    b_t = np.linalg.lstsq(system, wanted, rcond=None)[0].reshape(n, n)
    return a_t, g, b_t


def pays(in_channels: int, out_channels: int, spatial) -> bool:
    """Whether a stride-1 3x3 Conv of this size runs faster as ``winograd_conv`` (timed on single layers at
    batch 1 and 8: 0.43-0.92 of the Conv for 256 channels on 56x56 or 28x28 and 512 on 28x28 or 14x14;
    up to 1.05-1.18 at batch 8 for ResNet50's 64 on 56x56, 128 on 28x28, 256 on 14x14). 128 channels
    on 56x56 or 112x112 gained too (0.51-0.90), but taking them in VGG16/19 saved only 1-2%: left out."""
    fewer = min(in_channels, out_channels)
    return fewer >= MIN_CHANNELS and fewer * int(np.prod(spatial)) >= MIN_WORK


def winograd_conv(emit, x, weights, channels, spatial):
    """``Conv(x, weights)`` with pads 1 on every side for float32 ``weights`` [K, C, 3, 3] and ``x``
    [N, C, H, W], ``channels`` = (K, C) and ``spatial`` = (H, W), as F(4x4, 3x3) tiles."""
    a_t, g, b_t = (t.astype(np.float32) for t in transforms())
    n = a_t.shape[1]
    out_channels, in_channels = channels
    tiles = [-(-size // TILE) for size in spatial]
    # weights: U[ξ, k, c] = (G g_kc Gᵀ)[ξ], as [1, 36, K, C]
    taps = emit.op("Reshape", [weights, emit.ints([out_channels * in_channels, KERNEL, KERNEL])])
    taps = emit.op("MatMul", [emit.op("MatMul", [emit.const(g), taps]), emit.const(g.T)])
    taps = emit.op("Reshape", [taps, emit.ints([out_channels, in_channels, n * n])])
    taps = emit.op("Transpose", [taps], {"perm": [2, 0, 1]})
    u = emit.op("Reshape", [taps, emit.ints([1, n * n, out_channels, in_channels])])
    # input tiles: V[ξ, c] = (Bᵀ d_c B)[ξ], one grouped Conv with 36 kernels per channel
    kernels = np.einsum("ia,jb->ijab", b_t, b_t).reshape(1, n * n, n, n)
    kernels = emit.op("Expand", [emit.const(kernels), emit.ints([in_channels, n * n, n, n])])
    kernels = emit.op("Reshape", [kernels, emit.ints([in_channels * n * n, 1, n, n])])
    pads = [1, 1] + [1 + t * TILE - size for t, size in zip(tiles, spatial)]
    v = emit.op("Conv", [x, kernels], {"group": in_channels, "strides": [TILE, TILE], "pads": pads})
    v = emit.op("Reshape", [v, emit.ints([0, in_channels, n * n, tiles[0] * tiles[1]])])
    v = emit.op("Transpose", [v], {"perm": [0, 2, 1, 3]})
    products = emit.op("MatMul", [u, v])  # [N, 36, K, tiles]
    products = emit.op("Reshape", [products, emit.ints([0, n * n, out_channels * tiles[0] * tiles[1]])])
    outputs = np.einsum("pi,qj->pqij", a_t, a_t).reshape(TILE * TILE, n * n)
    y = emit.op("MatMul", [emit.const(outputs), products])  # [N, 16, K·tiles]
    y = emit.op("Reshape", [y, emit.ints([0, TILE * TILE * out_channels, *tiles])])
    y = emit.op("DepthToSpace", [y], {"blocksize": TILE, "mode": "DCR"})
    if any(t * TILE != size for t, size in zip(tiles, spatial)):
        y = emit.slice(y, [0, 0], list(spatial), [2, 3])
    return y

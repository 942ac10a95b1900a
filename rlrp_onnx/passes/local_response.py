"""Recognise local response normalization as torch writes ``nn.LocalResponseNorm`` (``F.local_response_norm``):
``x / (k + α·avg)^β`` with ``avg`` the mean of x² over ``size`` neighbouring channels, computed as x·x viewed
as [N, 1, C, …], zero-padded on the channel axis by size // 2 before and (size − 1) // 2 after, an
AveragePool of kernel [size, 1, …] (count_include_pad), then viewed back. Its Div becomes an ``LRN(x)``
(alpha α, beta β, bias k, size), which holds the denominator constant; torch's window (size // 2 channels
before each) is recorded in PLANNED_WINDOW_BEFORE, as an even size places it otherwise than ONNX's LRN.
Read node by node, the Div by a tensor computed at run time was refused. Planned only (gelu.py).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..rules.normalization import PLANNED_WINDOW_BEFORE
from .gelu import affine_step, plan_divisions, producer, scalar

VIEWS = ("Reshape", "Squeeze", "Unsqueeze")


def recognise_local_response(graph: gs.Graph) -> gs.Graph:
    """Replace each matched ``Div(x, (k + α·avg)^β)`` by ``LRN(x)`` writing the same tensor."""
    return plan_divisions(graph, _denominator)


def _denominator(tensor, x):
    """("LRN", its attributes) when ``tensor`` is (k + α·avg)^β, α·avg also avg·α, k + … in either order."""
    power = producer(tensor)
    if power is None or power.op != "Pow" or scalar(power.inputs[1]) is None:
        return None
    shifted = _affine(power.inputs[0], "Add")
    scaled = _affine(shifted[0], "Mul") if shifted is not None else None
    size = _channel_mean_of_squares(scaled[0], x) if scaled is not None else None
    if size is None:
        return None
    return "LRN", {"size": size, "alpha": scaled[1][0], "beta": scalar(power.inputs[1]), "bias": shifted[1][1],
                   PLANNED_WINDOW_BEFORE: size // 2}


def _affine(tensor, op: str):
    """``affine_step`` of the node writing ``tensor`` where it is an ``op``, else None."""
    node = producer(tensor)
    return affine_step(node) if node is not None and node.op == op else None


def _channel_mean_of_squares(tensor, x) -> int | None:
    """The window size when ``tensor`` is torch's mean of x² over neighbouring channels (module docstring)."""
    pool = producer(_before_views(tensor))
    if pool is None or pool.op != "AveragePool" or not pool.attrs.get("count_include_pad", 0) \
            or any(pool.attrs.get("pads", [0])) or pool.attrs.get("ceil_mode", 0) \
            or str(pool.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "b'NOTSET'"):
        return None
    kernel = list(pool.attrs.get("kernel_shape", []))
    size = kernel[0] if kernel else 0
    if size < 1 or any(k != 1 for k in kernel[1:]) or any(s != 1 for s in pool.attrs.get("strides", [1])):
        return None
    pad = producer(pool.inputs[0])
    if pad is None or pad.op != "Pad" or str(pad.attrs.get("mode", "constant")) not in ("constant", "b'constant'") \
            or not isinstance(pad.inputs[1], gs.Constant) or (len(pad.inputs) > 2 and pad.inputs[2].name
                                                               and scalar(pad.inputs[2]) != 0.0) or len(pad.inputs) > 3:
        return None
    rank = len(pad.inputs[0].shape or [])
    pads = np.asarray(pad.inputs[1].values).tolist()
    expected = [0] * (2 * rank)
    if rank < 3:
        return None
    expected[2], expected[rank + 2] = size // 2, (size - 1) // 2
    square = producer(_before_views(pad.inputs[0]))
    viewed = pad.inputs[0].shape
    if pads != expected or square is None or x.shape is None or list(viewed) != [x.shape[0], 1, *x.shape[1:]] \
            or list(tensor.shape or []) != list(x.shape):
        return None
    if (square.op == "Mul" and all(t is x for t in square.inputs)) \
            or (square.op == "Pow" and square.inputs[0] is x and scalar(square.inputs[1]) == 2.0):
        return size
    return None


def _before_views(tensor):
    """The tensor ``tensor`` was viewed from by Reshapes, Squeezes and Unsqueezes."""
    while (node := producer(tensor)) is not None and node.op in VIEWS:
        tensor = node.inputs[0]
    return tensor

"""Fold a zero Pad that only feeds Convs into their pads (planning graph only), so the relevance
pass maps straight onto the Pad's input instead of producing padded rows to cut off again."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import text


def _spatial_pads(pad: gs.Node, rank: int) -> list[int] | None:
    """The Pad's (begins, ends) over the spatial axes, or None if it is not a plain zero padding of them."""
    if text(pad.attrs.get("mode", "constant")) != "constant":
        return None
    inputs = pad.inputs
    if len(inputs) < 2 or not isinstance(inputs[1], gs.Constant):
        return None
    if len(inputs) > 2 and inputs[2].name and not (isinstance(inputs[2], gs.Constant) and not inputs[2].values.any()):
        return None
    if len(inputs) > 3 and inputs[3].name:
        return None
    pads = inputs[1].values.astype(np.int64).tolist()
    if len(pads) != 2 * rank or min(pads) < 0 or any(pads[a] or pads[rank + a] for a in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2:]


def pad_into_conv(graph: gs.Graph) -> gs.Graph:
    """``Conv(Pad(x, p), pads=q)`` → ``Conv(x, pads=p+q)`` where every consumer of the Pad is such a Conv."""
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        padded = pad.outputs[0]
        consumers = list(padded.outputs)
        if not consumers or padded in graph.outputs or any(
                c.op != "Conv" or c.inputs[0] is not padded or c.attrs.get("auto_pad", "NOTSET") not in
                ("NOTSET", b"NOTSET") for c in consumers):
            continue
        rank = len(padded.shape or [])
        extra = _spatial_pads(pad, rank) if rank > 2 else None
        if extra is None:
            continue
        for conv in consumers:
            own = list(conv.attrs.get("pads", [0] * len(extra)))
            conv.attrs["pads"] = [a + b for a, b in zip(own, extra)]
            conv.inputs[0] = pad.inputs[0]
    graph.cleanup()
    return graph

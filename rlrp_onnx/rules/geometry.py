"""Sliding-window geometry shared by Conv, AveragePool and MaxPool rules (static spatial sizes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import text

DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0, "output_padding": 0}  # omitted when all default


@dataclass(frozen=True)
class Window:
    """A sliding window over the spatial axes, with explicit begin/end pads."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]

    @classmethod
    def from_node(cls, node, in_spatial, kernel) -> "Window":
        """Read kernel/stride/dilation/pads (resolving ``auto_pad``) from a Conv or pooling node."""
        rank = len(kernel)
        strides = tuple(node.attrs.get("strides", [1] * rank))
        dilations = tuple(node.attrs.get("dilations", [1] * rank))
        auto_pad = text(node.attrs.get("auto_pad", "NOTSET"))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small, large = total // 2, total - total // 2
                begin.append(small if auto_pad == "SAME_UPPER" else large)
                end.append(large if auto_pad == "SAME_UPPER" else small)
        elif auto_pad == "VALID":
            begin, end = [0] * rank, [0] * rank
        else:
            pads = list(node.attrs.get("pads", [0] * (2 * rank)))
            begin, end = pads[:rank], pads[rank:]
        return cls(tuple(kernel), strides, dilations, tuple(begin), tuple(end))

    def adjoint_pads(self) -> list[int]:
        """ONNX ``pads`` of the stride-1 Conv that maps the output back onto the input grid (the full
        correlation: each side's reach minus its pad); a negative entry means the window reaches past
        its pads."""
        reach = [(k - 1) * d for k, d in zip(self.kernel, self.dilations)]
        return [r - p for r, p in zip(reach, self.pads_begin)] + [r - p for r, p in zip(reach, self.pads_end)]

    def unstrided(self, in_spatial, out_spatial) -> "Window":
        """The stride-1 window from the input to the output grid with zeros between stride points
        (``(out - 1)·stride + 1`` cells): the same kernel and begin pads, the end pads that size needs."""
        filled = [(o - 1) * s + 1 for o, s in zip(out_spatial, self.strides)]
        ends = tuple(f - i - b + (k - 1) * d for f, i, b, k, d in zip(
            filled, in_spatial, self.pads_begin, self.kernel, self.dilations))
        return Window(self.kernel, (1,) * len(self.kernel), self.dilations, self.pads_begin, ends)

    @property
    def disjoint(self) -> bool:
        """Whether no input position lies in two windows (each window's span fits in its stride)."""
        return all((k - 1) * d + 1 <= s for k, s, d in zip(self.kernel, self.strides, self.dilations))

    def transpose(self, in_spatial, out_spatial) -> tuple[dict, list, list[int]]:
        """ConvTranspose attributes mapping an output-sized tensor back onto the input grid, and per
        spatial axis what is left to do: the rows to keep, ``(start, stop)`` or None for all, then
        the number of zero rows to add at the end.

        The adjoint scatters each output position over its window (full positions −p_begin …). Its
        pads are symmetric, since ONNX Runtime's CUDA provider runs asymmetric ones on the CPU:
        the begin pad on both sides where ``output_padding`` (< stride) can give back
        what the end pad should not have cut, else a smaller pad and a cut at the start. Rows past
        the last window never received anything: zeros.
        """
        pads, output_padding, keep, zeros = [], [], [], []
        for size, out, k, s, d, p in zip(in_spatial, out_spatial, self.kernel, self.strides,
                                          self.dilations, self.pads_begin):
            extent = (out - 1) * s + (k - 1) * d + 1
            limit = s - 1  # ONNX Runtime refuses output_padding >= stride (whatever the dilation)
            missing = size - (extent - 2 * p)   # rows the symmetric pad p would cut too many at the end
            q = p if missing <= limit else max(p - missing, 0)
            extra = min(max(size - (extent - p - q), 0), limit)
            produced = extent - 2 * q + extra
            start = p - q
            stop = min(produced, start + size)
            pads.append(q)
            output_padding.append(extra)
            keep.append((start, stop) if start > 0 or stop < produced else None)
            zeros.append(size - (stop - start))
        attrs = {
            "strides": list(self.strides),
            "dilations": list(self.dilations),
            "pads": pads * 2,
            "output_padding": output_padding,
        }
        return {key: value for key, value in attrs.items() if any(v != DEFAULTS[key] for v in value)}, keep, zeros

    def window_sizes(self, in_spatial, out_spatial, count_include_pad: bool) -> np.ndarray:
        """The divisor of each AveragePool output: window cells inside the input (or the padded input)."""
        sizes = np.ones([1] * len(in_spatial))
        for axis, (size, out, k, s, d, p0, p1) in enumerate(zip(
                in_spatial, out_spatial, self.kernel, self.strides, self.dilations,
                self.pads_begin, self.pads_end)):
            coords = np.arange(k)[:, None] * d + np.arange(out)[None, :] * s - p0
            inside = (coords >= 0) & (coords < size)
            if count_include_pad:
                inside = coords < size + p1
            shape = [1] * len(in_spatial)
            shape[axis] = out
            sizes = sizes * inside.sum(axis=0).reshape(shape)
        return sizes

"""Thin helpers over onnx-graphsurgeon: emit nodes and constants with unique names, opset-aware."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Tensor = gs.Variable | gs.Constant


SHARED_CONSTANT_BYTES = 64

# ``Emitter.step``: z = ±STEP_SCALE·(y − bound), then HardSigmoid(STEP_ALPHA·z); the product of the two
# is at least 2**149, so the smallest positive float32 difference (2**-149) maps to 1.
STEP_SCALE, STEP_ALPHA = 2.0**22, 2.0**127
# The HardSigmoid's beta: any value in (-2**-25, 0) keeps the step exact (STEP_ALPHA·z is 0 or at most -1
# below the bound, at least 1 above it, where 1 + STEP_BETA rounds to 1). Not 0: OpenVINO (2026.4) reads
# an explicit beta of 0 as HardSigmoid's default 0.5, which makes every mask 1/2 at its bound.
STEP_BETA = -(2.0**-30)
STEP_BOUND_LIMIT = 2.0**100  # keeps STEP_SCALE·bound far from float32's overflow

# ONNX Runtime's CUDA provider has no kernel for ConvTranspose-22, MaxPool-22 and Softplus-22: from this
# opset on the compiler emits none of them (``Emitter.dilate``, ``rules.linear.window_adjoint``,
# ``rules.pooling.max_pool``, ``rules.gated``'s Mish gate).
NO_CUDA_CONV_TRANSPOSE = NO_CUDA_MAX_POOL = NO_CUDA_SOFTPLUS = 22


def text(value) -> str:
    """A string attribute's value as str (graphsurgeon gives str or bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Emitter:
    """Appends new nodes to a graph under short unique names (``rlrp<n>``: the names are stored in the
    compiled file once per node and tensor, so they are kept small)."""

    def __init__(self, graph: gs.Graph, prefix: str = "rlrp"):
        self.graph = graph
        self.opset = graph.opset
        self.prefix = prefix
        self.reserve({n.name for n in graph.nodes} | set(graph.tensors()))
        self._count = 0
        self._early = len(graph.nodes)  # where nodes that read only forward tensors are inserted
        self._shapes: dict[str, gs.Variable] = {}
        self._constants: dict[tuple, gs.Constant] = {}
        self._filled: dict[tuple, gs.Variable] = {}
        self.step_masks = True  # gate: steps on N,C,H,W tensors (compile_model's masks="steps")
        self.winograd = False  # large 3x3 adjoints by rules.winograd (compile_model's adjoints="winograd")

    def reserve(self, names: set[str]) -> None:
        """Keep the new names clear of ``names`` too (the source model's, some of which the planning graph
        no longer holds): the prefix grows until none of them starts with it. Before the first node."""
        while any(name.startswith(self.prefix) for name in names):
            self.prefix += "_"

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}{self._count}"

    def op(self, op_type: str, inputs: Sequence[Tensor | None], attrs: dict | None = None,
           n_out: int = 1, dtype=None, early: bool = False) -> gs.Variable | list[gs.Variable]:
        """Emit one node; ``None`` inputs become empty (omitted optional) inputs. An ``early`` node (one
        that reads only forward tensors and constants) goes before every other new node."""
        name = self._name()
        outs = [gs.Variable(name if i == 0 else f"{name}_{i}", dtype=dtype) for i in range(n_out)]
        ins = [gs.Variable.empty() if t is None else t for t in inputs]
        node = gs.Node(op_type, name, attrs=attrs or {}, inputs=ins, outputs=outs)
        if early:
            self.graph.nodes.insert(self._early, node)
            self._early += 1
        else:
            self.graph.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.float32) -> gs.Constant:
        """An initializer holding ``value``; small ones are shared between all uses of the same value."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        if array.nbytes > SHARED_CONSTANT_BYTES:
            return gs.Constant(self._name(), array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = gs.Constant(self._name(), array)
        return self._constants[key]

    def filled(self, value: float, shape: Sequence[int]) -> gs.Variable:
        """A float tensor of ``shape`` holding only ``value``, expanded in the graph from one number (ONNX
        Runtime folds it when it opens the model; the file stays small); one per value and shape."""
        key = (float(value), tuple(shape))
        if key not in self._filled:
            one = self.const(np.full([1] * len(shape), value, np.float32))
            self._filled[key] = self.op("Expand", [one, self.ints(shape)], early=True)
            self._filled[key].shape, self._filled[key].dtype = list(shape), np.float32
        return self._filled[key]

    def ints(self, values: Sequence[int]) -> gs.Constant:
        """A 1-D int64 initializer."""
        return self.const(list(values), np.int64)

    def scalar_int(self, value: int) -> gs.Constant:
        """A 0-d int64 initializer, for an input the ONNX spec wants scalar (OneHot's depth: ONNX's
        reference evaluator takes no other form)."""
        return gs.Constant(self._name(), np.array(value, dtype=np.int64))

    def shape_of(self, tensor: Tensor) -> gs.Variable:
        """The runtime shape of ``tensor`` (one Shape node per tensor)."""
        if tensor.name not in self._shapes:
            self._shapes[tensor.name] = self.op("Shape", [tensor], dtype=np.int64)
        return self._shapes[tensor.name]

    # ---- ops whose signature changed across opsets ------------------------------------------

    def _axes_op(self, op_type: str, x: Tensor, axes: Sequence[int], since: int, **attrs) -> gs.Variable:
        if self.opset >= since:
            return self.op(op_type, [x, self.ints(axes)], attrs)
        return self.op(op_type, [x], {**attrs, "axes": list(axes)})

    def reduce_sum(self, x: Tensor, axes: Sequence[int], keepdims: bool) -> gs.Variable:
        return self._axes_op("ReduceSum", x, axes, 13, keepdims=int(keepdims))

    def unsqueeze(self, x: Tensor, axes: Sequence[int]) -> gs.Variable:
        return self._axes_op("Unsqueeze", x, axes, 13)

    def squeeze(self, x: Tensor, axes: Sequence[int]) -> gs.Variable:
        return self._axes_op("Squeeze", x, axes, 13)

    def slice(self, x: Tensor, starts, ends, axes, steps=None) -> gs.Variable:
        inputs = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            inputs.append(self.ints(steps))
        return self.op("Slice", inputs)

    def pad(self, x: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
        """Constant padding (zeros unless ``value``) with ONNX ``pads`` layout (all begins, then all ends;
        none negative), as a Concat with filled blocks per padded axis: ONNX Runtime's CUDA provider has
        no kernel for ``Pad`` from opset 19 on (Pad-19, -21, -23), and has kernels for ``Concat`` and
        ``Expand`` at all."""
        rank = len(pads) // 2
        for axis, (begin, end) in enumerate(zip(pads[:rank], pads[rank:])):
            if begin or end:
                parts = [self._filled_along(x, axis, begin, rank, value)] if begin else []
                parts += [x] + ([self._filled_along(x, axis, end, rank, value)] if end else [])
                x = self.op("Concat", parts, {"axis": axis})
        return x

    def dilate(self, x: Tensor, strides: Sequence[int], channels: int, spatial: Sequence[int]) -> Tensor:
        """``x`` (N, ``channels``, *``spatial``) with ``stride − 1`` zeros between neighbours on each
        spatial axis, ``(n − 1)·stride + 1`` cells: a grouped 1x1 ConvTranspose of ones, or from opset
        NO_CUDA_CONV_TRANSPOSE on, per axis, an Unsqueeze, a Concat with zeros, a Reshape and a Slice."""
        rank = len(spatial)
        if self.opset < NO_CUDA_CONV_TRANSPOSE:
            ones = self.filled(1.0, [channels, 1, *[1] * rank])
            return self.op("ConvTranspose", [x, ones], {"group": channels, "strides": list(strides)})
        sizes = list(spatial)
        for axis, stride in enumerate(strides):
            if stride == 1:
                continue
            cells = self.unsqueeze(x, [3 + axis])  # (.., n, 1, ..)
            cells = self.op("Concat", [cells, self._filled_along(cells, 3 + axis, stride - 1, rank + 3)],
                            {"axis": 3 + axis})
            flat = sizes[:axis] + [sizes[axis] * stride] + sizes[axis + 1:]
            x = self.op("Reshape", [cells, self.ints([0, channels, *flat])])
            sizes[axis] = (sizes[axis] - 1) * stride + 1
            x = self.slice(x, [0], [sizes[axis]], [2 + axis])
        return x

    def _filled_along(self, x: Tensor, axis: int, count: int, rank: int, value: float = 0.0) -> gs.Variable:
        """Floats (zeros unless ``value``) shaped like ``x`` but ``count`` long on ``axis``."""
        others = self.op("Mul", [self.shape_of(x), self.ints([int(a != axis) for a in range(rank)])])
        shape = self.op("Add", [others, self.ints([count * int(a == axis) for a in range(rank)])])
        return self.op("Expand", [self.const(value), shape])

    # ---- small compositions used by many rules -------------------------------------------

    def mul(self, a: Tensor, b: Tensor) -> gs.Variable:
        return self.op("Mul", [a, b])

    def choose(self, mask: Tensor, if_true: Tensor | float, if_false: Tensor | float = 0.0) -> Tensor:
        """``if_true`` where ``mask`` holds, else ``if_false`` (finite values, broadcast together), as
        m·if_true + (1 − m)·if_false with the mask as 0/1, the terms of zeros and the products by one
        left out: exact, and several times faster than ONNX Runtime's ``Where`` (measured with
        tools/bench.py when the masks moved off ``Where``)."""
        m = self.op("Cast", [mask], {"to": onnx.TensorProto.FLOAT})
        terms = []
        if not _is_constant(if_true, 0.0):
            terms.append(self._times(m, if_true))
        if not _is_constant(if_false, 0.0):
            terms.append(self._times(self.op("Sub", [self.const(1.0), m]), if_false))
        return self.total(terms)

    def _times(self, weight: Tensor, value: Tensor | float) -> Tensor:
        """``weight``·``value``, or ``weight`` itself when ``value`` is one."""
        if _is_constant(value, 1.0):
            return weight
        return self.mul(weight, self.const(value) if isinstance(value, float) else value)

    def masked(self, mask: Tensor, rho: Tensor, otherwise: Tensor | float = 0.0) -> gs.Variable:
        """``rho`` where ``mask`` holds, ``otherwise``·``rho`` elsewhere, for a relevance tensor ``rho`` of
        the mask's shape, laid out so that ONNX Runtime computes the mask during the forward pass and
        keeps it (one byte per element) instead of the forward tensor it reads (four) until the
        relevance pass needs it.

        ONNX Runtime orders a model's nodes by a depth-first walk from the outputs that enters a node's
        inputs from the latest in the file. ``rho`` goes through two no-op Reshapes, the second taking
        its shape from the mask and emitted after the factor: the walk reaches the mask through that
        Shape before the relevance chain, and the factor (``choose``) only after it. Where two
        branches meet, the masks of the branch the walk enters second (a residual branch whose
        shortcut is a downsampling Conv) are still computed late; so are all masks of a model with a
        fixed batch size, whose Shape ONNX Runtime folds.
        """
        factor = self.choose(mask, 1.0, otherwise)
        flat = self.op("Reshape", [rho, self.ints([-1])])
        shape = self.op("Shape", [mask], dtype=np.int64)  # not shape_of: a fresh node, after ``flat``
        anchored = self.op("Reshape", [flat, shape])
        return self.mul(anchored, factor)

    def gate(self, rho: Tensor, y: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
        """``rho`` where ``low < y < high`` (an absent bound always holds), 0 elsewhere; with both bounds,
        ``y`` is the output of a Clip to them.

        On an N,C,H,W tensor inside the graph the factor is a ``step``, a ``band`` for ``[0, high]``, or
        the product of two steps, which ONNX Runtime's CPU provider runs in the blocked (NCHWc) layout
        of the Convs around them; elsewhere, or with ``step_masks`` off, a comparison (``masked``)."""
        bounds = [(b, above) for b, above in ((low, True), (high, False)) if b is not None]
        if not bounds:
            return rho
        if self.step_masks and self.blockable(y) and all(abs(b) <= STEP_BOUND_LIMIT for b, _ in bounds):
            if low == 0.0 and high is not None and high >= 1.0 / STEP_BOUND_LIMIT:
                return self.mul(rho, self.band(y, high))
            steps = [self.step(y, bound, above) for bound, above in bounds]
            factor = steps[0] if len(steps) == 1 else self.op("Mul", steps, early=True)
            return self.mul(rho, factor)
        masks = [self.op("Greater" if above else "Less", [y, self.const(b)]) for b, above in bounds]
        return self.masked(masks[0] if len(masks) == 1 else self.op("And", masks), rho)

    def step(self, y: Tensor, bound: float, above: bool) -> gs.Variable:
        """``[y > bound]`` (``above``) or ``[y < bound]`` as 0.0/1.0 for an N,C,H,W tensor ``y`` with a static
        channel count, exactly for every value but NaN, ``|bound| <= STEP_BOUND_LIMIT``:
        ``HardSigmoid(STEP_ALPHA·z)`` of ``z = ±STEP_SCALE·(y − bound)`` from a depthwise 1x1 Conv.
        Scaling by a power of two is exact; ``y − bound`` rounds to 0 only at the bound and is at least
        2⁻¹⁴⁹ away from it, so ``STEP_ALPHA·z`` is at least 1 (or inf) past the bound; where ``y``
        overflows once scaled, the bound does not, so the sign is still right.

        Emitted before the other new nodes: ONNX Runtime's walk (``masked`` says how it orders nodes)
        then reaches the step after the relevance it multiplies and computes it just before the
        product, instead of during the forward pass, where it would hold a float mask until then."""
        channels = y.shape[1]
        sign, bound = (1.0 if above else -1.0), float(np.float32(bound))  # the bound the comparison would use
        inputs = [y, self.filled(sign * STEP_SCALE, [channels, 1, 1, 1])]
        if bound:  # (no empty bias input: ONNX Runtime's NCHWc Conv takes none)
            inputs.append(self.filled(-sign * STEP_SCALE * bound, [channels]))
        z = self.op("Conv", inputs, {"group": channels}, early=True)
        step = self.op("HardSigmoid", [z], {"alpha": STEP_ALPHA, "beta": STEP_BETA}, early=True)
        for t in (z, step):
            t.shape, t.dtype = list(y.shape), np.float32
        return step

    def band(self, y: Tensor, high: float) -> gs.Variable:
        """``[0 < y < high]`` as 0.0/1.0 for the output ``y`` of a Clip to ``[0, high]`` (ReLU6), an N,C,H,W
        tensor with a static channel count: ``HardSigmoid(STEP_ALPHA·v)`` of ``v = s·(high − y) − 1 + [y > 0]``,
        the last term the lower ``step``, with ``s`` the power of two that puts ``s·high`` in (1/2, 1].
        ONNX Runtime's blocked Conv takes the ``Add`` as its Sum input, so both bounds cost two Conv
        kernels (two steps and their product cost three). Exact in any order of the Conv's bias and Sum
        additions: below ``high``, ``s·(high − y) ≥ 2⁻²⁴``, so ``v`` is positive exactly when both bounds
        hold (``tests/test_step.py``).

        Emitted first, like ``step``: in the plain layout ONNX Runtime computes the band when the
        relevance pass reaches it; in the blocked layout, some bands during the forward pass (emitted
        with the relevance instead, every band in the plain layout was, at 2.5 times the peak memory)."""
        channels = y.shape[1]
        high = float(np.float32(high))
        scale = 2.0 ** -int(np.ceil(np.log2(high)))
        positive = self.step(y, 0.0, above=True)
        z = self.op("Conv", [y, self.filled(-scale, [channels, 1, 1, 1]), self.filled(scale * high - 1.0, [channels])],
                    {"group": channels}, early=True)
        v = self.op("Add", [z, positive], early=True)
        band = self.op("HardSigmoid", [v], {"alpha": STEP_ALPHA, "beta": STEP_BETA}, early=True)
        for t in (z, v, band):
            t.shape, t.dtype = list(y.shape), np.float32
        return band

    def blocked(self, rho: Tensor, like: Tensor, scale: float = 1.0) -> Tensor:
        """``scale``·``rho`` for the relevance of ``like``; where that is an N,C,H,W tensor inside the graph,
        as a depthwise 1x1 Conv, which ONNX Runtime's CPU provider runs in its blocked layout (NCHWc):
        the relevance ops after it then stay in that layout instead of each converting its operands
        (an op that is not a Conv, such as ConvTranspose, Expand or Reshape, leaves the plain layout).
        Not for a single position per channel (nothing to gain)."""
        if not self.blockable(like) or list(like.shape[2:]) == [1, 1]:
            return self._times(rho, scale)
        channels = like.shape[1]
        return self.op("Conv", [rho, self.filled(scale, [channels, 1, 1, 1])], {"group": channels})

    def spread(self, rho: Tensor, like: Tensor, scale: float = 1.0) -> Tensor:
        """``scale``·``rho`` broadcast to the shape of ``like`` (scaled after broadcasting only where that
        takes it into the blocked layout, ``blocked``)."""
        if self.blockable(like):
            return self.blocked(self.expand_like(rho, like), like, scale)
        return self.expand_like(self._times(rho, scale), like)

    def blockable(self, like: Tensor) -> bool:
        """Whether ``like`` is an N,C,H,W tensor inside the graph with a static channel count: one that
        ONNX Runtime's CPU provider can hold in its blocked layout (``step``, ``blocked``)."""
        shape = list(like.shape or [])
        return len(shape) == 4 and isinstance(shape[1], int) and like not in self.graph.inputs

    def reshape_like(self, x: Tensor, like: Tensor) -> gs.Variable:
        return self.op("Reshape", [x, self.shape_of(like)])

    def expand_like(self, x: Tensor, like: Tensor) -> gs.Variable:
        return self.op("Expand", [x, self.shape_of(like)])

    def total(self, parts: Sequence[Tensor]) -> Tensor:
        """The sum of one or more tensors of equal shape."""
        return parts[0] if len(parts) == 1 else self.op("Sum", list(parts))


def _is_constant(tensor: Tensor | float, value: float) -> bool:
    """Whether ``tensor`` is the number ``value`` or a constant holding only ``value``."""
    if isinstance(tensor, float):
        return tensor == value
    return isinstance(tensor, gs.Constant) and bool(np.all(tensor.values == value))

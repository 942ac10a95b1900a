"""Shape inference and constant folding: shape subgraphs (Shape → Gather → … → Pad) become constants."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import RlrpError, first_line
from ..runtime import cpu_session
from ..weightless import weightless


def infer_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """ONNX shape inference with data propagation, run on a weightless copy, completed by ONNX Runtime's
    types for tensors it leaves untyped (``runtime_types``); the inferred value_info and output types are
    written into ``model``, which is returned."""
    inferred = _onnx_inferred(model, label)
    outputs = {o.name: o for o in inferred.graph.output}
    for info in runtime_types(inferred):
        if info.name in outputs:
            outputs[info.name].CopyFrom(info)
        else:
            inferred.graph.value_info.append(info)
    for field in ("value_info", "output"):
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    return model


def untyped_by_onnx(model: onnx.ModelProto, label: str) -> list[onnx.ValueInfoProto]:
    """ONNX Runtime's types and shapes of the tensors of ``model`` that ONNX's shape inference leaves
    untyped (``runtime_types``), graph outputs excepted."""
    inferred = _onnx_inferred(model, label)
    outputs = {o.name for o in inferred.graph.output}
    return [info for info in runtime_types(inferred) if info.name not in outputs]


def _onnx_inferred(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as error:
        raise RlrpError(f"{label}: shape inference failed ({first_line(error)})") from None


def runtime_types(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Types and shapes, as ONNX Runtime infers them when it loads the (weightless) ``model`` with them as
    outputs, of the node outputs ``model`` leaves untyped: ONNX's shape inference has none for some ops
    defined as functions (GroupNormalization), which exporters that write every type hide. Empty when
    every output is typed, or when ONNX Runtime cannot load the model (its checks report that)."""
    graph = model.graph
    typed = {v.name for v in [*graph.value_info, *graph.output, *graph.input] if v.type.tensor_type.elem_type}
    typed.update(t.name for t in graph.initializer)
    untyped = [t for n in graph.node for t in n.output if t and t not in typed]
    if not untyped:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in untyped)
    try:
        found = cpu_session(probe, optimize=False).get_outputs()
    except Exception:  # ONNX Runtime raises its own pybind exception types
        return []
    elements = dict(onnx.TensorProto.DataType.items())  # "FLOAT": 1, …; ONNX Runtime says "tensor(float)"
    typed = [(t, elements.get(t.type.removeprefix("tensor(").removesuffix(")").upper())) for t in found]
    return [onnx.helper.make_tensor_value_info(t.name, element, t.shape) for t, element in typed if element]


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Fold every subgraph that depends on constants and static shapes only."""
    _shape_ranges_as_slices(graph)
    _ranks_as_constants(graph)
    try:
        import onnxruntime  # noqa: F401  (graphsurgeon evaluates folded subgraphs with it)
    except ImportError:
        raise RlrpError("compiling needs ONNX Runtime: install rlrp-onnx[cpu] or rlrp-onnx[gpu]") from None
    with graphsurgeon_errors_only():
        graph.fold_constants(fold_shapes=True, error_ok=True).cleanup().toposort()
    return graph


@contextlib.contextmanager
def graphsurgeon_errors_only():
    """Silence onnx-graphsurgeon's warnings, which it prints to standard output (folding's failed
    evaluations, a bfloat16 type numpy does not have): what matters reaches the user as an RlrpError."""
    level = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    try:
        yield
    finally:
        gs.logger.G_LOGGER.severity = level


def _ranks_as_constants(graph: gs.Graph) -> None:
    """Size(Shape(x)), the rank of a tensor of known rank, as a constant: TorchScript's ``torch.tile``
    branches on it (an If that graphsurgeon then inlines), and graphsurgeon does not fold it while x's
    batch size is dynamic."""
    for node in [n for n in graph.nodes if n.op == "Size"]:
        shape = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if shape is not None and shape.op == "Shape" and not shape.attrs and shape.inputs[0].shape is not None:
            rank = gs.Constant(f"{node.outputs[0].name}_rank", np.array(len(shape.inputs[0].shape), np.int64))
            for reader in list(node.outputs[0].outputs):
                reader.inputs = [rank if t is node.outputs[0] else t for t in reader.inputs]


def _shape_ranges_as_slices(graph: gs.Graph) -> None:
    """Rewrite each Shape that keeps a range of the sizes (``start``/``end``, opset 15) as the whole Shape
    and a Slice of it, which graphsurgeon folds correctly: its shape folding (0.5.2 and 0.6.1) ignores the two
    attributes, and folded Shape(x, start=3) → Gather(0) to x's first size, not its fourth. A range of all
    the sizes (the dynamo exporter's ``start=0``) is the whole Shape: no Slice, which would hide the sizes
    a Gather reads from that folding (``F.unfold``'s indices, from a static height)."""
    for node in [n for n in graph.nodes if n.op == "Shape" and {"start", "end"} & n.attrs.keys()]:
        start, end = node.attrs.pop("start", 0), node.attrs.pop("end", np.iinfo(np.int64).max)
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        if start == 0 and rank is not None and end >= rank:
            continue
        sizes, whole = node.outputs[0], gs.Variable(f"{node.outputs[0].name}_whole", np.int64)
        node.outputs = [whole]
        bounds = [gs.Constant(f"{sizes.name}_{name}", np.array([value], np.int64))
                  for name, value in (("start", start), ("end", end), ("axis", 0))]
        graph.nodes.append(gs.Node("Slice", inputs=[whole, *bounds], outputs=[sizes]))
    graph.toposort()

"""Shape inference and constant folding: shape subgraphs (Shape → Gather → … → Pad) become constants."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import RlrpError, first_line
from ..weightless import weightless


def infer_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """ONNX shape inference with data propagation, run on a weightless copy; the inferred value_info and
    output types are written into ``model``, which is returned."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as error:
        raise RlrpError(f"{label}: shape inference failed ({first_line(error)})") from None
    for field in ("value_info", "output"):
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    return model


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Fold every subgraph that depends on constants and static shapes only."""
    _shape_ranges_as_slices(graph)
    try:
        import onnxruntime  # noqa: F401  (graphsurgeon evaluates folded subgraphs with it)
    except ImportError:
        raise RlrpError("compiling needs ONNX Runtime: install rlrp-onnx[cpu] or rlrp-onnx[gpu]") from None
    level = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    try:
        graph.fold_constants(fold_shapes=True, error_ok=True).cleanup().toposort()
    finally:
        gs.logger.G_LOGGER.severity = level
    return graph


def _shape_ranges_as_slices(graph: gs.Graph) -> None:
    """Rewrite each Shape that keeps a range of the sizes (``start``/``end``, opset 15) as the whole Shape
    and a Slice of it, which graphsurgeon folds correctly: its shape folding (0.5.2 and 0.6.1) ignores the two
    attributes, and folded Shape(x, start=3) → Gather(0) to x's first size, not its fourth."""
    for node in [n for n in graph.nodes if n.op == "Shape" and {"start", "end"} & n.attrs.keys()]:
        start, end = node.attrs.pop("start", 0), node.attrs.pop("end", np.iinfo(np.int64).max)
        sizes, whole = node.outputs[0], gs.Variable(f"{node.outputs[0].name}_whole", np.int64)
        node.outputs = [whole]
        bounds = [gs.Constant(f"{sizes.name}_{name}", np.array([value], np.int64))
                  for name, value in (("start", start), ("end", end), ("axis", 0))]
        graph.nodes.append(gs.Node("Slice", inputs=[whole, *bounds], outputs=[sizes]))
    graph.toposort()

"""Shape inference and constant folding: shape subgraphs (Shape → Gather → … → Pad) become constants."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..errors import RlrpError, first_line


def infer_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """ONNX shape inference with data propagation."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as error:
        raise RlrpError(f"{label}: shape inference failed ({first_line(error)})") from None


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Fold every subgraph that depends on constants and static shapes only."""
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

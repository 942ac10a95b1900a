"""Tiny ONNX models built by hand with onnx.helper, for error and rule tests (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """A checked model from helper-made nodes, value infos and numpy initializers {name: array}."""
    graph = helper.make_graph(
        nodes, "g", inputs, outputs,
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dense_classifier(features=6, classes=4, seed=0) -> onnx.ModelProto:
    """x [N, features] → Gemm → Relu → Gemm → logits [N, classes]."""
    rng = np.random.default_rng(seed)
    return make_model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["a"]),
         helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        {"w1": rng.normal(size=(8, features)).astype(np.float32), "b1": rng.normal(size=8).astype(np.float32),
         "w2": rng.normal(size=(classes, 8)).astype(np.float32), "b2": rng.normal(size=classes).astype(np.float32)})

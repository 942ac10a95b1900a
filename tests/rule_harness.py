"""One op under test between an input and a dense head, built by hand with onnx.helper, and two references.

``head_model(nodes, x_shape, h_shape=None, initializers=None, opset=17, classes=4, seed=0)``
    ``x`` float32 ``["N", *x_shape]`` → ``nodes`` (they read ``x`` and write ``h`` of shape
    ``["N", *h_shape]``, found by running them when not given) → Flatten → Gemm with a bias-free
    random ``W`` (the initializer ``W``, ``[classes, prod(h_shape)]``) → ``logits``. Checked by
    onnx.checker.

``linear_reference(model, x, targets)`` -> (relevance, classes)
    For a model that is linear in ``x`` (no bias anywhere): its exact gradient, read off ONNX Runtime
    runs of the *source* model on the basis vectors, times x. No rlrp_onnx code is involved.

``head_rho(model, classes, h_shape)``
    rho_h = W[c] per sample, the relative relevance the dense head hands the op's output; a plain
    re-implementation of a rule is then ``x · rule(x) · rho_h`` in numpy.

``compiled(model, x, targets)`` -> dict of outputs of the compiled model (source outputs included),
and ``added_ops(compiled_model, source_model)``: op types of the relevance pass.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rlrp_onnx import compile_model
from rlrp_onnx.contract import TARGET_INPUT

from test_oracle import run


def head_model(nodes, x_shape, h_shape=None, initializers=None, opset=17, classes=4, seed=0) -> onnx.ModelProto:
    if h_shape is None:
        h_shape = output_shape(nodes, x_shape, initializers, opset)
    rng = np.random.default_rng(seed)
    features = int(np.prod(h_shape))
    inits = {"W": rng.standard_normal((classes, features)).astype(np.float32), **(initializers or {})}
    model = _model(list(nodes) + [helper.make_node("Flatten", ["h"], ["flat"], axis=1),
                                  helper.make_node("Gemm", ["flat", "W"], ["logits"], transB=1)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits, opset)
    onnx.checker.check_model(model, full_check=True)
    return model


def _model(nodes, inputs, outputs, initializers, opset):
    graph = helper.make_graph(list(nodes), "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    return model


def output_shape(nodes, x_shape, initializers=None, opset=17) -> tuple[int, ...]:
    """The per-sample shape of ``h``, from ONNX Runtime on one zero sample."""
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                   [helper.make_empty_tensor_value_info("h")], initializers or {}, opset)
    return run(model, {"x": np.zeros((1, *x_shape), np.float32)})["h"].shape[1:]


def _classes(logits, targets):
    argmax = logits.argmax(1)
    if targets is None:
        return argmax
    targets = np.asarray(targets)
    return np.where(targets >= 0, targets, argmax)


def linear_reference(model, x, targets=None):
    shape = x.shape[1:]
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    columns = run(model, {"x": basis})["logits"]  # [size, K]: the image of each basis vector
    classes = _classes(run(model, {"x": x})["logits"], targets)
    gradient = columns[:, classes].T.reshape(x.shape)
    return x * gradient, classes


def head_rho(model, classes, h_shape) -> np.ndarray:
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "W")
    return w[classes].reshape(len(classes), *h_shape)


def compiled(model, x, targets=None) -> tuple[dict, onnx.ModelProto]:
    out_model = compile_model(model)
    feed = {"x": x}
    if targets is not None:
        feed[TARGET_INPUT] = np.asarray(targets, dtype=np.int64)
    return run(out_model, feed), out_model


def added_ops(compiled_model, source) -> set[str]:
    names = {n.name for n in source.graph.node}
    return {n.op_type for n in compiled_model.graph.node if n.name not in names}

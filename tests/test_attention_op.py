"""The Attention op (opset 23) against its definition: the attention weights P are read off ONNX
Runtime's own Attention kernel (``qk_matmul_output_mode=3``: P after the softmax, 0 in a row the mask
closes), the runtime that runs the model's forward pass (ONNX 1.19's reference evaluator repeats key
heads for grouped-query attention by tiling, against the operator's definition and ONNX Runtime). The
relevance must be R_x = x ⊙ (rho_V·W_vᵀ) with rho_V = Pᵀ·rho_Y summed over the query heads sharing a
key/value head — V takes all, Q and K (which only compute the held weights) none. Q, K and V are x·W_q,
x·W_k, x·W_v."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rlrp_onnx import RlrpError, compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, TARGET_INPUT
from rlrp_onnx.methods import Options

from lrp_reference import stab

from oracle import relative_l2_error
from rule_harness import compiled, head_model, head_rho, output_shape
from test_oracle import run

node = helper.make_node
LENGTH, WIDTH = 5, 8
RNG = np.random.default_rng(23)
BOOL_MASK = RNG.random((LENGTH, LENGTH)) > 0.3
BOOL_MASK[:, 0] = True  # no fully masked row
FLOAT_MASK = RNG.normal(0, 1, (1, LENGTH, LENGTH)).astype(np.float32)
CLOSED_ROW = BOOL_MASK.copy()
CLOSED_ROW[2] = False  # query 2 attends to nothing: its weights and output are 0

CASES = {  # name: (split into 3-D, q heads, kv heads, head size, value size, attributes, mask)
    "4d": (False, 2, 2, 4, 4, {}, None),
    "4d_gqa_scale_softcap": (False, 4, 2, 2, 3, {"scale": 0.7, "softcap": 2.0}, None),
    "3d_gqa_causal": (True, 4, 2, 2, 2, {"is_causal": 1}, None),
    "3d_bool_mask": (True, 2, 2, 4, 3, {}, BOOL_MASK),
    "4d_float_mask_causal": (False, 2, 1, 4, 4, {"is_causal": 1}, FLOAT_MASK),
    "4d_closed_row": (False, 2, 2, 4, 4, {}, CLOSED_ROW),
}


def attention_model(case):
    split, q_heads, kv_heads, size, value_size, attrs, mask = CASES[case]
    weights = {"Wq": (WIDTH, q_heads * size), "Wk": (WIDTH, kv_heads * size), "Wv": (WIDTH, kv_heads * value_size)}
    inits = {name: RNG.normal(0, 0.5, shape).astype(np.float32) for name, shape in weights.items()}
    nodes = [node("MatMul", ["x", w], [w[1]]) for w in weights]  # q, k, v: [N, L, heads·size]
    names = ["q", "k", "v"]
    if not split:
        for name, heads in zip(names, (q_heads, kv_heads, kv_heads)):
            inits[f"{name}_shape"] = np.array([0, 0, heads, -1], np.int64)
            nodes += [node("Reshape", [name, f"{name}_shape"], [f"{name}_split"]),
                      node("Transpose", [f"{name}_split"], [f"{name}4"], perm=[0, 2, 1, 3])]
        names = [f"{n}4" for n in names]
    else:
        attrs = {**attrs, "q_num_heads": q_heads, "kv_num_heads": kv_heads}
    if mask is not None:
        inits["mask"] = mask
        names.append("mask")
    nodes.append(node("Attention", names, ["h"], **attrs))
    h_shape = output_shape(nodes, (LENGTH, WIDTH), inits, opset=23)
    return head_model(nodes, (LENGTH, WIDTH), h_shape, initializers=inits, opset=23), inits, h_shape


def expected_relevance(case, inits, x, rho):
    """x ⊙ (rho_V·W_vᵀ), P from ONNX Runtime's Attention kernel."""
    split, q_heads, kv_heads, size, value_size, attrs, mask = CASES[case]
    q, k, v = (x @ inits[w] for w in ("Wq", "Wk", "Wv"))
    if not split:
        q, k, v = (t.reshape(len(x), LENGTH, h, -1).transpose(0, 2, 1, 3) for t, h in
                   zip((q, k, v), (q_heads, kv_heads, kv_heads)))
    else:
        attrs = {**attrs, "q_num_heads": q_heads, "kv_num_heads": kv_heads}
    inputs = ["q", "k", "v"] + (["mask"] if mask is not None else [])
    graph = helper.make_graph(
        [node("Attention", inputs, ["y", "", "", "p"], qk_matmul_output_mode=3, **attrs)], "a",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "v")]
        + ([helper.make_tensor_value_info("mask", TensorProto.BOOL if mask.dtype == bool else TensorProto.FLOAT, None)]
           if mask is not None else []),
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)])
    feed = {"q": q.astype(np.float32), "k": k.astype(np.float32), "v": v.astype(np.float32)}
    if mask is not None:
        feed["mask"] = mask
    p = run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), feed)["p"]
    rho_y = rho.reshape(len(x), LENGTH, q_heads, value_size).transpose(0, 2, 1, 3) if split else rho
    rho_v = np.einsum("nhqk,nhqd->nhkd", p.astype(np.float64), rho_y)
    rho_v = rho_v.reshape(len(x), kv_heads, q_heads // kv_heads, LENGTH, value_size).sum(axis=2)
    rho_v = rho_v.transpose(0, 2, 1, 3).reshape(len(x), LENGTH, -1)
    return x * (rho_v @ inits["Wv"].T.astype(np.float64))


@pytest.mark.parametrize("case", list(CASES))
def test_attention_gives_v_all_of_the_relevance(case):
    model, inits, h_shape = attention_model(case)
    x = np.random.default_rng(1).standard_normal((2, LENGTH, WIDTH)).astype(np.float32)
    out, _ = compiled(model, x, [0, -1])
    rho = head_rho(model, out[CLASS_OUTPUT], h_shape).astype(np.float64)
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], expected_relevance(case, inits, x.astype(np.float64), rho))
    assert np.all(errors < 1e-5), errors


def test_attention_under_the_epsilon_rule():
    """Classical rules: the Attention op is a weightless product with its weights held, so the fixed
    ε-rule (ε = 1e-6) gives R_V = V ⊙ Pᵀ·(R_Y / stab(Y)); the MatMuls and the head are layers (ε = 1e-3)."""
    model, inits, _ = attention_model("4d")
    x = np.random.default_rng(1).standard_normal((2, LENGTH, WIDTH)).astype(np.float32)
    out = run(compile_model(model, rule="epsilon", options=Options(epsilon=1e-3)),
              {"x": x, TARGET_INPUT: np.array([-1, 2], np.int64)})
    weights = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in
               ((t.name, t) for t in model.graph.initializer) if name in ("W", "Wq", "Wk", "Wv")}
    x64 = x.astype(np.float64)
    q, k, v = ((x64 @ weights[w]).reshape(2, LENGTH, 2, -1).transpose(0, 2, 1, 3) for w in ("Wq", "Wk", "Wv"))
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0  # head size 4
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = (p @ v).reshape(2, -1)
    logits = y @ weights["W"].T
    chosen = np.zeros_like(logits)
    chosen[np.arange(2), out[CLASS_OUTPUT]] = logits[np.arange(2), out[CLASS_OUTPUT]]
    r_y = (y * ((chosen / stab(logits, 1e-3)) @ weights["W"])).reshape(p.shape[:3] + (-1,))
    r_v = v * (p.transpose(0, 1, 3, 2) @ (r_y / stab(p @ v, 1e-6)))
    r_v = r_v.transpose(0, 2, 1, 3).reshape(2, LENGTH, -1)
    expected = x64 * ((r_v / stab(x64 @ weights["Wv"], 1e-3)) @ weights["Wv"].T)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_attention_with_a_key_value_cache_is_refused():
    model, _, _ = attention_model("4d")
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attention.input[:] = [*attention.input, "", "k4", "v4"]  # the keys and values again as the past ones
    with pytest.raises(RlrpError, match="Attention with a key/value cache"):
        compile_model(model)


def test_attention_with_an_attribute_the_rule_does_not_read_is_refused():
    """A sliding window (``left_window_size``, a later opset's) would change the weights: refused, not ignored."""
    model, _, _ = attention_model("4d")
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attention.attribute.append(helper.make_attribute("left_window_size", 2))
    with pytest.raises(RlrpError, match="Attention with the attribute left_window_size"):
        compile_model(model)

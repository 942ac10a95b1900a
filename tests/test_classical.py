"""Classical LRP rules and composites against slow NumPy implementations of their formulas."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rlrp_onnx import RlrpError, compile_model
from rlrp_onnx.compiler import plan_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT, TARGET_INPUT
from rlrp_onnx.methods import Options, choose

import lrp_reference as ref
from onnx_builders import make_model
from test_oracle import run

RULES = {  # rule name → (Options, reference parameters)
    "epsilon": (Options(epsilon=1e-3), {"eps": 1e-3}),
    "lrp0": (Options(), {}),
    "zplus": (Options(), {}),
    "alphabeta": (Options(alpha=2.0, beta=1.0), {"alpha": 2.0, "beta": 1.0}),
    "gamma": (Options(gamma=0.25), {"gamma": 0.25}),
    "zbox": (Options(low=[-2.0, -1.0, -3.0, -1.5], high=[2.0, 1.0, 3.0, 1.5]),
             {"low": [-2.0, -1.0, -3.0, -1.5], "high": [2.0, 1.0, 3.0, 1.5]}),
    "flat": (Options(), {}),
    "wsquare": (Options(), {}),
}
TARGETS = [5, 37, -1]


def explain(model, x, targets, **method):
    compiled = compile_model(model, **method)
    out = run(compiled, {"x": x, TARGET_INPUT: np.asarray(targets, np.int64)})
    return out, compiled


def seeded(y: np.ndarray, classes) -> np.ndarray:
    """R at the logits: f_c·e_c per sample."""
    r = np.zeros_like(y)
    r[np.arange(len(y)), classes] = y[np.arange(len(y)), classes]
    return r


def assert_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def conv_layer():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
         helper.make_node("Flatten", ["c"], ["logits"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 7, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 6 * 4 * 4])],
        {"w": w, "b": b})
    return model, ref.Conv(stride=2, pad=1, groups=2), w, b, rng.standard_normal((3, 4, 7, 7)).astype(np.float32)


@pytest.fixture(scope="module")
def dense_layer():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 4)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 40])],
        {"w": w, "b": b})
    return model, ref.Dense(), w, b, rng.standard_normal((3, 4)).astype(np.float32)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("layer", ["conv_layer", "dense_layer"])
def test_single_layer(rule, layer, request):
    model, reference, w, b, x = request.getfixturevalue(layer)
    options, params = RULES[rule]
    out, compiled = explain(model, x, TARGETS, rule=rule, options=options)
    y = reference.forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)).reshape(len(x), -1)
    r = seeded(y, out[CLASS_OUTPUT]).reshape(reference.forward(x, w, b).shape)
    expected = ref.lrp(reference, x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), r, rule,
                       **params)
    assert np.isfinite(expected).all()
    assert_close(out[RELEVANCE_OUTPUT], expected)
    meta = {p.key: p.value for p in compiled.metadata_props}
    assert meta["rlrp.rule"] == rule


def test_lrp0_gives_nan_where_a_preactivation_vanishes():
    w = np.array([[1.0, -1.0], [1.0, 1.0]], np.float32)
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], {"w": w})
    x = np.array([[0.5, 0.5]], np.float32)  # z_0 = 0 exactly
    out, _ = explain(model, x, [0], rule="lrp0")
    assert np.isnan(out[RELEVANCE_OUTPUT]).all()
    out, _ = explain(model, x, [0], rule="epsilon")
    assert np.isfinite(out[RELEVANCE_OUTPUT]).all()
    out, _ = explain(model, x, [0])
    np.testing.assert_array_equal(out[RELEVANCE_OUTPUT], x * w[0])  # R-LRP: x ⊙ ∂f/∂x, finite


# ---- a whole small network -------------------------------------------------------------------

def small_network(rng):
    """conv → relu → maxpool → conv → relu, + skip → avgpool → dense → relu → dense: ONNX and weights."""
    p = {"w1": rng.standard_normal((4, 3, 3, 3)), "b1": rng.standard_normal(4) * 0.1,
         "w2": rng.standard_normal((4, 4, 3, 3)) * 0.5, "b2": rng.standard_normal(4) * 0.1,
         "w3": rng.standard_normal((8, 16)) * 0.5, "b3": rng.standard_normal(8) * 0.1,
         "w4": rng.standard_normal((5, 8)), "b4": rng.standard_normal(5) * 0.1}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    model = make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("MaxPool", ["r1"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Conv", ["m", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("Add", ["m", "r2"], ["s"]),
         helper.make_node("AveragePool", ["s"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["a"], ["f"]),
         helper.make_node("Gemm", ["f", "w3", "b3"], ["d"], transB=1),
         helper.make_node("Relu", ["d"], ["r3"]),
         helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], p)
    return model, {k: v.astype(np.float64) for k, v in p.items()}


def network_reference(p, x, classes, rules, params):
    """Forward in float64, then the classical backward of RLRP.md, layer by layer."""
    conv = ref.Conv(pad=1)
    dense = ref.Dense()
    c1 = conv.forward(x, p["w1"], p["b1"])
    r1 = np.maximum(c1, 0)
    n = len(x)
    m = r1.reshape(n, 4, 4, 2, 4, 2).max(axis=(3, 5))
    r2 = np.maximum(conv.forward(m, p["w2"], p["b2"]), 0)
    s = m + r2
    a = s.reshape(n, 4, 2, 2, 2, 2).mean(axis=(3, 5))
    f = a.reshape(n, -1)
    r3 = np.maximum(dense.forward(f, p["w3"], p["b3"]), 0)
    y = dense.forward(r3, p["w4"], p["b4"])
    relevance = seeded(y, classes)
    relevance = ref.lrp(dense, r3, p["w4"], p["b4"], relevance, rules["dense"], **params)      # relu: unchanged
    relevance = ref.lrp(dense, f, p["w3"], p["b3"], relevance, rules["dense"], **params)
    relevance = ref.avg_pool_z(s, relevance.reshape(a.shape), 2)
    share = relevance / ref.stab(s, 1e-6)
    from_skip, from_branch = m * share, r2 * share
    relevance = from_skip + ref.lrp(conv, m, p["w2"], p["b2"], from_branch, rules["conv2"], **params)
    relevance = ref.max_pool_winner(r1, relevance, 2)
    return ref.lrp(conv, x, p["w1"], p["b1"], relevance, rules["conv1"], **params), y


NETWORK_CASES = {
    # name: (compile keywords, per-layer reference rules, reference parameters)
    "epsilon": ({"rule": "epsilon"}, {"conv1": "epsilon", "conv2": "epsilon", "dense": "epsilon"}, {}),
    "zplus": ({"rule": "zplus"}, {"conv1": "zplus", "conv2": "zplus", "dense": "zplus"}, {}),
    "gamma": ({"rule": "gamma"}, {"conv1": "gamma", "conv2": "gamma", "dense": "gamma"}, {"gamma": 0.25}),
    "epsilon_plus_flat": ({"composite": "epsilon_plus_flat"},
                          {"conv1": "flat", "conv2": "zplus", "dense": "epsilon"}, {}),
    "epsilon_alpha2_beta1_flat": ({"composite": "epsilon_alpha2_beta1_flat"},
                                  {"conv1": "flat", "conv2": "alphabeta", "dense": "epsilon"},
                                  {"alpha": 2.0, "beta": 1.0}),
    "epsilon_gamma_box": ({"composite": "epsilon_gamma_box", "options": Options(low=-3.0, high=3.0)},
                          {"conv1": "zbox", "conv2": "gamma", "dense": "epsilon"},
                          {"gamma": 0.25, "low": -3.0, "high": 3.0}),
}


@pytest.mark.parametrize("case", sorted(NETWORK_CASES))
def test_small_network(case):
    rng = np.random.default_rng(7)
    model, params = small_network(rng)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    method, rules, extra = NETWORK_CASES[case]
    out, _ = explain(model, x, [1, -1, 4], **method)
    expected, _ = network_reference(params, x.astype(np.float64), out[CLASS_OUTPUT], rules, extra)
    assert np.isfinite(expected).all()
    assert_close(out[RELEVANCE_OUTPUT], expected)


def test_maxout_and_min_with_a_constant_first():
    """x → two Gemms → Max (a maxout: R to the winner) → Min(0.5, ·) (one data input, listed second: R
    unchanged) → Gemm → logits, under the ε-rule."""
    rng = np.random.default_rng(5)
    p = {"w1": rng.standard_normal((7, 6)), "w2": rng.standard_normal((7, 6)), "w3": rng.standard_normal((4, 7))}
    inits = {**{k: v.astype(np.float32) for k, v in p.items()}, "half": np.float32(0.5)}
    model = make_model(
        [helper.make_node("Gemm", ["x", "w1"], ["d1"], transB=1), helper.make_node("Gemm", ["x", "w2"], ["d2"], transB=1),
         helper.make_node("Max", ["d1", "d2"], ["m"]), helper.make_node("Min", ["half", "m"], ["c"]),
         helper.make_node("Gemm", ["c", "w3"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    out, _ = explain(model, x, [1, -1, 2], rule="epsilon", options=Options(epsilon=1e-3))
    dense, x64 = ref.Dense(), x.astype(np.float64)
    d1, d2 = dense.forward(x64, p["w1"], None), dense.forward(x64, p["w2"], None)
    c = np.minimum(np.maximum(d1, d2), 0.5)
    relevance = ref.lrp(dense, c, p["w3"], None, seeded(dense.forward(c, p["w3"], None), out[CLASS_OUTPUT]),
                        "epsilon", eps=1e-3)
    first = d1 >= d2
    expected = (ref.lrp(dense, x64, p["w1"], None, relevance * first, "epsilon", eps=1e-3)
                + ref.lrp(dense, x64, p["w2"], None, relevance * ~first, "epsilon", eps=1e-3))
    assert_close(out[RELEVANCE_OUTPUT], expected)


@pytest.mark.parametrize("composite,first,conv,dense", [
    ("epsilon_plus", "zplus", "zplus", "epsilon(epsilon=1e-06)"),
    ("epsilon_plus_flat", "flat", "zplus", "epsilon(epsilon=1e-06)"),
    ("epsilon_alpha2_beta1", "alphabeta(alpha=2.0, beta=1.0)", "alphabeta(alpha=2.0, beta=1.0)",
     "epsilon(epsilon=1e-06)"),
    ("epsilon_alpha2_beta1_flat", "flat", "alphabeta(alpha=2.0, beta=1.0)", "epsilon(epsilon=1e-06)"),
    ("epsilon_gamma_box", "zbox(low=0.0, high=1.0)", "gamma(gamma=0.25)", "epsilon(epsilon=1e-06)"),
])
def test_composites_assign_rules_per_layer(composite, first, conv, dense):
    model, _ = small_network(np.random.default_rng(0))
    bounds = Options(low=0.0, high=1.0) if composite == "epsilon_gamma_box" else None  # others would refuse them
    plan, method = plan_model(model, "net", choose(composite=composite, options=bounds))
    received = {n.inputs[1].name if n.op == "Conv" else n.name: method.layer_rules[n.name].describe()
                for n in plan.nodes if n.name in method.layer_rules}
    by_op = {n.name: n.op for n in plan.nodes}
    convs = [r for name, r in received.items() if name in ("w1", "w2")]
    dense_rules = [r for name, r in received.items() if by_op.get(name) == "Gemm"]
    assert received["w1"] == first and received["w2"] == conv
    assert len(convs) == 2 and dense_rules == [dense, dense]


def test_rule_errors():
    with pytest.raises(RlrpError, match="unknown rule 'bogus'"):
        choose("bogus")
    with pytest.raises(RlrpError, match="unknown composite"):
        choose(composite="bogus")
    with pytest.raises(RlrpError, match="alpha - beta = 1"):
        choose("alphabeta", options=Options(alpha=2.0, beta=2.0))
    with pytest.raises(RlrpError, match=r"needs the input bounds low and high \(--low, --high\)"):
        choose("zbox")


def test_classical_rules_keep_the_source_graph(tmp_path):
    model, _ = small_network(np.random.default_rng(3))
    compiled = compile_model(model, composite="epsilon_gamma_box", options=Options(low=-3.0, high=3.0))
    source_nodes = [n.SerializeToString() for n in model.graph.node]
    assert [n.SerializeToString() for n in compiled.graph.node[:len(source_nodes)]] == source_nodes
    assert isinstance(compiled, onnx.ModelProto)


# ---- one layer, several spellings: the rule sees W and b together (RLRP.md: "Conv, Gemm, MatMul+bias")

BN = ("scale", "shift", "mean", "var")  # a BatchNormalization's parameters, in its input order

LAYER_SPELLINGS = {  # name → (x shape, nodes, initializers), (reference nodes, initializers): same map
    "matmul_add_as_gemm": (
        (2, 6),
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["h"])],
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"])]),
    "conv_add_per_channel_as_bias": (
        (2, 3, 5, 5),
        [helper.make_node("Conv", ["x", "k"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "z"], ["h"])],
        [helper.make_node("Conv", ["x", "k", "b"], ["h"], pads=[1, 1, 1, 1])]),
    "matmul_batchnorm": (  # torch's Linear(bias=False) and BatchNorm1d, by the TorchScript exporter
        (2, 6),
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("BatchNormalization", ["z", *BN], ["h"])],
        [helper.make_node("Gemm", ["x", "wf", "bf"], ["h"])]),
    "gemm_batchnorm": (  # a Gemm of weights [in, out] (transB=0), as MatMul + Add becomes one
        (2, 6),
        [helper.make_node("Gemm", ["x", "w", "b"], ["z"]), helper.make_node("BatchNormalization", ["z", *BN], ["h"])],
        [helper.make_node("Gemm", ["x", "wf", "bf"], ["h"])]),
    "gemm_alpha_beta_into_constants": (
        (2, 6),
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], alpha=-1.0, beta=0.5)],
        [helper.make_node("Gemm", ["x", "minus_w", "half_b"], ["h"])]),
}


def _batchnorm_inits(rng, spelling, w, b):
    """The BN parameters of a ``*_batchnorm`` spelling, and the folded layer ``wf``, ``bf`` it is checked against."""
    bn = dict(zip(BN, (rng.uniform(0.5, 2.0, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2.0, 8))))
    factor = bn["scale"] / np.sqrt(bn["var"] + 1e-5)
    bias = b if spelling.startswith("gemm") else 0.0
    layer = {"w": w, "b": b} if spelling.startswith("gemm") else {"w": w}
    folded = {"wf": w * factor, "bf": (bias - bn["mean"]) * factor + bn["shift"]}
    as_float32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
    return as_float32({**layer, **bn}), as_float32(folded)


def _network(x_shape, nodes, inits, width):
    rng = np.random.default_rng(12)
    head = {"w2": rng.normal(size=(4, width)).astype(np.float32)}
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])
    return make_model(list(nodes) + [helper.make_node("Relu", ["h"], ["a"]),
                                     helper.make_node("Flatten", ["a"], ["f"]),
                                     helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1)],
                      [x_info], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                      {**inits, **head})


@pytest.mark.parametrize("spelling", list(LAYER_SPELLINGS))
@pytest.mark.parametrize("method", [{"rule": r} for r in RULES] + [{"composite": "epsilon_gamma_box"}],
                         ids=lambda m: next(iter(m.values())))
def test_a_layer_is_one_layer_however_it_is_spelled(spelling, method):
    """A dense layer written MatMul + Add (skl2onnx, tf2onnx), a bias-free Conv + a per-channel Add, a
    Gemm with alpha/beta, and a MatMul or Gemm [in, out] followed by a BatchNormalization give the
    relevance of the plain layer with its bias: the rule modifies W and b together (they went through the
    rule apart, the Add as an ε-step: zplus was off by 100%; the BatchNormalization passed relevance
    unchanged, the layer's rule on the unnormalized values: up to 500× off)."""
    x_shape, nodes, reference = LAYER_SPELLINGS[spelling]
    rng = np.random.default_rng(13)
    if len(x_shape) == 2:
        w, b = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
        inits = {"w": w, "b": b}
        ref_inits = {"w": w, "b": b} if spelling.startswith("matmul") else {"minus_w": -w, "half_b": 0.5 * b}
        if spelling.endswith("batchnorm"):
            inits, ref_inits = _batchnorm_inits(rng, spelling, w, b)
        width = 8
    else:
        k, b = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
        inits, ref_inits, width = {"k": k, "c": b.reshape(1, 4, 1, 1)}, {"k": k, "b": b}, 4 * 25
    options = Options(low=-3.0, high=3.0) if method in ({"rule": "zbox"}, {"composite": "epsilon_gamma_box"}) \
        else RULES[method["rule"]][0] if "rule" in method else None
    x = rng.normal(size=x_shape).astype(np.float32)
    out, _ = explain(_network(x_shape, nodes, inits, width), x, [1, -1], options=options, **method)
    expected, _ = explain(_network(x_shape, reference, ref_inits, width), x, [1, -1], options=options, **method)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT], rtol=1e-4, atol=1e-6)


NORMALIZATIONS = {  # name → (image channels, nodes normalizing x into "h")
    "sub_div": (3, [helper.make_node("Sub", ["x", "mean"], ["centred"]),
                    helper.make_node("Div", ["centred", "std"], ["h"])]),
    "batchnorm_op": (3, [helper.make_node("BatchNormalization", ["x", "inv_std", "shift", "zero", "one"], ["h"],
                                          epsilon=0.0)]),
    "gray_broadcast_to_three": (1, [helper.make_node("Sub", ["x", "mean"], ["centred"]),  # [N, 1] − [1, 3]
                                    helper.make_node("Mul", ["centred", "inv_std_bc"], ["h"])]),
}


@pytest.mark.parametrize("normalization", list(NORMALIZATIONS))
@pytest.mark.parametrize("method", [{"rule": r} for r in RULES] + [{"composite": "epsilon_gamma_box"}],
                         ids=lambda m: next(iter(m.values())))
def test_a_model_normalizing_its_own_input_explains_like_one_fed_normalized_images(normalization, method):
    """(x − mean) / std inside the model, written out or as a BatchNormalization, passes relevance unchanged
    (summed over the channels a gray image is broadcast to): the relevance of the same network fed the
    normalized image. Before, the Sub took the z-rule: a pixel near the mean got x / (x − mean) times its
    relevance (100× spikes under epsilon_gamma_box)."""
    rng = np.random.default_rng(21)
    channels, nodes = NORMALIZATIONS[normalization]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = rng.uniform(0, 1, (2, channels, 6, 6)).astype(np.float32)
    x[0, 0, 0, :3] = mean[0] + np.array([1e-4, -2e-5, 0], np.float32)  # pixels at and next to the mean
    k = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    conv = [helper.make_node("Conv", ["h", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["h2"]),
            helper.make_node("Flatten", ["h2"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1)]
    head = {"k": k, "w2": rng.normal(size=(4, 4 * 36)).astype(np.float32)}
    column = (1, 3, 1, 1)
    constants = {"mean": mean.reshape(column), "std": std.reshape(column), "inv_std_bc": (1 / std).reshape(column),
                 "inv_std": 1 / std, "shift": -mean / std, "zero": np.zeros(3, np.float32),
                 "one": np.ones(3, np.float32)}
    used = {i for n in nodes for i in n.input}
    inside = make_model(nodes + conv, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 6, 6])],
                        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                        {**{k: v for k, v in constants.items() if k in used}, **head})
    outside = make_model([helper.make_node("Identity", ["x"], ["h"])] + conv,
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                         [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], head)
    options = Options(low=-3.0, high=3.0) if method in ({"rule": "zbox"}, {"composite": "epsilon_gamma_box"}) \
        else RULES[method["rule"]][0] if "rule" in method else None
    normalized = (x - mean.reshape(column)) / std.reshape(column)
    out, _ = explain(inside, x, [1, -1], options=options, **method)
    expected, _ = explain(outside, normalized, [1, -1], options=options, **method)
    reference = expected[RELEVANCE_OUTPUT].sum(axis=1, keepdims=True) if channels == 1 else expected[RELEVANCE_OUTPUT]
    finite = np.isfinite(reference)  # lrp0: NaN where a pre-activation vanishes, alike in both
    np.testing.assert_array_equal(np.isfinite(out[RELEVANCE_OUTPUT]), finite)
    assert_close(out[RELEVANCE_OUTPUT][finite], reference[finite])  # the op rounds (x − mean) / std otherwise


@pytest.mark.parametrize("rule", ["epsilon", "lrp0"])
def test_a_constant_added_between_layers_is_a_bias_of_the_next_one(rule):
    """h + c after a layer (a positional embedding, a shift) keeps the z-rule, under which a constant keeps
    its share: the relevance of c folded into the next layer's bias, as the ε and 0 rules give it (passed
    unchanged there, as before the first layer, it was up to 90× off)."""
    rng = np.random.default_rng(22)
    w0, w1 = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    b1, c = rng.normal(size=4).astype(np.float32), rng.normal(size=(1, 8)).astype(np.float32)

    def network(nodes, inits):
        return make_model([helper.make_node("Gemm", ["x", "w0"], ["d"], transB=1), helper.make_node("Relu", ["d"], ["r"]),
                           *nodes], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], {"w0": w0, **inits})

    shifted = network([helper.make_node("Add", ["r", "c"], ["h"]),
                       helper.make_node("Gemm", ["h", "w1", "b1"], ["logits"], transB=1)], {"c": c, "w1": w1, "b1": b1})
    folded = network([helper.make_node("Gemm", ["r", "w1", "b"], ["logits"], transB=1)],
                     {"w1": w1, "b": (b1 + c @ w1.T).reshape(-1)})
    x = rng.normal(size=(3, 6)).astype(np.float32)
    out, _ = explain(shifted, x, [1, -1, 2], rule=rule, options=RULES[rule][0])
    expected, _ = explain(folded, x, [1, -1, 2], rule=rule, options=RULES[rule][0])
    assert_close(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT])


@pytest.mark.parametrize("method", [{"rule": r} for r in RULES] + [{"composite": "epsilon_gamma_box"}],
                         ids=lambda m: next(iter(m.values())))
def test_a_dense_layer_on_tokens_is_one_layer_with_its_bias(method):
    """MatMul + Add on [N, T, D] (a transformer's Linear, which no Gemm holds) explains like the same layer
    on [N·T, D] as a Gemm with its bias: the rule modifies W and b together (the Add took the z-rule
    apart from the layer: zplus 7× off)."""
    rng = np.random.default_rng(23)
    inits = {"w": rng.normal(size=(6, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)}
    tokens = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["h"])]
    rows = [helper.make_node("Reshape", ["x", "rows"], ["x2"]), helper.make_node("Gemm", ["x2", "w", "b"], ["g"]),
            helper.make_node("Reshape", ["g", "back"], ["h"])]
    options = Options(low=-3.0, high=3.0) if method in ({"rule": "zbox"}, {"composite": "epsilon_gamma_box"}) \
        else RULES[method["rule"]][0] if "rule" in method else None
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    out, _ = explain(_network(x.shape, tokens, inits, 40), x, [1, -1], options=options, **method)
    reference = {**inits, "rows": np.array([-1, 6]), "back": np.array([-1, 5, 8])}
    expected, _ = explain(_network(x.shape, rows, reference, 40), x, [1, -1], options=options, **method)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected[RELEVANCE_OUTPUT], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("opset,kernel,stride", [(17, 2, 2), (11, 2, 2), (17, 3, 1)])
def test_lrp0_nan_at_a_pooled_output_reaches_its_winner_only(opset, kernel, stride):
    """Windows of zeros after a Relu feed a bias-free 1×1 Conv: lrp0's 0/0 is NaN there, by design, and
    winner-take-all gives it to each window's first cell only (windows that tile the input spread it over
    the whole window through the routing's arithmetic; they route by a scatter under classical rules)."""
    rng = np.random.default_rng(24)
    x = (np.abs(rng.normal(size=(1, 1, 8, 8))) + 0.1).astype(np.float32)
    x[:, :, :4, :4] *= -1
    size = (8 - kernel) // stride + 1
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[kernel] * 2, strides=[stride] * 2),
         helper.make_node("Conv", ["p", "k"], ["c"]), helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        {"k": np.full((1, 1, 1, 1), 1.5, np.float32), "w": rng.normal(size=(3, size * size)).astype(np.float32),
         "b": np.ones(3, np.float32)}, opset=opset)
    out, _ = explain(model, x, [0], rule="lrp0")
    relu, winners = np.maximum(x[0, 0], 0), set()
    for i in range(size):
        for j in range(size):
            window = relu[i * stride:i * stride + kernel, j * stride:j * stride + kernel]
            if window.max() == 0:  # every cell ties: the first wins
                winners.add((i * stride, j * stride))
    assert {tuple(p) for p in np.argwhere(np.isnan(out[RELEVANCE_OUTPUT][0, 0]))} == winners

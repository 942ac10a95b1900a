"""Choosing the explanation method: the rule parameters are checked where they are given."""

import math

import numpy as np
import pytest

from onnx_builders import dense_classifier
from rlrp_onnx import RlrpError, compile_model
from rlrp_onnx.methods import Options, choose


@pytest.mark.parametrize("name, value, bound", [
    ("epsilon", -1, "> 0"), ("epsilon", 0, "> 0"), ("epsilon", math.nan, "> 0"), ("epsilon", "1e-3", "> 0"),
    ("epsilon", 1e-46, "> 0"), ("epsilon", 1e39, "> 0"),  # 0 and infinite in float32, the relevance pass's type
    ("epsilon", 3e38, "> 0"), ("epsilon", 10**400, "> 0"),  # twice it infinite; past a Python float
    ("gamma", -0.25, ">= 0"), ("gamma", math.inf, ">= 0"), ("gamma", True, ">= 0"), ("gamma", 1e39, ">= 0"),
    ("gamma", 10**400, ">= 0"), ("alpha", math.nan, ">= 0"), ("beta", -1.0, ">= 0"),
])
def test_bad_rule_parameters(name, value, bound):
    with pytest.raises(RlrpError, match=rf"^{name} must be a number {bound} that float32 holds[ ,]"):
        Options(**{name: value})


@pytest.mark.parametrize("low", [[[-2.0, -1.8]], [], math.nan, [0.0, math.inf], -1e39, "0", np.array([[0.0]]),
                                 10**400])
def test_bad_bounds(low):
    with pytest.raises(RlrpError, match="^low must be one number or a list of numbers, one per channel, each "
                                        "finite in float32; got "):
        Options(low=low, high=1.0)


def test_numpy_numbers_are_stored_as_floats_and_compile():
    """numpy scalars and arrays, as a normalization's (0 - mean) / std gives them, become Python floats."""
    options = Options(epsilon=np.float32(1e-3), low=(0 - np.array([0.5, 0.4])) / 0.25, high=np.float64(4.0),
                      gamma=np.array(0.5))
    assert options.epsilon == pytest.approx(1e-3) and type(options.epsilon) is float and options.gamma == 0.5
    assert options.low == [-2.0, -1.6] and type(options.low[0]) is float and type(options.high) is float
    model = dense_classifier()
    for method in ({"rule": "epsilon"}, {"composite": "epsilon_plus"}):
        compile_model(model, options=Options(epsilon=np.float32(1e-3)), **method)


def test_boundary_rule_parameters():
    assert choose("gamma", options=Options(gamma=0)).by_category["dense"].params == {"gamma": 0}
    assert choose("epsilon", options=Options(epsilon=1)).by_category["dense"].params == {"epsilon": 1}
    with pytest.raises(RlrpError, match="alpha - beta = 1"):  # the rule's own constraint still applies
        choose("alphabeta", options=Options(alpha=3.0, beta=1.0))


@pytest.mark.parametrize("rule, composite, options, unused", [
    ("rlrp", None, Options(epsilon=0.1), "rlrp does not use epsilon=0.1"),
    ("rlrp", None, Options(epsilon=1e-6), "rlrp does not use epsilon=1e-06"),  # a default given is given
    ("epsilon", None, Options(gamma=0.25), "epsilon does not use gamma=0.25"),
    (None, None, Options(gamma=1.0), "rlrp does not use gamma=1.0"),
    ("epsilon", None, Options(gamma=1.0), "epsilon does not use gamma=1.0"),
    (None, "epsilon_alpha2_beta1", Options(alpha=3.0, beta=2.0),
     "epsilon_alpha2_beta1 does not use alpha=3.0, beta=2.0"),
])
def test_options_a_method_would_ignore_are_refused(rule, composite, options, unused):
    with pytest.raises(RlrpError, match=f"^{unused}$"):
        choose(rule, composite, options)


def test_options_rebuilt_keep_what_was_given():
    """dataclasses.replace keeps the parameters given and adds those changed; a default passed is given."""
    import dataclasses

    assert Options().given == () and Options(epsilon=1e-6).given == ("epsilon",)
    assert dataclasses.replace(Options(epsilon=0.1), epsilon=0.2).given == ("epsilon",)
    assert dataclasses.replace(Options(epsilon=1e-6), gamma=0.5).given == ("epsilon", "gamma")
    assert dataclasses.replace(Options(), low=0.0, high=1.0).given == ("low", "high")
    assert choose("epsilon", options=dataclasses.replace(Options(epsilon=0.1), epsilon=0.2)).name == "epsilon"
    assert Options(epsilon=1e-6) != Options()


def test_options_a_method_takes_are_accepted():
    assert choose(None, "epsilon_alpha2_beta1", Options(alpha=2.0, epsilon=0.1)).name == "epsilon_alpha2_beta1"
    assert choose("zbox", options=Options(low=[0.0, 0.1], high=1.0)).by_category["dense"].params["low"] == [0.0, 0.1]


@pytest.mark.parametrize("low, high, message", [
    (1.0, 0.0, "need --low <= --high"),
    ([0.0, 0.5], [1.0, 0.2], "need --low <= --high"),
    ([0.0, 0.0], [1.0, 1.0, 1.0], "differ in length"),
])
def test_zbox_bounds_are_checked(low, high, message):
    with pytest.raises(RlrpError, match=message):
        choose("zbox", options=Options(low=low, high=high))

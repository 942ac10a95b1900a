"""Choosing the explanation method: the rule parameters are checked where they are given."""

import math

import pytest

from rlrp_onnx import RlrpError
from rlrp_onnx.methods import Options, choose


@pytest.mark.parametrize("name, value, bound", [
    ("epsilon", -1, "> 0"), ("epsilon", 0, "> 0"), ("epsilon", math.nan, "> 0"), ("epsilon", "1e-3", "> 0"),
    ("gamma", -0.25, ">= 0"), ("gamma", math.inf, ">= 0"), ("gamma", True, ">= 0"),
    ("alpha", math.nan, ">= 0"), ("beta", -1.0, ">= 0"),
])
def test_bad_rule_parameters(name, value, bound):
    with pytest.raises(RlrpError, match=f"^{name} must be a finite number {bound}, got {value!r}$"):
        Options(**{name: value})


def test_boundary_rule_parameters():
    assert choose("gamma", options=Options(gamma=0)).by_category["dense"].params == {"gamma": 0}
    assert choose("epsilon", options=Options(epsilon=1)).by_category["dense"].params == {"epsilon": 1}
    with pytest.raises(RlrpError, match="alpha - beta = 1"):  # the rule's own constraint still applies
        choose("alphabeta", options=Options(alpha=3.0, beta=1.0))


@pytest.mark.parametrize("rule, composite, options, unused", [
    ("rlrp", None, Options(epsilon=0.1), "rlrp does not use epsilon=0.1"),
    (None, None, Options(gamma=1.0), "rlrp does not use gamma=1.0"),
    ("epsilon", None, Options(gamma=1.0), "epsilon does not use gamma=1.0"),
    (None, "epsilon_alpha2_beta1", Options(alpha=3.0, beta=2.0),
     "epsilon_alpha2_beta1 does not use alpha=3.0, beta=2.0"),
])
def test_options_a_method_would_ignore_are_refused(rule, composite, options, unused):
    with pytest.raises(RlrpError, match=f"^{unused}$"):
        choose(rule, composite, options)


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

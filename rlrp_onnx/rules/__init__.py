"""Backward rules, one op family per module; importing this package registers them all."""

from . import (activations, attention, contraction, elementwise, gated, linear, normalization,  # noqa: F401
               pooling, resampling, routing, smooth, structure)  # (registration)
from .registry import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]

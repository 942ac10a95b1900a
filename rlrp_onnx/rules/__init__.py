"""Backward rules, one op family per module; importing this package registers them all."""

from . import (activations, contraction, elementwise, gated, linear, normalization, pooling,  # noqa: F401
               resampling, routing, smooth, structure)  # (registration)
from .registry import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]

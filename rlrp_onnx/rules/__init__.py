"""Backward rules, one op family per module; importing this package registers them all."""

from . import activations, elementwise, linear, pooling, structure  # noqa: F401  (registration)
from .registry import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]

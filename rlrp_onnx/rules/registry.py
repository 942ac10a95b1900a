"""The rule registry: one backward rule per forward op type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

    from ..backward import Context

# backward(ctx, node, rho_outputs) -> {input index: relative relevance of that input}
Backward = Callable[["Context", "gs.Node", list], dict]
# check(ctx, node) -> None when the rule applies, else the reason it does not
Check = Callable[["Context", "gs.Node"], "str | None"]


# What kind of op a rule covers decides how the classical LRP rules treat it (rules/classical.py):
ROUTE = "route"                  # moves or copies elements: the same routing of relevance
ACTIVATION = "activation"        # elementwise nonlinearity: relevance passes unchanged
NORMALIZATION = "normalization"  # BatchNormalization left unfolded: relevance passes unchanged
LAYER = "layer"                  # linear map with weights (Conv, Gemm, MatMul): the chosen LRP rule
LINEAR = "linear"                # weightless linear map or sum: the ε-rule with the fixed stabilizer
KINDS = (ROUTE, ACTIVATION, NORMALIZATION, LAYER, LINEAR)


@dataclass(frozen=True)
class Rule:
    """How relative relevance crosses one forward op (shared/RLRP.md, "Rules")."""

    backward: Backward
    check: Check | None = None
    kind: str = ROUTE
    held: tuple[int, ...] = ()  # inputs that only compute a gate the rule holds constant: they get no relevance
    spatial: bool = False  # reads the static spatial sizes (axes 2..) of its input and output


RULES: dict[str, Rule] = {}


def rule(*op_types: str, check: Check | None = None, kind: str = ROUTE, held: tuple[int, ...] = (),
         spatial: bool = False):
    """Register the decorated backward function for ``op_types``."""
    if kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}")

    def register(backward: Backward) -> Backward:
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"rule for {op_type} registered twice")
            RULES[op_type] = Rule(backward, check, kind, held, spatial)
        return backward

    return register

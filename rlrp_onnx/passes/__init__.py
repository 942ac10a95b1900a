"""Canonicalization: turn an exported model into a graph whose relevance path has static shapes."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..errors import RlrpError
from ..weightless import declared_weights, export_weightless, reattach
from .castlike import castlike_to_cast
from .fold import fold_constants, graphsurgeon_errors_only, infer_shapes
from .gelu import recognise_gelu
from .hard_sigmoid import recognise_hard_sigmoid
from .identities import drop_identities
from .l2_norm import recognise_l2_norm
from .layer_norm import recognise_group_norm, recognise_layer_norm
from .local_response import recognise_local_response
from .mish import recognise_mish
from .names import unique_node_names
from .over_one_plus import recognise_over_one_plus
from .pad_into_conv import pad_into_conv
from .reshape_targets import pin_expand_shapes, pin_reshape_targets, pin_slice_ends
from .sequence import split_to_sequence
from .static_shapes import explained_inputs, explained_tensors, free_output_batches, pin_input_shapes

MIN_OPSET = 11
UPGRADE_OPSET = 13  # the opset the refusal of older files suggests converting them to


def canonicalize(model: onnx.ModelProto, label: str, input_shapes=None) -> gs.Graph:
    """Pin input shapes, infer shapes, simplify and fold constants, infer again (and again after making
    Reshape targets computed from the batch size constants, or after folding sizes the last inference
    found), drop shape-keeping Reshapes and type-keeping Casts, recognise decomposed activations (GELU,
    Mish, Softsign, SiLU as a quotient, hard sigmoid, HardSwish), LayerNorms, GroupNorms, L2 and local
    response normalizations, and fold zero Pads into the Convs they feed; the source is not modified."""
    opset = opset_version(model)
    if opset < MIN_OPSET:
        raise RlrpError(f"{label}: opset {opset} is not supported; re-export with opset >= {MIN_OPSET}, or "
                        f"{_conversion_advice(model, opset)}")
    model, weights = declared_weights(model)
    pin_input_shapes(model, label, input_shapes)
    free_output_batches(model)
    with graphsurgeon_errors_only():
        graph = reattach(gs.import_onnx(infer_shapes(model, label)), weights)
    graph = split_to_sequence(fold_constants(castlike_to_cast(graph)))
    targets = 0
    while True:
        model, held = export_weightless(graph)
        if targets:  # sizes an earlier inference could not follow may be known now
            model = _without_made_up_sizes(model)
        with graphsurgeon_errors_only():
            graph = reattach(gs.import_onnx(infer_shapes(model, label)), held)
        nodes = len(graph.nodes)
        targets = pin_reshape_targets(graph) + pin_slice_ends(graph)
        if not targets + pin_expand_shapes(graph) and len(fold_constants(graph).nodes) == nodes:
            break
    for simplify in (drop_identities, recognise_gelu, recognise_mish, recognise_over_one_plus,
                     recognise_hard_sigmoid, recognise_layer_norm, recognise_group_norm, recognise_l2_norm,
                     recognise_local_response,
                     pad_into_conv):  # planned only, never run
        graph = simplify(graph)
    return unique_node_names(graph)


def _conversion_advice(model: onnx.ModelProto, opset: int) -> str:
    """How onnx's version converter brings this file to UPGRADE_OPSET: in two steps below opset 6 (its Gemm
    adapter needs shapes that its earlier adapters drop), ImageScaler rewritten by hand first (it has no
    schema for it), and the Resize it writes for a linear Upsample given Upsample's coordinates."""
    ops = {n.op_type for n in model.graph.node}
    steps = (f"convert_version(model, 6), then onnx.shape_inference.infer_shapes, then convert_version(..., "
             f"{UPGRADE_OPSET})" if opset < 6 else f"convert_version(model, {UPGRADE_OPSET})")
    advice = f"convert the file with onnx.version_converter.{steps}"
    if "ImageScaler" in ops:
        advice = f"rewrite its ImageScaler nodes as Mul and Add (the converter cannot), then {advice}"
    modes = {a.s for n in model.graph.node if n.op_type == "Upsample" for a in n.attribute if a.name == "mode"}
    if modes - {b"nearest"}:
        advice += (", then set coordinate_transformation_mode 'asymmetric' on the Resize it writes for each linear "
                   "Upsample (its default, half_pixel, changes the model)")
    return advice + ", and check that the converted model's outputs equal the original's"


def _without_made_up_sizes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the inner shapes in which an earlier inference made up a size name (``unk__…``,
    where it could not follow a size yet): inferred again, they take the name they have now (a Gemm on an
    SE branch keeps ``unk__0`` beside the batch's name otherwise, and a reshape by the batch size is lost).
    Expand and Tile outputs keep theirs: ``pin_expand_shapes`` gave them, which inference cannot, and renews
    them."""
    pinned = {o for n in model.graph.node if n.op_type in ("Expand", "Tile") for o in n.output}
    made_up = [v for v in model.graph.value_info if v.name not in pinned
               and any(d.dim_param.startswith("unk__") for d in v.type.tensor_type.shape.dim)]
    for value in made_up:
        model.graph.value_info.remove(value)
    return model


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


__all__ = ["canonicalize", "explained_inputs", "explained_tensors", "opset_version"]

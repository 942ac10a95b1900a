"""Routing rules (Transpose, Split, Slice, Gather, GatherND, ScatterND, Where, DepthToSpace, SpaceToDepth,
Tile, Pad in its reflect, edge and wrap modes) and the linear maps Resize, ConvTranspose, Einsum and CumSum,
in configurations written by hand and as the torch exporters write them.

All these ops are linear, so the reference is exact: the gradient of the (bias-free) hand-built model read
off ONNX Runtime runs of the source model on basis vectors (``rule_harness.linear_reference``), or torch
input × gradient for the exported modules.
"""

from __future__ import annotations

import numpy as np
import onnx.numpy_helper
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

from rlrp_onnx import RlrpError, compile_model
from rlrp_onnx.contract import CLASS_OUTPUT, RELEVANCE_OUTPUT
from rlrp_onnx.methods import Options

from exporting import EXPORTERS, export_onnx
from oracle import input_times_gradient, relative_l2_error
from rule_harness import added_ops, compiled, head_model, linear_reference
from test_oracle import run

TOLERANCE = 1e-5
X_SHAPE = (3, 4, 5)
INT64_MAX = 2**63 - 1
node = helper.make_node


def ints(*values):
    return np.asarray(values, dtype=np.int64)


def check_linear(model, x_shape=X_SHAPE, batch=3, targets=(1, -1, 3)):
    x = np.random.default_rng(5).standard_normal((batch, *x_shape)).astype(np.float32)
    out, compiled_model = compiled(model, x, list(targets))
    reference, _ = linear_reference(model, x, list(targets))
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], reference)
    assert np.all(errors < TOLERANCE), errors
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}
    return compiled_model


ROUTING = {
    "transpose": ([node("Transpose", ["x"], ["h"], perm=[0, 2, 3, 1])], {}, 17),
    "split_attr_opset11_one_output_used": (
        [node("Split", ["x"], ["a", "h"], axis=2, split=[1, 3])], {}, 11),
    "split_input_reordered": (
        [node("Split", ["x", "s"], ["a", "b", "c"], axis=3), node("Concat", ["c", "a"], ["h"], axis=3)],
        {"s": ints(2, 1, 2)}, 13),
    "split_num_outputs_opset18": (
        [node("Split", ["x"], ["a", "b"], axis=3, num_outputs=2), node("Add", ["a", "a"], ["h"])], {}, 18),
    "slice_negative_steps": (
        [node("Slice", ["x", "s", "e", "a", "t"], ["h"])],
        {"s": ints(-1, 3), "e": ints(-INT64_MAX, 0), "a": ints(2, 3), "t": ints(-1, -2)}, 17),
    "slice_step_and_offset": (
        [node("Slice", ["x", "s", "e", "a", "t"], ["h"])],
        {"s": ints(1, 0), "e": ints(INT64_MAX, 3), "a": ints(-1, 1), "t": ints(2, 1)}, 17),
    "slice_contiguous_default_axes": (
        [node("Slice", ["x", "s", "e"], ["h"])], {"s": ints(0, 1, -3), "e": ints(INT64_MAX, 3, -1)}, 13),
    "gather_duplicates_and_gaps": (
        [node("Gather", ["x", "i"], ["h"], axis=1)], {"i": ints(2, 0, 2, -1)}, 13),
    "gather_repeat_missing_the_last": (  # a layer of distinct indices that takes all but the last position
        [node("Gather", ["x", "i"], ["h"], axis=1)], {"i": ints(0, 0, 1)}, 13),
    "gather_shift_repeating_the_edge": (  # x[..., [0, 0, 1, 2, 3]]: shifted by one, the last column dropped
        [node("Gather", ["x", "i"], ["h"], axis=3)], {"i": ints(0, 0, 1, 2, 3)}, 13),
    "gather_scalar": ([node("Gather", ["x", "i"], ["h"], axis=3)], {"i": np.asarray(-2, np.int64)}, 13),
    "concat_with_an_empty_slice": (  # torch.roll by the axis length, x[:, 3:]: the empty piece carries nothing
        [node("Slice", ["x", "s", "e", "a"], ["empty"]), node("Concat", ["empty", "x"], ["h"], axis=1)],
        {"s": ints(3), "e": ints(3), "a": ints(1)}, 13),
    "concat_with_a_tile_repeated_zero_times": (
        [node("Tile", ["x", "r"], ["empty"]), node("Concat", ["x", "empty"], ["h"], axis=1)], {"r": ints(1, 0, 1, 1)},
        13),
    "gather_2d_indices": ([node("Gather", ["x", "i"], ["h"], axis=2)], {"i": ints(0, 3, 3, 1).reshape(2, 2)}, 13),
    "gathernd_after_transpose": (
        [node("Transpose", ["x"], ["t"], perm=[1, 2, 0, 3]), node("GatherND", ["t", "i"], ["g"]),
         node("Transpose", ["g"], ["h"], perm=[1, 0, 2])],
        {"i": ints(0, 1, 2, 3, 0, 1).reshape(3, 2)}, 13),
    "gather_elements_shared_over_the_batch": (  # torch.gather(x, 2, index.expand(N, ...)): repeats, gaps,
        [node("Shape", ["x"], ["s"]), node("Slice", ["s", "zero", "one"], ["n"]),  # a negative index, fewer
         node("Concat", ["n", "dims"], ["shape"], axis=0), node("Expand", ["i", "shape"], ["e"]),  # channels
         node("GatherElements", ["x", "e"], ["h"], axis=2)],  # and columns than x has
        {"zero": ints(0), "one": ints(1), "dims": ints(2, 3, 4),
         "i": ints(0, 0, 3, -1, 2, 2, 1, 0, 3, 3, 3, 0, 1, 1, 2, 0, 0, 3, -4, 1, 2, 1, 1, 0).reshape(1, 2, 3, 4)}, 13),
    "neg": ([node("Neg", ["x"], ["h"])], {}, 13),
    "slice_batch_to_tf2onnx_end": (  # tf2onnx writes "to the end" as 10**9, also on the dynamic batch axis
        [node("Slice", ["x", "s", "e", "a", "st"], ["h"])], {"s": ints(0, 1), "e": ints(10**9, 10**9),
                                                            "a": ints(0, 2), "st": ints(1, 2)}, 13),
    "depth_to_space_dcr": (  # [N, 4, 5, 3] → [N, 1, 10, 6]
        [node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), node("DepthToSpace", ["t"], ["h"], blocksize=2)], {}, 13),
    "depth_to_space_crd": (  # torch's PixelShuffle
        [node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
         node("DepthToSpace", ["t"], ["h"], blocksize=2, mode="CRD")], {}, 13),
    "space_to_depth": (  # [N, 3, 4, 4] → [N, 12, 2, 2]
        [node("Slice", ["x", "s", "e", "a"], ["t"]), node("SpaceToDepth", ["t"], ["h"], blocksize=2)],
        {"s": ints(0), "e": ints(4), "a": ints(3)}, 13),
    "tile": ([node("Tile", ["x", "r"], ["h"])], {"r": ints(1, 2, 1, 3)}, 13),
    "slice_to_an_end_read_off_size": (  # onnxscript 0.6's torch.roll: the end is Size(x), at least 60·N
        [node("Size", ["x"], ["s"]), node("Reshape", ["s", "m1"], ["e"]), node("Slice", ["x", "b", "e", "a"], ["h"])],
        {"m1": ints(-1), "b": ints(1), "a": ints(2)}, 13),
    "mean_of_three": (  # x, x reversed along its last axis and −x, averaged by the Mean op
        [node("Neg", ["x"], ["n"]), node("Slice", ["x", "s", "e", "a", "t"], ["r"]),
         node("Mean", ["x", "r", "n"], ["h"])],
        {"s": ints(-1), "e": ints(-INT64_MAX), "a": ints(3), "t": ints(-1)}, 13),
    "pad_reflect_wide": (  # pads up to the axis length less one, asymmetric, on three axes
        [node("Pad", ["x", "p"], ["h"], mode="reflect")], {"p": ints(0, 1, 3, 2, 0, 2, 0, 4)}, 13),
    "pad_edge": ([node("Pad", ["x", "p"], ["h"], mode="edge")], {"p": ints(0, 0, 2, 5, 0, 1, 3, 0)}, 13),
    "pad_wrap_axes_input": (  # opset 19's wrap, opset 18's axes input
        [node("Pad", ["x", "p", "", "a"], ["h"], mode="wrap")], {"p": ints(3, 1, 4, 2), "a": ints(2, 3)}, 19),
    "where_broadcast_condition": (
        [node("Mul", ["x", "m2"], ["x2"]), node("Where", ["c", "x", "x2"], ["h"])],
        {"c": np.array([True, False, True, True]).reshape(1, 4, 1), "m2": np.float32(-2.0)}, 13),
    "scatter_nd_over_channels": (  # channels 0 and 2 overwritten by 2·(channels 1, 2): as x[:, [0, 2]] = …
        [node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), node("Slice", ["t", "s", "e"], ["u"]),
         node("Mul", ["u", "two"], ["u2"]), node("ScatterND", ["t", "i", "u2"], ["y"]),
         node("Transpose", ["y"], ["h"], perm=[1, 0, 2, 3])],
        {"s": ints(1), "e": ints(3), "two": np.float32(2.0), "i": ints(0, 2).reshape(2, 1)}, 13),
    "cumsum": ([node("CumSum", ["x", "axis"], ["h"])], {"axis": ints(3)}, 14),
    "cumsum_reverse_exclusive": (
        [node("CumSum", ["x", "axis"], ["h"], reverse=1, exclusive=1)], {"axis": ints(-2)}, 14),
    "scatter_nd_repeated_index": (  # channels 1, then 2 written to channel 0 (also as −3): the last kept
        [node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), node("Gather", ["t", "g"], ["u"], axis=0),
         node("ScatterND", ["t", "i", "u"], ["y"]), node("Transpose", ["y"], ["h"], perm=[1, 0, 2, 3])],
        {"g": ints(1, 2, 1), "i": ints(0, -3, 2).reshape(3, 1)}, 13),
}


@pytest.mark.parametrize("case", list(ROUTING))
def test_routing(case):
    nodes, inits, opset = ROUTING[case]
    check_linear(head_model(nodes, X_SHAPE, initializers=inits, opset=opset))


class Unpool(nn.Module):
    """max_pool2d of overlapping windows and max_unpool2d back (the dynamo exporter: a ScatterND by the
    pool's indices, several windows writing the same maximum to one place); with ``hold`` the oracle: the
    values kept where some window's maximum is, which torch's max_unpool2d gradient counts once per window."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.hold = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5), False

    def forward(self, x):
        c = self.conv(x)
        pooled, where = F.max_pool2d(c, 3, 1, 1, return_indices=True)
        if self.hold:
            kept = torch.zeros_like(c).flatten(2).scatter(2, where.flatten(2), 1.0).reshape(c.shape)
            return self.fc((c * kept).flatten(1))
        return self.fc(F.max_unpool2d(pooled, where, 3, 1, 1, output_size=c.shape[2:]).flatten(1))


class Overwrite(nn.Module):
    """``y[:, :, [1, 1, 5]] = 3·c[:, :, [0, 3, 2]]``: rows 0 and 3 written to row 1, the last kept (as
    ONNX Runtime and torch do); with ``hold`` the function computed: ``y[:, :, [1, 5]] = 3·c[:, :, [3, 2]]``
    (torch's gradient of the first form gives both writes their row's gradient)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.hold = nn.Conv2d(3, 4, 3, 2, 1), nn.Linear(4 * 8 * 8, 5), False
        for name, values in {"rows": [1, 1, 5], "sources": [0, 3, 2], "kept_rows": [1, 5], "kept": [3, 2]}.items():
            self.register_buffer(name, torch.tensor(values))

    def forward(self, x):
        c = self.conv(x)
        y = c.clone()
        rows, sources = (self.kept_rows, self.kept) if self.hold else (self.rows, self.sources)
        y[:, :, rows] = c[:, :, sources] * 3
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("kind", ["unpool", "overwrite"])
def test_a_scatter_by_repeated_run_time_indices_gives_a_place_to_the_update_it_keeps(tmp_path, kind):
    """ScatterND by indices that repeat (at run time: the updates numbered and their numbers scattered
    alike): only the update a place keeps takes its relevance (each took it whole, then an equal share)."""
    module = (Unpool if kind == "unpool" else Overwrite)().eval()
    size = 8 if kind == "unpool" else 16
    x = np.random.default_rng(2).standard_normal((2, 3, size, size)).astype(np.float32)
    exporter, opset = ("dynamo", 18) if kind == "unpool" else ("torchscript", 13)
    path = export_onnx(module, x, tmp_path / f"{kind}.onnx", exporter, fold_batchnorm=False, opset=opset)
    assert "ScatterND" in {n.op_type for n in onnx.load(str(path)).graph.node}
    out = run(compile_model(path), {"image": x})
    module.hold = True
    relevance, _, _ = input_times_gradient(module, x, None)
    assert np.all(relative_l2_error(out[RELEVANCE_OUTPUT], relevance) < TOLERANCE)


class ChannelsLast(nn.Module):
    """An N, H, W, C image permuted into the network, whose mean over the positions the dynamo exporter
    then flattens by ``as_strided``: a Gather by indices computed from the batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


def test_a_gather_by_indices_computed_from_sizes(tmp_path):
    """Such a Gather's relevance goes back by a summing ScatterND with the same indices (was refused as
    indices computed at run time)."""
    module = ChannelsLast().eval()
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
    path = export_onnx(module, x, tmp_path / "nhwc.onnx", "dynamo", fold_batchnorm=False, opset=18)
    model = onnx.load(str(path))
    constants = {t.name for t in model.graph.initializer}
    assert any(n.op_type == "Gather" and n.input[1] not in constants for n in model.graph.node)
    out = run(compile_model(path), {"image": x})
    relevance, _, _ = input_times_gradient(module, x, None)
    assert np.all(relative_l2_error(out[RELEVANCE_OUTPUT], relevance) < TOLERANCE)


def test_a_scatter_that_accumulates_is_refused():
    nodes = [node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), node("Slice", ["t", "s", "e"], ["u"]),
             node("ScatterND", ["t", "i", "u"], ["y"], reduction="add"),
             node("Transpose", ["y"], ["h"], perm=[1, 0, 2, 3])]
    inits = {"s": ints(1), "e": ints(3), "i": ints(0, 2).reshape(2, 1)}
    with pytest.raises(RlrpError, match="ScatterND with reduction 'add' is not supported"):
        compile_model(head_model(nodes, X_SHAPE, initializers=inits, opset=16))


def test_a_slice_end_that_may_fall_short_of_its_axis_is_refused():
    """An end read off the size of an [N] tensor is N, which may be shorter than the axis (4): not pinned."""
    nodes = [node("ReduceMean", ["x"], ["t"], axes=[1, 2, 3], keepdims=0), node("Size", ["t"], ["s"]),
             node("Reshape", ["s", "m1"], ["e"]), node("Slice", ["x", "b", "e", "a"], ["h"])]
    model = head_model(nodes, X_SHAPE, h_shape=(3, 3, 5), initializers={"m1": ints(-1), "b": ints(1), "a": ints(2)},
                       opset=13)
    with pytest.raises(RlrpError, match="Slice with starts/ends/axes/steps computed at run time"):
        compile_model(model)


def test_gather_elements_with_indices_of_their_own_per_image():
    """A model of fixed batch 2 whose GatherElements takes other rows for each image, against the gradient
    built from the formula: the head's weights added back at the positions each output came from."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *X_SHAPE)).astype(np.float32)
    index = rng.integers(-4, 4, (2, 3, 2, 5))  # repeats, gaps and negative indices along axis 2
    model = head_model([node("GatherElements", ["x", "i"], ["h"], axis=2)], X_SHAPE, h_shape=(3, 2, 5),
                       initializers={"i": index}, opset=13)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 2
    targets = [1, 3]
    out, _ = compiled(model, x, targets)
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    gradient = np.zeros_like(x)
    for n, target in enumerate(targets):
        channel, row, column = np.indices(index.shape[1:])
        np.add.at(gradient[n], (channel, index[n] % X_SHAPE[1], column), w[target].reshape(3, 2, 5))
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], x * gradient)
    assert np.all(errors < TOLERANCE), errors


@pytest.mark.parametrize("nodes,h_shape,inits,reason", [
    ([node("ArgMax", ["x"], ["a"], axis=2), node("GatherElements", ["x", "a"], ["h"], axis=2)], (3, 1, 5), {},
     "GatherElements with indices computed at run time"),
    ([node("GatherElements", ["x", "i"], ["h"], axis=2)], (3, 2, 5), {"i": np.zeros((1, 3, 2, 5), np.int64)},
     "taking some images of, a dynamic batch axis"),
])
def test_gather_elements_it_cannot_follow_is_refused(nodes, h_shape, inits, reason):
    """Indices from the data (the row of each column's maximum), and constant indices of batch 1 on a
    dynamic batch, which take the first image only."""
    model = head_model(nodes, X_SHAPE, h_shape=h_shape, initializers=inits, opset=13)
    with pytest.raises(RlrpError, match=reason):
        compile_model(model)


@pytest.mark.parametrize("mode,pads,h_shape", [("reflect", ints(0, 0, 4, 0, 0, 0, 0, 0), (3, 8, 5)),
                                               ("wrap", ints(0, 0, 0, 6, 0, 0, 0, 0), (3, 4, 11))])
def test_a_pad_copying_copies_is_refused(mode, pads, h_shape):
    """Reflect pads longer than the axis less one (ONNX Runtime refuses them when it runs), wrap pads
    longer than the axis (ONNX Runtime 1.29 and 1.32 compute the second wrap differently, measured)."""
    model = head_model([node("Pad", ["x", "p"], ["h"], mode=mode)], X_SHAPE, h_shape, initializers={"p": pads},
                       opset=19)
    with pytest.raises(RlrpError, match=f"Pad mode '{mode}' with a pad longer than the axis"):
        compile_model(model)


def resize(mode, ctm, scales=None, sizes=None, opset=13, **attrs):
    """Scales for all four axes, or sizes of H and W (opset 18's ``axes``: full sizes would fix the batch)."""
    if scales is not None:
        inputs, inits = ["x", "", "scales"], {"scales": np.asarray(scales, np.float32)}
    else:
        inputs, inits, opset = ["x", "", "", "sizes"], {"sizes": ints(*sizes)}, max(opset, 18)
        attrs["axes"] = [2, 3]
    return [node("Resize", inputs, ["h"], mode=mode, coordinate_transformation_mode=ctm, **attrs)], inits, opset


RESIZE = {
    "nearest_asymmetric_floor_x2": resize("nearest", "asymmetric", [1, 1, 2, 2], nearest_mode="floor"),
    "nearest_half_pixel_sizes": resize("nearest", "half_pixel", sizes=[6, 7]),
    "linear_scale_equal_to_size": resize("linear", "asymmetric", [1, 1, 4, 1]),  # H = 4 resized x4
    "nearest_ceil_downscale": resize("nearest", "asymmetric", [1, 1, 0.5, 0.6], nearest_mode="ceil"),
    "nearest_tf_half_pixel": resize("nearest", "tf_half_pixel_for_nn", [1, 1, 1.5, 2]),
    "linear_half_pixel_x2": resize("linear", "half_pixel", [1, 1, 2, 2]),
    "linear_align_corners_sizes": resize("linear", "align_corners", sizes=[7, 3]),
    "linear_pytorch_half_pixel_down": resize("linear", "pytorch_half_pixel", sizes=[2, 1]),
    "linear_asymmetric_fraction": resize("linear", "asymmetric", [1, 1, 1.7, 1.3]),
    "cubic_exclude_outside": resize("cubic", "half_pixel", [1, 1, 2, 1.5], cubic_coeff_a=-0.5, exclude_outside=1),
    "linear_axes_opset18": ([node("Resize", ["x", "", "scales"], ["h"], mode="linear", axes=[3, 2])],
                            {"scales": np.asarray([1.5, 2.0], np.float32)}, 18),
    "linear_antialias_down_opset18": resize("linear", "half_pixel", [1, 1, 0.5, 0.6], opset=18, antialias=1),
    "linear_half_pixel_symmetric_opset19": resize("linear", "half_pixel_symmetric", [1, 1, 1.5, 2.5], opset=19),
    "linear_scales_opset11": ([node("Resize", ["x", "roi", "scales"], ["h"], mode="linear")],  # roi required
                              {"roi": np.zeros(0, np.float32), "scales": np.asarray([1, 1, 2, 1.5], np.float32)}, 11),
}


@pytest.mark.parametrize("case", list(RESIZE))
def test_resize(case):
    nodes, inits, opset = RESIZE[case]
    check_linear(head_model(nodes, X_SHAPE, initializers=inits, opset=opset))


def test_resize_to_a_size_shape_inference_cannot_see_is_refused():
    """torch's opset-11 export of interpolate(size=...): sizes = Concat(Shape(x)[:2], [h, w]), which ONNX
    shape inference does not see through at Resize-11; the relevance rule cannot know the resized axes
    (it passed relevance through unchanged) and must refuse."""
    nodes = [node("Shape", ["x"], ["s"]), node("Slice", ["s", "zero", "two"], ["nc"]),
             node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             node("Resize", ["x", "none", "none", "sizes"], ["h"], mode="linear")]  # roi, scales required at 11
    inits = {"zero": ints(0), "two": ints(2), "hw": ints(6, 7), "none": np.zeros(0, np.float32)}
    with pytest.raises(RlrpError, match="Resize to a size computed at run time .* opset >= 13"):
        compile_model(head_model(nodes, X_SHAPE, h_shape=(3, 6, 7), initializers=inits, opset=11))


def test_softmax_inside_the_network_only_as_a_gate():
    """A Softmax that gates a product gets no relevance (RLRP.md: gates held constant); one whose output
    is used otherwise would need a rule R-LRP does not define: refused, naming it."""
    model = head_model([node("Softmax", ["x"], ["w"], axis=1), node("Mul", ["x", "w"], ["h"])], X_SHAPE)
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    out, _ = compiled(model, x, [1, -1, 3])
    w = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    weights = next(t for t in model.graph.initializer if t.name == "W")
    rows = onnx.numpy_helper.to_array(weights)[out[CLASS_OUTPUT]].reshape(x.shape)
    assert out[CLASS_OUTPUT][[0, 2]].tolist() == [1, 3]
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * w * rows, rtol=1e-5, atol=1e-7)  # w held constant
    summed = [node("Softmax", ["x"], ["w"], axis=1, name="attention"), node("Add", ["x", "w"], ["h"])]
    with pytest.raises(RlrpError, match="attention .Softmax: Softmax inside the network is supported only as a gate"):
        compile_model(head_model(summed, X_SHAPE))


def _swap(a):
    return np.swapaxes(a, -1, -2)


def test_matmul_of_two_data_tensors():
    """Attention's products (RLRP.md's product rules, read for MatMul): softmax weights times values, the
    weights a gate held constant (rho_V = Wᵀ·rho); x·x[:, :1]ᵀ, no gate, each operand half
    (rho_U = rho·V/2, rho_V = Uᵀ·rho/2, summed over the batch axis V was broadcast along)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    c = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    gated = [node("Softmax", ["x"], ["w"], axis=-1), node("MatMul", ["c", "x"], ["v"]),
             node("MatMul", ["w", "v"], ["h"])]
    model = head_model(gated, X_SHAPE, initializers={"c": c})
    out, _ = compiled(model, x, [1, -1, 3])
    w = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(x.shape)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * (c.T @ (_swap(w) @ rho)), rtol=1e-5, atol=1e-6)

    bilinear = [node("Slice", ["x", "zero", "one", "one"], ["first"]),
                node("Transpose", ["first"], ["v"], perm=[0, 1, 3, 2]), node("MatMul", ["x", "v"], ["h"])]
    model = head_model(bilinear, X_SHAPE, initializers={"zero": ints(0), "one": ints(1)})
    out, _ = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(3, 3, 4, 4)
    rho_x = 0.5 * rho @ x[:, :1]
    rho_x[:, :1] += _swap(0.5 * (_swap(x) @ rho).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * rho_x, rtol=1e-5, atol=1e-6)


def test_einsum_of_two_data_tensors():
    """Attention written with einsum: the same product rules with Einsum adjoints. Softmax weights against
    the input (w·xᵀ per plane), the weights held (rho_x = rhoᵀ·w); x·xᵀ per plane, no gate, each operand
    half (rho_x = (rho·x + rhoᵀ·x)/2)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    planes = (3, X_SHAPE[0], X_SHAPE[1], X_SHAPE[1])
    gated = [node("Softmax", ["x"], ["w"], axis=-1), node("Einsum", ["w", "x"], ["h"], equation="ncij,nckj->ncik")]
    model = head_model(gated, X_SHAPE)
    out, _ = compiled(model, x, [1, -1, 3])
    w = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(planes)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * (_swap(rho) @ w), rtol=1e-5, atol=1e-6)

    gram = [node("Einsum", ["x", "x"], ["h"], equation="ncij,nckj->ncik")]
    model = head_model(gram, X_SHAPE)
    out, _ = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(planes)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * 0.5 * (rho @ x + _swap(rho) @ x), rtol=1e-5, atol=1e-6)


def test_matmul_of_two_data_tensors_is_no_layer_for_classical_rules():
    """Under a classical rule such a MatMul takes the fixed ε-rule of weightless products, not the layer
    rule (which would modify its runtime operand as weights); the first-layer rule goes to the Gemm."""
    from rlrp_onnx.compiler import plan_model
    from rlrp_onnx.methods import choose

    bilinear = [node("Slice", ["x", "zero", "one", "one"], ["first"]),
                node("Transpose", ["first"], ["v"], perm=[0, 1, 3, 2]), node("MatMul", ["x", "v"], ["h"])]
    model = head_model(bilinear, X_SHAPE, initializers={"zero": ints(0), "one": ints(1)})
    method = choose(composite="epsilon_gamma_box", options=Options(low=-3.0, high=3.0))
    plan, _ = plan_model(model, "m", method)
    assert {n.op for n in plan.context.graph.nodes if n.name in method.layer_rules} == {"Gemm"}
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    out = run(compile_model(model, rule="zplus"), {"x": x})
    assert np.all(np.isfinite(out[RELEVANCE_OUTPUT]))


def test_what_only_computes_a_gate_needs_no_rule():
    """Relevance never reaches a gate held by its product, so the nodes computing only the gate are not
    on the relevance path (cosine attention's x/‖x‖ has no rule: it used to be refused); a gate behind
    an Identity (attention dropout in an unoptimised export) is still a gate."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    for gate_nodes in ([node("ReduceL2", ["x"], ["norm"], axes=[1]), node("Div", ["x", "norm"], ["unit"]),
                        node("Sigmoid", ["unit"], ["g"])],
                       [node("Sigmoid", ["x"], ["s"]), node("Identity", ["s"], ["g"])]):
        model = head_model(gate_nodes + [node("Mul", ["x", "g"], ["h"])], X_SHAPE)
        out, _ = compiled(model, x, [1, -1, 3])
        rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(x.shape)
        unit = x / np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True)) if len(gate_nodes) == 3 else x
        g = 1 / (1 + np.exp(-unit))
        np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * g * rho, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [("s", "t"), ("t", "s")])
def test_a_product_of_gates_is_a_gate(order):
    """x·(σ(x·A)·σ(x·B)), in either order of the two gates: the product is held whole (relevance went into
    one Sigmoid, chosen by operand order, through its identity rule: 4-56 times off, and not symmetric)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    a, b = np.random.default_rng(6).standard_normal((2, 5, 5)).astype(np.float32)
    nodes = [node("MatMul", ["x", "a"], ["xa"]), node("Sigmoid", ["xa"], ["s"]), node("MatMul", ["x", "b"], ["xb"]),
             node("Sigmoid", ["xb"], ["t"]), node("Mul", list(order), ["g"]), node("Mul", ["x", "g"], ["h"])]
    model = head_model(nodes, X_SHAPE, initializers={"a": a, "b": b})
    out, _ = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(x.shape)
    x64 = x.astype(np.float64)
    gate = 1 / (1 + np.exp(-x64 @ a)) / (1 + np.exp(-x64 @ b))
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * gate * rho, rtol=1e-5, atol=1e-6)


GATE_FORMS = {  # nodes from s = σ(x·A) to the gate g, and g computed from s in float64
    "squared": ([node("Pow", ["s", "two"], ["g"])], lambda s: s ** 2),
    "root": ([node("Sqrt", ["s"], ["g"])], np.sqrt),
    "mean_over_channels": ([node("ReduceMean", ["s"], ["g"], axes=[1])], lambda s: s.mean(1, keepdims=True)),
    "max_over_channels": ([node("ReduceMax", ["s"], ["g"], axes=[1])], lambda s: s.max(1, keepdims=True)),
    "bounded": ([node("Max", ["s", "floor"], ["g"])], lambda s: np.maximum(s, 0.4)),
    "clipped": ([node("Clip", ["s", "floor", "ceiling"], ["g"])], lambda s: np.clip(s, 0.4, 0.6)),
    "pooled": ([node("AveragePool", ["s"], ["g"], kernel_shape=[1, 3], pads=[0, 1, 0, 1], count_include_pad=1)],
               lambda s: sum(np.pad(s, [(0, 0)] * 3 + [(1, 1)])[..., i:i + s.shape[-1]] for i in range(3)) / 3),
}


@pytest.mark.parametrize("form", GATE_FORMS)
def test_a_power_bound_or_reduction_of_a_gate_is_a_gate(form):
    """x·σ(s)², x·√σ(s), x·max(σ(s), c), x·clip(σ(s), c, d), an average pool of a gate and a gate reduced
    over the channels (x·σ(s).mean(1), also how attention averaged over heads weights the values) are held
    whole (the product took the half rule and
    half the relevance went back through the Sigmoid: 0.4-13 times off, with Div nodes)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    a = np.random.default_rng(6).standard_normal((5, 5)).astype(np.float32)
    gate_nodes, gate = GATE_FORMS[form]
    nodes = [node("MatMul", ["x", "a"], ["xa"]), node("Sigmoid", ["xa"], ["s"]), *gate_nodes,
             node("Mul", ["x", "g"], ["h"])]
    inits = {"a": a, "two": np.float32(2.0), "floor": np.float32(0.4), "ceiling": np.float32(0.6)}
    model = head_model(nodes, X_SHAPE, initializers=inits)
    out, compiled_model = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(x.shape)
    g = gate(1 / (1 + np.exp(-x.astype(np.float64) @ a)))
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * g * rho, rtol=1e-5, atol=1e-6)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def test_pooled_features_gated_by_themselves_are_no_statistic():
    """u = GAP(x), then u·σ(u·A) (squeeze-excitation on pooled features): u is a statistic of x, which the
    gate is computed from, but through u; the gate is held and u takes the relevance (u was held and all
    relevance went into the Sigmoid: 0.9-1.05 off)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    a = np.random.default_rng(6).standard_normal((3, 3)).astype(np.float32)
    nodes = [node("GlobalAveragePool", ["x"], ["u4"]), node("Flatten", ["u4"], ["u"]), node("MatMul", ["u", "a"], ["ua"]),
             node("Sigmoid", ["ua"], ["g"]), node("Mul", ["u", "g"], ["h"])]
    model = head_model(nodes, X_SHAPE, (3,), initializers={"a": a})
    out, compiled_model = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]]
    x64 = x.astype(np.float64)
    u = x64.mean(axis=(2, 3))
    gate = 1 / (1 + np.exp(-u @ a))
    expected = x * (gate * rho)[:, :, None, None] / (X_SHAPE[1] * X_SHAPE[2])
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], expected, rtol=1e-5, atol=1e-7)
    assert not added_ops(compiled_model, model) & {"Div", "Reciprocal"}


def test_a_tensor_centred_then_mixed_is_not_centred():
    """relu(Conv(x − mean(x))) times its mean over the channels: after the Conv the tensor is centred no more
    (not a LayerNorm's), so the mean is held as a statistic of it (the product took the half rule: 0.3-0.4
    off)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [node("ReduceMean", ["x"], ["m"], axes=[2, 3]), node("Sub", ["x", "m"], ["d"]), node("Conv", ["d", "w"], ["c"]),
             node("Relu", ["c"], ["r"]), node("ReduceMean", ["r"], ["s"], axes=[1]), node("Mul", ["r", "s"], ["h"])]
    model = head_model(nodes, X_SHAPE, initializers={"w": w})
    out, _ = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(x.shape)
    d = x - x.mean(axis=(2, 3), keepdims=True)
    c = np.einsum("oi,nihw->nohw", w[:, :, 0, 0], d)
    r = np.maximum(c, 0)
    rho_c = rho * r.mean(axis=1, keepdims=True) * (c > 0)
    rho_d = np.einsum("oi,nohw->nihw", w[:, :, 0, 0], rho_c)
    rho_x = rho_d - rho_d.mean(axis=(2, 3), keepdims=True)  # the mean is a linear map of x here
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * rho_x, rtol=1e-4, atol=1e-6)


def test_a_renormalised_mixture_of_softmax_and_positions_is_a_gate():
    """ConViT's attention weights: (1 − c)·softmax(x) + c·P with P a tensor of positions that does not
    depend on the input (here expanded to the batch at run time), divided by their sum over the keys, then
    times the values: held whole (the Softmax was refused)."""
    x = np.random.default_rng(5).standard_normal((3, *X_SHAPE)).astype(np.float32)
    positions = np.random.default_rng(6).random((1, 1, 4, 5)).astype(np.float32)
    nodes = [node("Softmax", ["x"], ["w"], axis=-1), node("Mul", ["w", "keep"], ["kw"]),
             node("Shape", ["x"], ["shape"]), node("Expand", ["p", "shape"], ["pe"]), node("Mul", ["pe", "c"], ["cp"]),
             node("Add", ["kw", "cp"], ["mix"]), node("ReduceSum", ["mix", "last"], ["total"]),
             node("Div", ["mix", "total"], ["attention"]), node("Transpose", ["x"], ["v"], perm=[0, 1, 3, 2]),
             node("MatMul", ["attention", "v"], ["h"])]
    inits = {"keep": np.float32(0.7), "c": np.float32(0.3), "p": positions, "last": ints(-1)}
    model = head_model(nodes, X_SHAPE, initializers=inits)
    out, _ = compiled(model, x, [1, -1, 3])
    rho = onnx.numpy_helper.to_array(model.graph.initializer[0])[out[CLASS_OUTPUT]].reshape(3, 3, 4, 4)
    w = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
    mix = 0.7 * w + 0.3 * positions
    attention = mix / mix.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], x * _swap(_swap(attention) @ rho), rtol=1e-5, atol=1e-6)


def test_a_node_reading_the_input_in_a_subgraph_is_named():
    """An If whose branches read the data (TorchScript's unfolded squeeze(0)) is the uncovered node, not
    "does not depend on any float input"."""
    branch = lambda name: helper.make_graph(  # noqa: E731
        [node("Identity", ["x"], [f"{name}_out"])], name, [], [helper.make_tensor_value_info(f"{name}_out", 1, None)])
    nodes = [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "zero"], ["n"], axis=0),  # N == 1?
             node("Equal", ["n", "one"], ["cond"]),
             node("If", ["cond"], ["h"], then_branch=branch("then"), else_branch=branch("else"), name="choose")]
    graph = helper.make_graph(
        nodes + [node("Flatten", ["h"], ["flat"]), node("Gemm", ["flat", "W"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *X_SHAPE])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])],
        initializer=[onnx.numpy_helper.from_array(np.ones((4, 60), np.float32), "W"),
                     onnx.numpy_helper.from_array(np.array(0), "zero"), onnx.numpy_helper.from_array(np.array(1), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(RlrpError, match="choose .If: no relevance rule"):
        compile_model(model)


def test_softmax_reshaped_into_the_scores_is_no_gate():
    """tf2onnx's head Conv1x1 → Softmax → Reshape: the Softmax feeds only the graph output. Taken for a
    gate it gave zero relevance and the probability as the score (then it was refused); it is the
    trailing softmax, skipped: the logit before it is explained, as without the softmax."""
    w = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)

    def model(head):
        graph = helper.make_graph(
            [node("Gemm", ["x", "w"], ["z"], transB=1), node("Unsqueeze", ["z", "axes"], ["z4"]), *head],
            "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", 4])],
            initializer=[onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(ints(2, 3), "axes")])
        made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        made.ir_version = 8
        return made

    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    out, _ = compiled(model([node("Softmax", ["z4"], ["p4"], axis=1), node("Flatten", ["p4"], ["probs"])]), x)
    plain, _ = compiled(model([node("Flatten", ["z4"], ["probs"])]), x)
    np.testing.assert_allclose(out["rlrp_score"], (x @ w.T).max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out[RELEVANCE_OUTPUT], plain[RELEVANCE_OUTPUT], rtol=1e-6, atol=1e-7)


def test_resize_nearest_is_routed_without_matmul():
    nodes, inits, opset = RESIZE["nearest_asymmetric_floor_x2"]
    model = head_model(nodes, X_SHAPE, initializers=inits, opset=opset)
    ops = added_ops(check_linear(model), model)
    assert "MatMul" not in ops and "Gather" in ops


def conv_transpose(weight_shape, seed=3, **attrs):
    w = np.random.default_rng(seed).standard_normal(weight_shape).astype(np.float32)
    return [node("ConvTranspose", ["x", "w", "b"], ["h"], **attrs)], \
        {"w": w, "b": np.zeros(weight_shape[1] * attrs.get("group", 1), np.float32)}, 17


CONV_TRANSPOSE = {
    "stride2_output_padding": conv_transpose((3, 2, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]),
    "groups_dilation_asymmetric_pads": conv_transpose((3, 2, 2, 3), group=3, dilations=[2, 1], pads=[0, 1, 1, 0]),
    "kernel_equals_stride": conv_transpose((3, 4, 2, 2), strides=[2, 2]),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE))
def test_conv_transpose(case):
    nodes, inits, opset = CONV_TRANSPOSE[case]
    check_linear(head_model(nodes, X_SHAPE, initializers=inits, opset=opset))


def conv(weight_shape, seed=7, **attrs):
    w = np.random.default_rng(seed).standard_normal(weight_shape).astype(np.float32)
    return [node("Conv", ["x", "w"], ["h"], **attrs)], {"w": w}, 17


CONV = {  # adjoints whose end rows need output_padding >= stride (ONNX Runtime refuses that ConvTranspose)
    "dilated_begin_pad_above_end": conv((4, 3, 3, 1), dilations=[2, 1], pads=[2, 0, 1, 0]),
    "stride2_dilation3": conv((4, 3, 2, 2), strides=[2, 1], dilations=[3, 1], pads=[2, 0, 0, 0]),
}


@pytest.mark.parametrize("case", list(CONV))
def test_conv_adjoint_geometry(case):
    nodes, inits, opset = CONV[case]
    check_linear(head_model(nodes, X_SHAPE, initializers=inits, opset=opset))


def einsum(equation, constant_shape, data_first=True):
    c = np.random.default_rng(4).standard_normal(constant_shape).astype(np.float32)
    inputs = ["x", "c"] if data_first else ["c", "x"]
    return [node("Einsum", inputs, ["h"], equation=equation)], {"c": c}, 12


EINSUM = {
    "channel_mix": einsum("nchw,dc->ndhw", (6, 3)),
    "constant_first": einsum("dc,nchw->ndhw", (2, 3), data_first=False),
    "summed_in_x_only": einsum("nchw,dc->nd", (5, 3)),
    "implicit_output": einsum("abcd,de", (5, 2)),  # -> abce
    "ellipsis": einsum("...hw,wk->...hk", (5, 3)),
}


@pytest.mark.parametrize("case", list(EINSUM))
def test_einsum(case):
    nodes, inits, opset = EINSUM[case]
    check_linear(head_model(nodes, X_SHAPE, initializers=inits, opset=opset))


# ---- as the torch exporters write them ---------------------------------------------------------------

class Ops(nn.Module):
    """conv → the op → dense head; ``kind`` picks the op (all linear in their data input)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.mix = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("order", torch.arange(7, -1, -1))
        self.register_buffer("rows", torch.randint(0, 8, (1, 4, 8, 8)))  # repeats and gaps along each column
        features = {"convtranspose": 4 * 16 * 16, "up_bilinear": 4 * 11 * 13}.get(kind, 4 * 8 * 8)
        self.fc = nn.Linear(features, 5)

    def forward(self, x):
        x, k = self.conv(x), self.kind
        if k == "split_cat":
            a, b, c = x.split([1, 2, 1], 1)
            x = torch.cat([c, a, b], 1)
        elif k == "chunk_flip_transpose":
            a, b = x.chunk(2, 2)
            x = torch.cat([b.flip(3), a.flip(2)], 2) + x.transpose(2, 3)
        elif k == "strided_slices":
            x = torch.cat([x[:, :, ::2], x[:, :, 1::2]], 2)
        elif k == "index_gather":
            x = x[:, [2, 0, 1, 3]] + x.index_select(3, self.order)
        elif k == "torch_gather":  # GatherElements, its indices expanded over the batch at run time
            x = torch.gather(x, 2, self.rows.expand(x.shape[0], -1, -1, -1))
        elif k == "torch_gather_unbatched":  # an index without the batch axis
            x = torch.gather(x, 3, self.rows[0].expand(x.shape[0], -1, -1, -1))
        elif k == "torch_gather_repeated":  # Tile (the TorchScript exporter's repeats hide the shape)
            x = torch.gather(x, 2, self.rows.repeat(x.shape[0], 1, 1, 1))
        elif k == "up_nearest":
            x = F.interpolate(x, scale_factor=2, mode="nearest")[:, :, ::2, 1::2]
        elif k == "up_bilinear":
            x = F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=False)
        elif k == "convtranspose":
            x = self.up(x)
        elif k == "repeat":  # Tile: [N, 4, 8, 8] → [N, 4, 16, 8], back to 8 rows by a strided slice
            x = x.repeat(1, 1, 2, 1)[:, :, 1::2]
        elif k == "pixel_shuffle":  # DepthToSpace (CRD), then PixelUnshuffle: [N, 4, 8, 8] → [N, 1, 16, 16] → back
            x = F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2)
        elif k == "unfold":  # F.unfold's 3x3 patches (dynamo: a Gather by indices from the static height), averaged
            x = F.unfold(x, 3, padding=1).reshape(-1, 4, 9, 8, 8).mean(2)
        elif k == "einsum_prelu_consts":
            x = F.prelu(torch.einsum("nchw,dc->ndhw", x, self.mix), torch.full((4,), 0.2))
            x = (x - 0.3) * 2 / 3
        return self.fc(x.flatten(1))


EXPORTED = ["split_cat", "chunk_flip_transpose", "strided_slices", "index_gather", "torch_gather",
            "torch_gather_unbatched", "up_nearest",
            "up_bilinear", "convtranspose", "einsum_prelu_consts", "pixel_shuffle", "repeat", "unfold"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", EXPORTED)
def test_exported_forms(tmp_path, kind, exporter):
    check_exported(tmp_path, kind, exporter)


def test_torch_gather_of_a_repeated_index(tmp_path):
    """``index.repeat(N, 1, 1, 1)``: a Tile of the batch axis only, with sizes the dynamo exporter keeps."""
    check_exported(tmp_path, "torch_gather_repeated", "dynamo")


def check_exported(tmp_path, kind, exporter):
    """The compiled relevance of ``Ops(kind)`` exported by ``exporter`` against input × gradient."""
    from rlrp_onnx import compile_model

    torch.manual_seed(0)
    module = Ops(kind).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = export_onnx(module, x, tmp_path / f"{kind}.onnx", exporter, fold_batchnorm=False)
    out = run(compile_model(path), {"image": x})
    relevance, _, _ = input_times_gradient(module, x)
    errors = relative_l2_error(out[RELEVANCE_OUTPUT], relevance)
    assert np.all(errors < 1e-4), errors


class GatherAfterATile(nn.Module):
    """A tile whose sizes the TorchScript export computes at run time, a Conv, then ``torch.gather`` with
    an index buffer expanded to the batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(6, 4, 3, padding=1), nn.Linear(4 * 16 * 5, 5)
        self.register_buffer("index", torch.randint(0, 2, (1, 4, 16, 5)))

    def forward(self, x):
        y = torch.relu(self.conv(x.tile(1, 2, 2, 1).narrow(3, 6, 2)))
        return self.fc(torch.gather(y, 3, self.index.expand(y.shape[0], -1, -1, -1)).flatten(1))


def test_torch_gather_after_a_tile(tmp_path):
    """The Expand of the index takes a size name inference makes up anew each round: the planning loop
    never ended while such names were inferred again every round (302997a)."""
    module, x = GatherAfterATile().eval(), np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = export_onnx(module, x, tmp_path / "gather_after_tile.onnx", "torchscript", fold_batchnorm=False)
    out = run(compile_model(path), {"image": x})
    relevance, _, _ = input_times_gradient(module, x)
    assert np.all(relative_l2_error(out[RELEVANCE_OUTPUT], relevance) < 1e-4)

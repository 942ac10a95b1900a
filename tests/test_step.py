"""``Emitter.step``, the 0/1 factor of every Relu/Clip mask on an N,C,H,W tensor (a depthwise 1x1 Conv
and a HardSigmoid), is exactly ``[y > bound]`` or ``[y < bound]`` for every float32 ``y``, NaN aside:
at and next to the bound, for subnormal differences and for values that overflow once scaled. Run by
ONNX Runtime as the blocked (NCHWc) Conv with the HardSigmoid fused into it (optimisation level all) and
as plain ops (level basic, as on CUDA)."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import pytest

from rlrp_onnx.ir import STEP_BOUND_LIMIT, Emitter

CHANNELS = 16
BOUNDS = [0.0, 6.0, -1.0, 1.0, 0.1, 1e-40, STEP_BOUND_LIMIT, -STEP_BOUND_LIMIT]
LEVELS = {"all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC}


def probes() -> np.ndarray:
    """Each bound, its float32 neighbours two steps either way, and values far off, as [1, C, H, W]."""
    tiny = np.float32(2.0**-149)
    values = [0.0, -0.0, tiny, -tiny, 2.0**-126, -(2.0**-126), 3e38, -3e38, np.inf, -np.inf, 1e-30, -5.0]
    for bound in np.float32(BOUNDS):
        up = np.nextafter(bound, np.float32(np.inf))
        down = np.nextafter(bound, np.float32(-np.inf))
        values += [bound, up, np.nextafter(up, np.float32(np.inf)), down, np.nextafter(down, np.float32(-np.inf))]
    values = np.array(values, np.float32)
    width = -(-values.size // CHANNELS)
    padded = np.resize(values, CHANNELS * width)  # every value reaches every channel position once
    rolled = np.stack([np.roll(padded, 7 * c) for c in range(CHANNELS)])
    return rolled.reshape(1, CHANNELS, 1, -1)


def step_model(shape) -> onnx.ModelProto:
    graph = gs.Graph(opset=17)
    y = gs.Variable("y", np.float32, list(shape))
    graph.inputs = [y]
    emit = Emitter(graph)
    for bound in BOUNDS:
        for above in (True, False):
            out = emit.step(y, bound, above)
            out.name = f"{'above' if above else 'below'} {bound!r}"
            graph.outputs.append(out)
    model = gs.export_onnx(graph)
    model.ir_version = 8  # what exporters write at opset 17; onnx's newest IR is too new for older runtimes
    return model


@pytest.mark.parametrize("level", LEVELS.values(), ids=LEVELS.keys())
def test_step_is_exactly_the_comparison(level, tmp_path):
    y = probes()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onnxruntime.InferenceSession(step_model(y.shape).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"y": y})))
    for bound in BOUNDS:
        b = np.float32(bound)
        for above, expected in ((True, y > b), (False, y < b)):
            got = results[f"{'above' if above else 'below'} {bound!r}"]
            wrong = got != expected.astype(np.float32)
            assert not wrong.any(), (bound, above, y[wrong][:5], got[wrong][:5])
    optimized = onnx.load(options.optimized_model_filepath).graph.node
    blocked = [n for n in optimized if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    assert (len(blocked) == 2 * len(BOUNDS)) == (level == LEVELS["all"])


def test_bounds_beyond_the_limit_fall_back_to_comparisons():
    graph = gs.Graph(opset=17)
    y = gs.Variable("y", np.float32, [1, CHANNELS, 2, 2])
    rho = gs.Variable("rho", np.float32, [1, CHANNELS, 2, 2])
    graph.inputs = [y, rho]
    gated = Emitter(graph).gate(rho, y, low=-4.0 * STEP_BOUND_LIMIT, high=6.0)
    ops = [n.op for n in graph.nodes]
    assert "Greater" in ops and "Less" in ops and "HardSigmoid" not in ops
    assert gated is not rho

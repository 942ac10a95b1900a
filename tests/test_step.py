"""``Emitter.step``, the 0/1 factor of every Relu/Clip mask on an N,C,H,W tensor (a depthwise 1x1 Conv
and a HardSigmoid), is exactly ``[y > bound]`` or ``[y < bound]`` for every float32 ``y``, NaN aside:
at and next to the bound, for subnormal differences and for values that overflow once scaled; and
``Emitter.band``, the factor of a ReLU6-like Clip to [0, high], is exactly ``[0 < y < high]`` for every
output of that Clip. Run by ONNX Runtime as blocked (NCHWc) Convs with the HardSigmoid (and the band's
Add) fused into them (optimisation level all) and as plain ops (level basic, as on CUDA)."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import pytest

from rlrp_onnx.ir import STEP_BOUND_LIMIT, Emitter

CHANNELS = 16
BOUNDS = [0.0, 6.0, -1.0, 1.0, 0.1, 1e-40, STEP_BOUND_LIMIT, -STEP_BOUND_LIMIT]
HIGHS = [6.0, 1.0, 4.0, 3.0, 0.1, 7.999, 1.0 / STEP_BOUND_LIMIT, STEP_BOUND_LIMIT, 1e20]
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


def clip_outputs() -> dict[float, np.ndarray]:
    """For each high: every probe and random values, clipped to [0, high], with high and 0, their
    float32 neighbours inside and the smallest positive floats, as [1, C, 1, W]."""
    rng = np.random.default_rng(0)
    outputs = {}
    for bound in HIGHS:
        high = np.float32(bound)
        below = [high]
        for _ in range(3):
            below.append(np.nextafter(below[-1], np.float32(0)))
        values = np.concatenate([probes().ravel(), below, [0.0, 2.0**-149, 2.0**-148, 2.0**-126],
                                 rng.uniform(0, 1.2 * float(high), 2000)]).astype(np.float32)
        values = np.clip(np.nan_to_num(values, nan=0.0), 0, high)
        padded = np.resize(values, CHANNELS * -(-values.size // CHANNELS))
        outputs[bound] = np.stack([np.roll(padded, 7 * c) for c in range(CHANNELS)]).reshape(1, CHANNELS, 1, -1)
    return outputs


def _session(model: onnx.ModelProto, level, tmp_path):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _blocked_convs(tmp_path) -> int:
    optimized = onnx.load(tmp_path / "optimized.onnx").graph.node
    return len([n for n in optimized if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"])


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
    session = _session(step_model(y.shape), level, tmp_path)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"y": y})))
    for bound in BOUNDS:
        b = np.float32(bound)
        for above, expected in ((True, y > b), (False, y < b)):
            got = results[f"{'above' if above else 'below'} {bound!r}"]
            wrong = got != expected.astype(np.float32)
            assert not wrong.any(), (bound, above, y[wrong][:5], got[wrong][:5])
    assert (_blocked_convs(tmp_path) == 2 * len(BOUNDS)) == (level == LEVELS["all"])


@pytest.mark.parametrize("level", LEVELS.values(), ids=LEVELS.keys())
@pytest.mark.parametrize("high", HIGHS)
def test_band_is_exactly_the_two_comparisons(level, high, tmp_path):
    y = clip_outputs()[high]
    graph = gs.Graph(opset=17)
    graph.inputs = [gs.Variable("y", np.float32, list(y.shape))]
    graph.outputs = [Emitter(graph).band(graph.inputs[0], high)]
    model = gs.export_onnx(graph)
    model.ir_version = 8
    got = _session(model, level, tmp_path).run(None, {"y": y})[0]
    expected = ((y > 0) & (y < np.float32(high))).astype(np.float32)
    wrong = got != expected
    assert not wrong.any(), (y[wrong][:5], got[wrong][:5])
    assert expected.any() and not expected.all()
    assert (_blocked_convs(tmp_path) == 2) == (level == LEVELS["all"])


def test_bounds_beyond_the_limit_fall_back_to_comparisons():
    graph = gs.Graph(opset=17)
    y = gs.Variable("y", np.float32, [1, CHANNELS, 2, 2])
    rho = gs.Variable("rho", np.float32, [1, CHANNELS, 2, 2])
    graph.inputs = [y, rho]
    gated = Emitter(graph).gate(rho, y, low=-4.0 * STEP_BOUND_LIMIT, high=6.0)
    ops = [n.op for n in graph.nodes]
    assert "Greater" in ops and "Less" in ops and "HardSigmoid" not in ops
    assert gated is not rho

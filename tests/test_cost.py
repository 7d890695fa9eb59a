"""Cortex-M4 cost model (cost.py): exact features of builtin operators and of PATCH_EXEC
(checked against a patch-by-patch walk of what the core runs), and plan estimates equal to
the estimate of the model `convert` writes."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest

from tflm_patch import patch_format as pf
from tflm_patch.cost import (
    COEFFICIENTS,
    Features,
    PlanCost,
    estimate,
    model_features,
    model_instructions,
    op_features,
    options_features,
)
from tflm_patch.model import Model, load_model
from tflm_patch.planner import PlanRequest, PlanResult, patched_model_object, plan, stage_keys
from tflm_patch.rewrite import CUSTOM_CODE, to_checked_bytes
from tflm_patch.schedule import make_schedule, stage_options
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ZOO_NAMES, ensure_model

SLOW_PLANS = ("mbv2_035_144", "mbv1_025_96")  # memory plans over ~20 s on a loaded machine
ZOO = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PLANS else n for n in ZOO_NAMES]


@cache
def _model(name: str) -> Model:
    return load_model(ensure_model(name))


@cache
def _memory_plan(name: str) -> tuple[Model, PlanResult, Model]:
    model = _model(name)
    r = plan(model, PlanRequest(objective="memory"))
    assert r.chosen is not None
    return model, r, load_model(to_checked_bytes(patched_model_object(model, r)))


def _nonzero(f: Features) -> dict[str, int]:
    return {k: v for k, v in f.items() if v}


# odd_stride2: CONV_2D 3x3 stride 2 (im2col), DEPTHWISE 3x3, CONV_2D 1x1, DEPTHWISE 5x5
# (not the 3x3 kernel), CONV_2D, MEAN, FULLY_CONNECTED
ODD_STRIDE2 = [
    {"conv_out": 28812, "conv_pixel": 2401, "conv_call": 1, "conv_mac": 777924,
     "conv_im2col": 64827, "op": 1},
    {"dw3x3_mac": 67500, "dw_out": 7500, "dw_pixel": 625, "op": 1},
    {"conv_out": 15000, "conv_pixel": 625, "conv_call": 1, "conv1x1_mac": 180000, "op": 1},
    {"dw_opt_mac": 101400, "dw_out": 4056, "dw_pixel": 169, "op": 1},
    {"conv_out": 1568, "conv_pixel": 49, "conv_call": 1, "conv_mac": 338688,
     "conv_im2col": 10584, "op": 1},
    {"reduce_elem": 1568, "op": 1},
    {"fc_mac": 96, "fc_out": 3, "op": 1},
]


@pytest.mark.parametrize("index", range(len(ODD_STRIDE2)))
def test_builtin_features_odd_stride2(index: int) -> None:
    model = _model("odd_stride2")
    assert _nonzero(op_features(model, model.operators[index])) == ODD_STRIDE2[index]


def test_estimate_is_the_dot_product() -> None:
    assert estimate(Counter(a=2, b=3, c=5), {"a": 1.5, "b": 2.0}) == 9
    assert estimate(Counter(op=1)) == round(COEFFICIENTS["op"])


@pytest.mark.parametrize("name", ZOO)
def test_every_feature_has_a_coefficient(name: str) -> None:
    names = set(model_features(_model(name))) | set(model_features(_memory_plan(name)[2]))
    assert names <= set(COEFFICIENTS)


def test_stage_features_by_hand() -> None:
    """odd_stride2 ops 0..4 on a 1x1 grid: one patch, every layer once over its whole
    output; two STREAM pairs (ops 0+1: 3x3 conv + 3x3 depthwise, ops 2+3: 1x1 conv + 5x5
    depthwise) one channel at a time, then the 3x3 conv."""
    model = _model("odd_stride2")
    graph = build_stage(model, 0, 4)
    f = options_features(stage_options(graph, make_schedule(graph, (1, 1)), graph.layers, 0))
    assert [ly.stream for ly in graph.layers] == [True, False, True, False, False]
    assert _nonzero(f) == {
        "px_op": 1, "px_patch": 1, "px_layer": 3,
        "px_row": 25 + 13 + 7,  # output rows of the two pairs and of the last conv
        "px_stream_conv_mac": 777924 + 180000, "px_stream_dw_mac": 67500 + 101400,
        "px_stream_conv_tap": 28812 * 9,  # the 3x3 conv of the first pair: 28812 outputs
        "px_stream_channel": 12 + 24,
        "px_conv_out": 28812 + 15000 + 1568, "px_dw_out": 7500 + 4056,
        "px_conv_mac": 338688, "px_conv_pixel": 49, "px_conv_tap": 1568 * 9,
    }


def _walk(o: pf.PatchOptions) -> Features:
    """The features of a PATCH_EXEC counted patch by patch, layer by layer, as the core's
    RunPatch / RunLayer / RestoreCache / SaveCache / ComputeStreamPair run them."""
    f: Features = Counter(px_op=1)
    n, m = o.grid
    for i in range(n):
        for j in range(m):
            f["px_patch"] += 1
            if o.input_nchw:
                t0 = o.tensors[0]
                f["px_gather_byte"] += _size(t0.rows[i]) * _size(t0.cols[j]) * t0.channels
            k = 0
            while k < len(o.layers):
                stream = o.layers[k].stream
                _walk_layer(o, k, i, j, stream, f)
                k += 2 if stream else 1
    return f


def _size(r: tuple[int, int]) -> int:
    return max(0, r[1] - r[0])


def _walk_layer(o: pf.PatchOptions, k: int, i: int, j: int, stream: bool, f: Features) -> None:
    t = o.tensors[k + (2 if stream else 1)]
    rows, (lo, hi) = _size(t.rows[i]), t.cols[j]
    if rows == 0 or hi <= lo:
        return
    comp_lo = lo
    if t.cached and j > 0 and t.cols[j - 1][1] > lo:
        comp_lo = t.cols[j - 1][1]
        f["px_cache_byte"] += rows * (comp_lo - lo) * t.channels
        f["px_cache_row"] += rows
    if hi > comp_lo:
        f["px_layer"] += 1
        f["px_row"] += rows
        _walk_compute(o, k, i, j, stream, rows * (hi - comp_lo), f)
    if t.cached and j + 1 < len(t.cols) and t.cols[j + 1][0] < hi:
        f["px_cache_byte"] += rows * (hi - t.cols[j + 1][0]) * t.channels
        f["px_cache_row"] += rows


def _walk_compute(o: pf.PatchOptions, k: int, i: int, j: int, stream: bool, pixels: int,
                  f: Features) -> None:
    ly = o.layers[k]
    out = o.tensors[k + (2 if stream else 1)]
    cin = o.tensors[ly.input0].channels
    taps = ly.kernel[0] * ly.kernel[1]
    elems = pixels * out.channels
    if stream:
        mid = o.tensors[k + 1]
        mid_px = _size(mid.rows[i]) * _size(mid.cols[j])
        dw = o.layers[k + 1]
        f["px_stream_conv_mac"] += mid_px * out.channels * taps * cin
        f["px_stream_conv_tap"] += mid_px * out.channels * taps if taps > 1 else 0
        f["px_conv_out"] += mid_px * out.channels
        f["px_stream_dw_mac"] += elems * dw.kernel[0] * dw.kernel[1]
        f["px_dw_out"] += elems
        f["px_stream_channel"] += out.channels
    elif ly.kind == pf.CONV:
        f["px_conv1x1_mac" if taps == 1 else "px_conv_mac"] += elems * taps * cin
        f["px_conv_tap"] += elems * taps if taps > 1 else 0
        f["px_conv_out"] += elems
        f["px_conv_pixel"] += pixels
    elif ly.kind == pf.DEPTHWISE:
        plain = ly.kernel == (3, 3) and ly.depth_multiplier == 1 and ly.dilation == (1, 1)
        f["px_dw3x3_mac" if plain else "px_dw_mac"] += elems * taps
        f["px_dw_out"] += elems
        f["px_dw_pixel"] += pixels
    elif ly.kind in pf.POOL_KINDS:
        f["px_pool_tap"] += elems * taps
        f["px_pool_out"] += elems
    else:
        f["px_pad_elem" if ly.kind == pf.PAD else "px_add_elem"] += elems


@pytest.mark.parametrize("name", ZOO)
def test_patch_exec_features_equal_a_patch_by_patch_walk(name: str) -> None:
    """Every PATCH_EXEC of the zoo model's memory plan (caches, STREAM pairs, NCHW
    gathers, fused 1x1 stages): the separable count equals the walk."""
    _, _, patched = _memory_plan(name)
    ops = [op for op in patched.operators if op.name == CUSTOM_CODE]
    assert ops
    for op in ops:
        o = pf.decode(op.custom_options or b"")
        assert _nonzero(options_features(o)) == _nonzero(_walk(o)), f"operator {op.index}"


@pytest.mark.parametrize("name", ZOO)
def test_stage_macs_equal_the_schedule(name: str) -> None:
    """MACs counted by the cost model over computed regions = the schedule's MACs."""
    model, r, _ = _memory_plan(name)
    c = r.chosen
    assert c is not None
    graph = build_stage(model, c.first, c.last)
    sched = make_schedule(graph, c.grid, c.cache)
    f = options_features(stage_options(graph, sched, graph.layers, 0))
    macs = sum(v for k, v in f.items() if k.endswith("_mac"))
    pools = sum(p * s[0] * s[1] for ly, p, s in zip(graph.layers, graph.macs_per_pixel,
                                                    graph.shapes[1:], strict=True)
                if ly.kind not in pf.CONV_KINDS)
    if pools == 0:
        assert macs == sched.macs


@pytest.mark.parametrize("name", ZOO)
def test_plan_estimate_equals_estimate_of_written_model(name: str) -> None:
    """The planner's estimate (original features less the replaced operators' plus the
    PATCH_EXECs') is exactly the estimate of the file convert writes."""
    _, r, patched = _memory_plan(name)
    c = r.chosen
    assert c is not None and r.cost is not None
    assert _nonzero(r.cost.plan_features(stage_keys(c))) == _nonzero(model_features(patched))
    assert r.instructions(c) == model_instructions(patched)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_unpatched_estimate(name: str) -> None:
    model = _model(name)
    assert PlanCost(model).instructions == model_instructions(model) > 0


def test_calibration_recovers_known_coefficients() -> None:
    """tools/calibrate_m4_costs.py's fit on synthetic measurements (each operator's
    instructions made with a known table): the fitted table predicts every case within
    1%, starting from the shipped one."""
    import calibrate_m4_costs as cal

    truth = {k: v * 1.3 for k, v in COEFFICIENTS.items()}
    truth["conv1x1_mac"], truth["px_stream_conv_mac"] = 1.8, 3.0
    cases = []
    for name in ("odd_stride2", "pools_dilated"):
        model, _, patched = _memory_plan(name)
        for label, m in (("original", model), ("memory", patched)):
            feats = [op_features(m, op) for op in m.operators]
            ops = [estimate(f, truth) for f in feats]
            cases.append(cal.Case(name, label, m.raw, sum(ops), ops, feats))
    fitted = cal.fit(cases, COEFFICIENTS)
    for c in cases:
        assert c.predicted(fitted) == pytest.approx(c.measured_total, rel=0.01), c.label

"""Cortex-M4 cost model: estimated instructions per Invoke, per operator.

Every operator is described by integer *features* (MACs of a kernel class, output
elements requantized, computed rows, patches, bytes copied, ...); its estimated cost is
the dot product of those features with `COEFFICIENTS` (instructions per unit). Builtin
operators are costed as TFLM runs them with CMSIS-NN kernels (Arduino_TensorFlowLite,
February 2023: `arm_convolve_wrapper_s8` and `arm_depthwise_conv_wrapper_s8` pick the
kernel as below); a PATCH_EXEC operator is costed from its options, layer by layer over
the region each patch computes (halos recomputed, columns a cache already holds left
out), plus the fixed work per operator, patch, layer call and row, STREAM channels,
cache copies and the NCHW gather.

Features are integers, so the features of a whole model (or of a plan: the original's
minus the replaced operators' plus the PATCH_EXECs') add up exactly in any order and
the estimate of a plan equals the estimate of the model `convert` writes.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tflm_patch import patch_format as pf
from tflm_patch.model import Model, OperatorInfo
from tflm_patch.ref_params import conv_params, depthwise_params, pool_params
from tflm_patch.schedule import make_schedule, stage_options
from tflm_patch.stage import StageGraph, build_stage

Features = Counter[str]

CUSTOM_CODE = "PATCH_EXEC"

# Instructions per unit of each feature on a Cortex-M4 (Thumb-2 with the DSP extension),
# TFLM + CMSIS-NN built -Os as the Arduino IDE builds Arduino_TensorFlowLite, and the
# PATCH_EXEC core built the same way.
# How they were obtained: `python tools/calibrate_m4_costs.py` runs models, original and
# patched, with tools/m4_speed.py (QEMU mps2-an386, -icount shift=0: instructions per
# Invoke and per operator) and fits this table by non-negative least squares (`--write`
# rewrites it; the stamp below says on what). Entries no measured case exercises keep their
# first-principles values (CMSIS-NN's 1x1 kernel ~1.8 instructions per MAC with
# SMLAD/SXTB16; the portable PATCH_EXEC core 4-10 per MAC, ~10 for the STREAM convolution),
# the PATCH_EXEC ones scaled so that person_detect's memory-objective plan gives the
# 130,606,031 instructions per Invoke measured with that core.
# BEGIN COEFFICIENTS
# Fitted 2026-12-07 by tools/calibrate_m4_costs.py on 29 cases: person_detect, zoo:mbv1_025_96,
# zoo:mcunet_dw57, zoo:nchw_input, zoo:odd_stride2, zoo:pools_dilated; requests default, memory,
# memory-10%, original, single-stage.
COEFFICIENTS: dict[str, float] = {
    "op": 3303.3921,  # per operator: interpreter loop, kernel entry, tensor lookups
    "conv1x1_mac": 1.7235,  # CONV_2D 1x1 stride 1 unpadded: arm_convolve_1x1_s8_fast
    "conv_mac": 1.2172,  # other CONV_2D: arm_convolve_s8 (mat_mult_kernel_s8_s16)
    "conv_im2col": 42.7449,  # per im2col element (q7 -> q15, padding taps included)
    "conv_out": 58.849,  # per CONV_2D output element: requantize, clamp, store
    "conv_pixel": 55.1853,  # per CONV_2D output pixel: input row / im2col column handling
    "conv_call": 2139.3018,  # per CONV_2D: context, buffers, per-channel setup
    "dw3x3_mac": 2.097,  # DEPTHWISE_CONV_2D 3x3 pad <= 1 mult 1: arm_depthwise_conv_3x3_s8
    "dw_opt_mac": 9.6043,  # other mult-1 depthwise: arm_depthwise_conv_s8_opt
    "dw_mac": 5.8434,  # depth multiplier > 1 or dilated: arm_depthwise_conv_s8
    "dw_out": 76.3452,  # per DEPTHWISE_CONV_2D output element
    "dw_pixel": 27.906,  # per DEPTHWISE_CONV_2D output pixel
    "pool_tap": 11.7243,  # AVERAGE/MAX_POOL_2D: per window element read
    "pool_out": 5.9313,  # per pooled output element
    "add_elem": 52.3541,  # ADD: arm_elementwise_add_s8, per output element
    "pad_elem": 10.4,  # PAD/PADV2 (reference kernel), per output element
    "fc_mac": 3.1058,  # FULLY_CONNECTED: arm_fully_connected_s8
    "fc_out": 35.1317,
    "copy_byte": 0.6173,  # RESHAPE/SQUEEZE/EXPAND_DIMS/...: memcpy
    "softmax_elem": 208.0428,  # SOFTMAX: arm_softmax_s8
    "transpose_elem": 11.2726,  # TRANSPOSE (reference)
    "reduce_elem": 195.3037,  # MEAN/SUM/REDUCE_MAX (reference), per input element
    "other_elem": 25.9,  # any other operator, per output element
    "mul_elem": 25.9,  # MUL (reference BroadcastMul), per output element: as other_elem
    # PATCH_EXEC
    "px_op": 3523.7796,  # per PATCH_EXEC: Eval, constant lookups, views
    "px_patch": 601.3298,  # per patch
    "px_layer": 3061.1291,  # per layer (or STREAM pair) and patch that computes something
    "px_row": 588.239,  # per computed output row of a layer, per patch
    "px_conv1x1_mac": 1.999,  # CONV_2D 1x1
    "px_conv_mac": 2.9509,  # CONV_2D KxK
    "px_conv_tap": 8.9719,  # CONV_2D KxK: per output element and window tap (a dot over Cin)
    "px_conv_out": 9.3776,  # per CONV_2D output element: requantize, clamp, store
    "px_conv_pixel": 4.7483,  # per CONV_2D output pixel (not STREAM)
    "px_dw_mac": 5.7826,  # DEPTHWISE_CONV_2D, depth multiplier > 1 or dilated
    "px_dw3x3_mac": 11.811,  # DEPTHWISE_CONV_2D 3x3, multiplier 1, no dilation
    "px_dw_out": 0.0,
    "px_dw_pixel": 17.189,  # per DEPTHWISE_CONV_2D output pixel (not STREAM)
    "px_stream_conv_mac": 1.7919,  # the CONV_2D of a STREAM pair (channel by channel)
    "px_stream_conv_tap": 29.535,  # ... KxK: per output element and window tap
    "px_stream_dw_mac": 12.9671,  # the DEPTHWISE_CONV_2D of a STREAM pair
    "px_stream_channel": 1206.6463,  # per STREAM channel and patch
    "px_pool_tap": 5.7398,
    "px_pool_out": 0.0,
    "px_pad_elem": 9.45,
    "px_add_elem": 93.7765,
    "px_lut_elem": 7.03,  # LUT per element (QEMU: 32x32x8 vs 64x64x8 HARD_SWISH stage)
    "px_concat_elem": 3.0,  # CONCATENATION per output element (QEMU, rough: 3.8 at 8+8
    # channels, 2.0 at 16+16; two memcpy calls per pixel dominate)
    "px_mul_elem": 25.9,  # MUL by a per-channel side input (not fitted: as mul_elem)
    "px_cache_byte": 4.0635,  # CACHE_COLS: bytes restored and saved
    "px_cache_row": 121.584,  # per memcpy (one row) of a restore or a save
    "px_gather_byte": 0.0,  # INPUT_NCHW: per input byte gathered
}
# END COEFFICIENTS


@dataclass(frozen=True)
class OpCost:
    index: int
    name: str
    features: Features
    instructions: int


def estimate(features: Mapping[str, int], coefficients: Mapping[str, float] | None = None
             ) -> int:
    """Estimated instructions of `features` (rounded)."""
    coef = COEFFICIENTS if coefficients is None else coefficients
    return round(sum(coef.get(name, 0.0) * n for name, n in features.items()))


def total(features: Iterable[Features]) -> Features:
    out: Features = Counter()
    for f in features:
        out.update(f)
    return out


def model_op_costs(model: Model, coefficients: Mapping[str, float] | None = None
                   ) -> list[OpCost]:
    """Features and estimated instructions of every operator of a (patched or not) model."""
    out = []
    for op in model.operators:
        f = op_features(model, op)
        out.append(OpCost(op.index, op.name, f, estimate(f, coefficients)))
    return out


def model_features(model: Model) -> Features:
    return total(op_features(model, op) for op in model.operators)


def model_instructions(model: Model, coefficients: Mapping[str, float] | None = None) -> int:
    """Estimated Cortex-M4 instructions of one Invoke of the whole model."""
    return estimate(model_features(model), coefficients)


# ------------------------------------------------------------------ builtin operators


def op_features(model: Model, op: OperatorInfo) -> Features:
    """Features of one operator (a PATCH_EXEC from its options)."""
    if op.name == CUSTOM_CODE:
        f = options_features(pf.decode(op.custom_options or b""))
    else:
        fn = _BUILTIN.get(op.name, _other)
        f = fn(model, op)
    f["op"] += 1
    return f


def _out_elems(model: Model, op: OperatorInfo) -> int:
    return sum(model.tensors[t].numel for t in op.outputs if t >= 0)


def _conv(model: Model, op: OperatorInfo) -> Features:
    p = conv_params(model, op)
    _, kh, kw, cin = (int(v) for v in model.tensors[op.inputs[1]].shape)
    out = model.tensors[op.outputs[0]].shape
    pixels, cout = int(out[1]) * int(out[2]), int(out[3])
    macs = pixels * cout * kh * kw * cin
    one = (kh, kw, p.stride_height, p.stride_width, p.pad_top, p.pad_left) == (1, 1, 1, 1, 0, 0)
    f: Features = Counter(conv_out=pixels * cout, conv_pixel=pixels, conv_call=1)
    if one and (p.dilation_height, p.dilation_width) == (1, 1):
        f["conv1x1_mac"] = macs
    else:
        f["conv_mac"] = macs
        f["conv_im2col"] = pixels * kh * kw * cin
    return f


def _depthwise(model: Model, op: OperatorInfo) -> Features:
    p = depthwise_params(model, op)
    _, kh, kw, cout = (int(v) for v in model.tensors[op.inputs[1]].shape)
    out = model.tensors[op.outputs[0]].shape
    elems = int(out[1]) * int(out[2]) * cout
    macs = elems * kh * kw
    plain = p.depth_multiplier == 1 and (p.dilation_height, p.dilation_width) == (1, 1)
    if plain and (kh, kw) == (3, 3) and p.pad_top <= 1 and p.pad_left <= 1:
        kind = "dw3x3_mac"
    else:
        kind = "dw_opt_mac" if plain else "dw_mac"
    return Counter({kind: macs, "dw_out": elems, "dw_pixel": int(out[1]) * int(out[2])})


def _pool(model: Model, op: OperatorInfo) -> Features:
    p = pool_params(model, op)
    elems = _out_elems(model, op)
    return Counter(pool_tap=elems * p.filter_height * p.filter_width, pool_out=elems)


def _fully_connected(model: Model, op: OperatorInfo) -> Features:
    w = model.tensors[op.inputs[1]].shape
    elems = _out_elems(model, op)
    return Counter(fc_mac=elems * int(w[-1]), fc_out=elems)


def _copy(model: Model, op: OperatorInfo) -> Features:
    return Counter(copy_byte=sum(model.tensors[t].nbytes for t in op.outputs if t >= 0))


def _reduce(model: Model, op: OperatorInfo) -> Features:
    return Counter(reduce_elem=model.tensors[op.inputs[0]].numel)


def _per_elem(name: str) -> Callable[[Model, OperatorInfo], Features]:
    def fn(model: Model, op: OperatorInfo) -> Features:
        return Counter({name: _out_elems(model, op)})
    return fn


def _other(model: Model, op: OperatorInfo) -> Features:
    return Counter(other_elem=_out_elems(model, op))


_BUILTIN = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise,
    "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool,
    "ADD": _per_elem("add_elem"), "PAD": _per_elem("pad_elem"), "PADV2": _per_elem("pad_elem"),
    "FULLY_CONNECTED": _fully_connected, "SOFTMAX": _per_elem("softmax_elem"),
    "TRANSPOSE": _per_elem("transpose_elem"),
    "RESHAPE": _copy, "SQUEEZE": _copy, "EXPAND_DIMS": _copy,
    "MUL": _per_elem("mul_elem"), "MEAN": _reduce, "SUM": _reduce, "REDUCE_MAX": _reduce,
}


# ------------------------------------------------------------------ PATCH_EXEC


@dataclass(frozen=True)
class _Region:
    """What one layer's output tensor computes over all patches (separable by bands)."""

    row_bands: int  # row bands with a non-empty range
    rows: int  # sum of those bands' rows
    col_bands: int  # column bands that compute something
    cols: int  # sum of computed columns
    cache_bytes: int  # restored + saved (bytes), all patches
    cache_rows: int  # memcpy calls of restores and saves

    @property
    def calls(self) -> int:
        return self.row_bands * self.col_bands

    @property
    def pixels(self) -> int:
        return self.rows * self.cols


def _region(t: pf.StageTensor) -> _Region:
    rows = [hi - lo for lo, hi in t.rows if hi > lo]
    row_sum = sum(rows)
    col_bands = cols = copied_cols = copies = 0
    cached, bands = t.cached, t.cols
    m = len(bands)
    for j, (lo, hi) in enumerate(bands):
        if hi <= lo:
            continue
        c_lo = max(lo, bands[j - 1][1]) if cached and j > 0 else lo  # t.computed_cols(j)
        if cached and j > 0 and c_lo > lo:  # restore
            copied_cols, copies = copied_cols + c_lo - lo, copies + 1
        if cached and j + 1 < m and bands[j + 1][0] < hi:  # save
            copied_cols, copies = copied_cols + hi - bands[j + 1][0], copies + 1
        if hi > c_lo:
            col_bands, cols = col_bands + 1, cols + hi - c_lo
    return _Region(len(rows), row_sum, col_bands, cols,
                   row_sum * copied_cols * t.channels, row_sum * copies)


def options_features(o: pf.PatchOptions) -> Features:
    """Features of one PATCH_EXEC from its options (ops.decode or stage_options)."""
    n, m = o.grid
    f: Features = Counter(px_op=1, px_patch=n * m)
    if o.input_nchw:
        t0 = o.tensors[0]
        f["px_gather_byte"] = (sum(hi - lo for lo, hi in t0.rows)
                               * sum(hi - lo for lo, hi in t0.cols) * t0.channels)
    k = 0
    while k < len(o.layers):
        stream = o.layers[k].stream
        _layer_features(f, o, k, stream)
        k += 2 if stream else 1
    return f


def _layer_features(f: Features, o: pf.PatchOptions, k: int, stream: bool) -> None:
    """Add one layer's (or STREAM pair's) features to `f`."""
    out_t = o.tensors[k + (2 if stream else 1)]
    r = _region(out_t)
    f["px_cache_byte"] += r.cache_bytes
    f["px_cache_row"] += r.cache_rows
    if r.calls == 0:
        return
    f["px_layer"] += r.calls
    f["px_row"] += r.rows * r.col_bands
    if stream:
        _stream_features(f, o, k, r)
        return
    ly = o.layers[k]
    elems = r.pixels * out_t.channels
    taps = ly.kernel[0] * ly.kernel[1]
    if ly.kind == pf.CONV:
        cin = o.tensors[ly.input0].channels
        f["px_conv1x1_mac" if taps == 1 else "px_conv_mac"] += elems * taps * cin
        f["px_conv_out"] += elems
        f["px_conv_pixel"] += r.pixels
        f["px_conv_tap"] += elems * taps if taps > 1 else 0
    elif ly.kind == pf.DEPTHWISE:
        f[_dw_kind(ly)] += elems * taps
        f["px_dw_out"] += elems
        f["px_dw_pixel"] += r.pixels
    elif ly.kind in pf.POOL_KINDS:
        f["px_pool_tap"] += elems * taps
        f["px_pool_out"] += elems
    elif ly.kind == pf.PAD:
        f["px_pad_elem"] += elems
    elif ly.kind == pf.MUL:
        f["px_mul_elem"] += elems
    elif ly.kind == pf.LUT:
        f["px_lut_elem"] += elems
    elif ly.kind == pf.CONCAT:
        f["px_concat_elem"] += elems
    else:
        f["px_add_elem"] += elems


def _dw_kind(ly: pf.Layer) -> str:
    plain = ly.kernel == (3, 3) and ly.depth_multiplier == 1 and ly.dilation == (1, 1)
    return "px_dw3x3_mac" if plain else "px_dw_mac"


def _stream_features(f: Features, o: pf.PatchOptions, k: int, r: _Region) -> None:
    """A STREAM pair: the conv computes the whole range of the middle tensor in every
    patch that computes the pair's output (one channel at a time), the depthwise conv the
    pair's output region."""
    conv, dw = o.layers[k], o.layers[k + 1]
    mid, out_t = o.tensors[k + 1], o.tensors[k + 2]
    channels = out_t.channels
    mid_pixels = _stream_mid_pixels(mid, out_t)
    cin = o.tensors[conv.input0].channels
    taps = conv.kernel[0] * conv.kernel[1]
    f["px_stream_conv_mac"] += mid_pixels * channels * taps * cin
    f["px_stream_conv_tap"] += mid_pixels * channels * taps if taps > 1 else 0
    f["px_conv_out"] += mid_pixels * channels
    f["px_stream_dw_mac"] += r.pixels * channels * dw.kernel[0] * dw.kernel[1]
    f["px_dw_out"] += r.pixels * channels
    f["px_stream_channel"] += r.calls * channels


def _stream_mid_pixels(mid: pf.StageTensor, out_t: pf.StageTensor) -> int:
    """Pixels of the middle tensor computed over all patches that compute the output."""
    rows = sum(hi - lo for (lo, hi), (olo, ohi) in zip(mid.rows, out_t.rows, strict=True)
               if ohi > olo)
    cols = 0
    for j, (lo, hi) in enumerate(mid.cols):
        olo, ohi = out_t.cols[j]
        if ohi > olo and ohi > out_t.computed_cols(j)[0]:
            cols += hi - lo
    return rows * cols


# ------------------------------------------------------------------ plans

StageKey = tuple[int, int, tuple[int, int], frozenset[int], bool]  # first, last, grid, cache, live


class PlanCost:
    """Estimated instructions of patched versions of one model without building them:
    the original's features, less those of the operators each PATCH_EXEC replaces, plus
    the PATCH_EXEC's (from the schedule `convert` would write). Stage graphs and
    features are computed once per (first, last, grid, cache, live input).

    `plan_instructions` (the planner asks it for every candidate it judges) works on
    dense integer vectors, one entry per coefficient: each stage's change (its
    PATCH_EXEC's features less the replaced operators') is made once, and so is the
    original's plus the changes of a set of fused stages (StageKey live input: the
    candidates of one main stage and its added stages share them), so a candidate costs
    a vector sum per patched stage and one dot product. The totals are the same integers
    `plan_features` adds up (integers: in any order); the dot product takes them in
    coefficient order, which tests/test_cost_fast.py checks gives the same rounded
    estimate as `estimate(plan_features(...))` for every candidate judged."""

    def __init__(self, model: Model, coefficients: Mapping[str, float] | None = None):
        self.model = model
        self.coefficients = coefficients
        self.op_features = [op_features(model, op) for op in model.operators]
        self.features = total(self.op_features)
        self.instructions = estimate(self.features, coefficients)
        self._graphs: dict[tuple[int, int, bool], StageGraph] = {}
        self._stages: dict[StageKey, Features] = {}
        coef = COEFFICIENTS if coefficients is None else coefficients
        self._names = tuple(coef)
        self._coef = tuple(coef[name] for name in self._names)
        self._base = self._vector(self.features)
        # prefix sums of the operators' vectors: the replaced operators' in one subtraction
        self._prefix = [tuple(0 for _ in self._names)]
        for f in self.op_features:
            self._prefix.append(_add(self._prefix[-1], self._vector(f)))
        self._deltas: dict[StageKey, _Vector] = {}
        self._others: dict[tuple[StageKey, ...], _Vector] = {(): self._base}
        self._changes: dict[StageKey, float] = {}
        self.unrounded = self._dot(self._base)  # `instructions` before rounding

    def graph(self, first: int, last: int, live_input: bool = False) -> StageGraph:
        key = (first, last, live_input)
        if key not in self._graphs:
            self._graphs[key] = build_stage(self.model, first, last, live_input=live_input)
        return self._graphs[key]

    def stage_features(self, key: StageKey) -> Features:
        """Features of the PATCH_EXEC of operators first..last under `grid`."""
        if key not in self._stages:
            first, last, grid, cache, live = key
            graph = self.graph(first, last, live)
            # no cache: the schedule the planner made with cache=False (the same one)
            sched = make_schedule(graph, grid, cache or False)
            f = options_features(stage_options(graph, sched, graph.layers, 0))
            f["op"] += 1
            self._stages[key] = f
        return self._stages[key]

    def replaced_features(self, first: int, last: int) -> Features:
        return total(self.op_features[first:last + 1])

    def plan_features(self, stages: Iterable[StageKey]) -> Features:
        f = Counter(self.features)
        for key in stages:
            f.subtract(self.replaced_features(key[0], key[1]))
            f.update(self.stage_features(key))
        return f

    def plan_instructions(self, stages: Iterable[StageKey]) -> int:
        keys = tuple(stages)
        vec = self._fused(tuple(k for k in keys if k[4]))
        for key in keys:
            if not key[4]:
                vec = _add(vec, self._delta(key))
        return round(sum(map(operator.mul, self._coef, vec)))

    def stage_gain(self, key: StageKey) -> int:
        """Instructions the original operators cost minus what the PATCH_EXEC costs
        (negative: the PATCH_EXEC is slower)."""
        return (estimate(self.replaced_features(key[0], key[1]), self.coefficients)
                - estimate(self.stage_features(key), self.coefficients))

    def stage_change(self, key: StageKey) -> float:
        """The estimate's change by one PATCH_EXEC in place of its operators, unrounded:
        a plan's estimate is `unrounded` plus its stages' changes, rounded (the same up to
        float rounding, the estimate being linear in the features)."""
        if key not in self._changes:
            self._changes[key] = self._dot(self._delta(key))
        return self._changes[key]

    def knows(self, key: StageKey) -> bool:
        """Is `stage_change(key)` known or cheap (takes no new stage features)?"""
        return key in self._changes or key in self._stages

    def _dot(self, vec: _Vector) -> float:
        return sum(map(operator.mul, self._coef, vec))

    def _vector(self, f: Mapping[str, int]) -> _Vector:
        return tuple(f.get(name, 0) for name in self._names)

    def _delta(self, key: StageKey) -> _Vector:
        """The stage's PATCH_EXEC's features less the operators' it replaces."""
        if key not in self._deltas:
            first, last = key[0], key[1]
            gone = map(operator.sub, self._prefix[last + 1], self._prefix[first])
            self._deltas[key] = tuple(map(operator.sub, self._vector(self.stage_features(key)),
                                          gone))
        return self._deltas[key]

    def _fused(self, keys: tuple[StageKey, ...]) -> _Vector:
        """The original's features plus the changes of `keys` (memoized by the keys)."""
        if keys not in self._others:
            vec = self._base
            for key in keys:
                vec = _add(vec, self._delta(key))
            self._others[keys] = vec
        return self._others[keys]


_Vector = tuple[int, ...]


def _add(a: _Vector, b: _Vector) -> _Vector:
    return tuple(map(operator.add, a, b))

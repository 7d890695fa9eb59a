"""The C++ PATCH_EXEC core (csrc/custom_ops/patch_exec) through ctypes: bit-exact against the
numpy reference and the original model's values, the planner's scratch size, and the
validator against patch_format on malformed blobs. One case per test."""

from __future__ import annotations

import ctypes
import random
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from conftest import shared_file, shared_model_path
from native_fuzz import (
    random_constants,
    random_stage,
    random_stage_input,
    stage_reference,
    with_version2,
)
from native_support import (
    BAD_STATUS,
    CACHE_BAD_STATUS,
    CACHE_CASES,
    PatchedStage,
    array_model,
    bad_blob,
    base_blob,
    cache_bad_blob,
    cached_stage,
    core,
    extra_cache_cases,
    extra_cases,
    patched_stage,
    python_accepts,
    random_input,
    stream_stage,
    to_nchw,
    version2_op,
    zoo,
)
from test_patch_format import HARDENED

from tflm_patch import native, ref_ops, tflm_runner
from tflm_patch import patch_format as pf
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.native import NativeBuildError, Status, run_patch_exec_native
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.planner import PlanRequest, _grids, build_plan, patched_model_object, plan
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import make_schedule, stage_options
from tflm_patch.stage import StageGraph, build_stage, candidate_stages
from tflm_patch.validate import load_input, run_patched
from tflm_patch.zoo import ZOO_NAMES, ensure_model

# (model, first op, last op, grid): every zoo model; 1x1 and non-square grids; stages with
# residual ADD, pools, dilation, 5x5/7x7 depthwise, odd sizes with stride 2
ZOO_CASES = [
    ("mbv2_035_144", 0, 9, (5, 5)),  # residual ADD, stride 2
    ("mbv2_035_144", 0, 20, (2, 3)),
    ("mbv2_035_144", 0, 5, (1, 1)),
    ("mbv2_035_144", 0, 9, (1, 4)),
    ("mbv1_025_96", 0, 3, (8, 8)),
    ("mbv1_025_96", 0, 10, (3, 1)),
    ("mbv1_025_96", 0, 5, (1, 1)),
    ("pools_dilated", 0, 7, (2, 2)),  # max/avg pools, dilated convolution
    ("pools_dilated", 0, 1, (2, 7)),
    ("pools_dilated", 0, 7, (1, 1)),
    ("pools_dilated", 2, 7, (3, 2)),
    ("mcunet_dw57", 0, 5, (2, 3)),  # 5x5 and 7x7 depthwise
    ("mcunet_dw57", 0, 12, (3, 3)),
    ("mcunet_dw57", 0, 12, (7, 2)),
    ("odd_stride2", 0, 4, (3, 2)),  # odd sizes, stride 2 (asymmetric SAME padding)
    ("odd_stride2", 0, 1, (8, 8)),
    ("odd_stride2", 0, 4, (1, 1)),
]


def _check_stage(s: PatchedStage, seed: int, variant: str = "release") -> None:
    core(variant)
    x = random_input(s.model, seed)
    values = run_graph(s.model, [x])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    got = run_patch_exec_native(s.patched, s.op, stage_in, variant=variant)
    ref = run_patch_exec(s.patched, s.op, stage_in)
    assert got.dtype == np.int8 and got.shape == want.shape
    assert np.array_equal(ref, want), "the numpy reference differs from the original model"
    assert np.array_equal(got, want), f"max |diff| {np.abs(got.astype(int) - want).max()}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), ZOO_CASES)
def test_zoo_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int]) -> None:
    _check_stage(patched_stage(zoo(name), first, last, grid), seed=first + last + grid[0])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (5, 5)), ("pools_dilated", 0, 7, (2, 2)),
                          ("mcunet_dw57", 0, 12, (3, 3)), ("odd_stride2", 0, 4, (3, 2))])
def test_portable_inner_loops_bit_exact(name: str, first: int, last: int,
                                        grid: tuple[int, int]) -> None:
    """The build without SSE2 (what a Cortex-M compiles) gives the same bytes."""
    _check_stage(patched_stage(zoo(name), first, last, grid), seed=3, variant="portable")


@pytest.mark.slow
@pytest.mark.parametrize(("first", "last", "grid"), [(0, 7, (4, 4)), (0, 12, (3, 3)),
                                                     (0, 26, (2, 2)), (0, 3, (1, 1))])
def test_person_detect_stage_bit_exact(first: int, last: int, grid: tuple[int, int]) -> None:
    """Its first layer is a depthwise convolution with depth multiplier 8."""
    model = load_model(shared_model_path("person_detect"))
    assert model.operators[0].options.depthMultiplier == 8
    _check_stage(patched_stage(model, first, last, grid), seed=1)


# ------------------------------------------------------------------ synthetic stages


RANDOM_SEEDS = range(48)  # enough for every kind, >= 5 STREAM pairs, >= 5 NCHW inputs


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_stage_bit_exact(seed: int) -> None:
    """Random stages (every kind, depth multipliers 1-3, dilations, asymmetric padding,
    PAD, residual ADD, random grids, INPUT_NCHW, STREAM pairs) against ref_ops on whole
    tensors; odd seeds use extreme constants (any multiplier >= 0, shifts -31..30, any
    bias)."""
    lib = core()
    options = random_stage(random.Random(seed))
    blob = pf.encode(options)
    rng = np.random.default_rng(seed)
    x = random_stage_input(options, rng)
    consts = random_constants(options, rng, extreme=seed % 2 == 1)
    want = stage_reference(options, x, consts)
    assert want is not None
    assert np.array_equal(lib.run(blob, x, consts), want)


def test_random_stages_cover_depth_multipliers_and_every_kind() -> None:
    stages = [random_stage(random.Random(seed)) for seed in RANDOM_SEEDS]
    layers = [ly for o in stages for ly in o.layers]
    assert {ly.kind for ly in layers} == set(pf.KIND_NAMES)
    assert {ly.depth_multiplier for ly in layers if ly.kind == pf.DEPTHWISE} >= {1, 2, 3}
    assert any(ly.dilation != (1, 1) for ly in layers)
    assert sum(o.input_nchw for o in stages) >= 5 and sum(ly.stream for ly in layers) >= 5
    assert any(o.version == 1 for o in stages)


def test_a_window_reading_only_padding_gives_the_requantized_bias() -> None:
    """Padding 65535: every tap is outside the image (valid options: the halo rule has
    nothing to check); TFLM's arithmetic gives requant(bias) in every pixel."""
    lib = core()
    o = pf.decode(base_blob())
    ly = replace(o.layers[0], pad_top=0xFFFF, pad_left=0xFFFF)
    t0, t1 = o.tensors[0], o.tensors[1]
    one = pf.PatchOptions(
        (pf.StageTensor(t0.height, t0.width, t0.channels, ((0, t0.height),) * 2,
                        ((0, t0.width),)),
         pf.StageTensor(t1.height, t1.width, t1.channels, ((0, 7), (7, t1.height)),
                        ((0, t1.width),))),
        (ly,), (2, 1), 0, o.num_inputs)
    rng = np.random.default_rng(0)
    consts = random_constants(one, rng)
    x = rng.integers(-128, 128, (1, t0.height, t0.width, t0.channels), dtype=np.int8)
    got = lib.run(pf.encode(one), x, consts)
    bias = consts[ly.bias] if ly.bias != pf.NONE else np.zeros(t1.channels, np.int32)
    mult, shift = consts[ly.multipliers], consts[ly.shifts]
    assert bias is not None and mult is not None and shift is not None
    per_channel = ref_ops.multiply_by_quantized_multiplier(bias.astype(np.int64), mult, shift)
    want = np.clip(per_channel + ly.p[1], ly.p[2], ly.p[3]).astype(np.int8)
    assert np.array_equal(got, np.broadcast_to(want, got.shape))


# ------------------------------------------------------------------ real models, plans


@cache
def _planned(name: str) -> tuple[Model, Model, StageGraph]:
    """The original, the converted model of the planner's default plan, the stage."""
    model = load_model(shared_model_path(name))
    result = plan(model, PlanRequest())
    assert result.chosen is not None, result.message
    graph, _ = build_plan(model, result.chosen)
    return model, model_from_object(patched_model_object(model, result)), graph


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize(("image", "expect"), [("person.bmp", [-113, 113]),
                                               ("no_person.bmp", [57, -57])])
def test_person_detect_planned_model_outputs(image: str, expect: list[int]) -> None:
    """The planner's plan; PATCH_EXEC by the core, the rest on x86 TFLM."""
    core()
    original, patched, _ = _planned("person_detect")
    inputs = load_input(original, shared_file(image))
    got = run_patched(patched, inputs, patch_runner=run_patch_exec_native)
    assert got[0].reshape(-1).tolist() == expect
    want = tflm_runner.run_model(original.raw, inputs)
    assert np.array_equal(got[0].reshape(-1), np.asarray(want[0]).reshape(-1))


@pytest.mark.slow
@pytest.mark.tflm
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mobilenet_v2_planned_stage_equals_tflm(seed: int) -> None:
    """The planner's stage of mobilenet_v2_int8_224_nchw (explicit PADs folded) against
    the tensors x86 TFLM computes for the original model."""
    core()
    original, patched, graph = _planned("mobilenet_v2_int8_224_nchw")
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    x = random_input(original, seed)
    tensors = tflm_runner.run_all_tensors(original.raw, [x])
    stage_in = np.asarray(tensors[graph.input]).reshape(original.tensors[graph.input].shape)
    want = np.asarray(tensors[graph.output]).reshape(original.tensors[graph.output].shape)
    assert np.array_equal(run_patch_exec_native(patched, op, stage_in), want)


# ------------------------------------------------------------------ scratch size


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ZOO_NAMES, "person_detect", "mobilenet_v2_int8_224_nchw"])
def test_scratch_bytes_of_every_planned_blob(name: str) -> None:
    """One C function gives the scratch size: PatchExecScratchBytes equals
    patch_format.scratch_bytes and the schedule's figure for every (stage, grid) the
    planner evaluates."""
    lib = core()
    model = load_model(ensure_model(name) if name in ZOO_NAMES else shared_model_path(name))
    count = 0
    for first, last in candidate_stages(model):
        graph = build_stage(model, first, last)
        obj = replace_stage(model, graph, make_schedule(graph, (1, 1)))
        op = next(o for o in obj.subgraphs[0].operators if o.customOptions is not None)
        base = pf.decode(bytes(op.customOptions))
        for grid in _grids(graph, PlanRequest()):
            sched = make_schedule(graph, grid)
            blob = pf.encode(stage_options(graph, sched, base.layers, base.num_inputs))
            assert lib.scratch_bytes(blob) == pf.scratch_bytes(blob) == sched.scratch_bytes
            count += 1
    assert count > 100


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("case", sorted(BAD_STATUS))
def test_malformed_blob_is_rejected_by_both(case: str) -> None:
    """The malformed cases of test_patch_format: C status per case, Python's message."""
    lib = core()
    blob, message = bad_blob(case)
    got = lib.validate(blob)
    assert got.status == BAD_STATUS[case], got.message
    with pytest.raises(pf.OptionsError, match=message):
        pf.decode(blob)


@pytest.mark.parametrize("case", sorted(extra_cases()))
def test_more_malformed_blobs(case: str) -> None:
    lib = core()
    blob, status = extra_cases()[case]
    got = lib.validate(blob)
    assert got.ok == python_accepts(blob), got.message
    if status is not None:
        assert got.status == status, got.message


@pytest.mark.parametrize("case", sorted(HARDENED))
def test_oversized_blob_gets_the_same_status_and_message(case: str) -> None:
    """The size rules (scratch_bytes bound, 2^31-byte tensors and constants): the C
    validator's status and message equal patch_format's message, character for character."""
    mutate, status, message = HARDENED[case]
    blob = mutate(pf.decode(base_blob()), bytearray(base_blob()))
    got = core().validate(blob)
    assert (int(got.status), got.message) == (status, message)
    with pytest.raises(pf.OptionsError) as info:
        pf.decode(blob)
    assert str(info.value) == message


@pytest.mark.parametrize("field", ["bias", "multipliers", "shifts"])
def test_misaligned_int32_constant_is_refused(field: str) -> None:
    """PatchExecCheckConstants refuses an int32 constant whose address is not a multiple
    of 4 (the kernels load them as int32_t) before reading it."""
    lib = core()
    s = patched_stage(zoo("odd_stride2"), 0, 3, (3, 2))
    consts = native.model_constants(s.patched, s.op, lib)
    index = getattr(pf.decode(s.blob).layers[0], field)
    keep = []
    ptrs = (ctypes.c_void_p * len(consts))()
    for i, arr in enumerate(consts):
        if arr is None:
            continue
        shift = 2 if i == index else 0
        buf = native._Buffer(arr.nbytes + 4, bytes(4) + arr.tobytes())
        ptrs[i] = buf.ptr + 4 - shift if shift else buf.ptr + 4
        if shift:  # the data moved 2 bytes down, misaligned
            ctypes.memmove(ptrs[i], arr.tobytes(), arr.nbytes)
        keep.append(buf)
    blob = native._Buffer(len(s.blob), s.blob)
    got = lib.check_constants_ptrs(blob, ptrs)
    assert got.status == Status.CONSTANT
    assert got.message == f"input {index}: int32 data at an address that is not a multiple of 4"


def test_messages_name_the_field() -> None:
    lib = core()
    blob, _ = bad_blob("weights index")
    assert "layer 0 (CONV_2D): weights input 999" in lib.validate(blob).message
    blob, _ = bad_blob("halo too small")
    assert "halo too small" in lib.validate(blob).message


@pytest.mark.parametrize("source", ["odd_stride2 0..3 3x2", "mbv2_035_144 0..9 5x5",
                                    "synthetic"])
def test_every_truncation_is_rejected(source: str) -> None:
    lib = core()
    if source == "synthetic":
        blob = pf.encode(random_stage(random.Random(3)))
    elif source.startswith("odd"):
        blob = base_blob()
    else:
        blob = patched_stage(zoo("mbv2_035_144"), 0, 9, (5, 5)).blob
    assert lib.validate(blob).ok
    for n in range(len(blob)):
        got = lib.validate(blob[:n])
        assert got.status == Status.TRUNCATED, (n, got.message)
        assert not python_accepts(blob[:n])


def test_window_axis_equals_patch_format() -> None:
    """The O(log) window range (floor-sum for long tap runs) against patch_format's
    tap-by-tap loop, on random and extreme axes."""
    lib = core()
    rng = random.Random(7)
    for i in range(4000):
        big = i % 4 == 0
        n = rng.randrange(1, 300 if big else 40)
        k = rng.randrange(1, 400 if big else 9)
        s = rng.randrange(1, 70 if big else 5)
        d = rng.randrange(1, 70 if big else 4)
        p = rng.randrange(0, k * d + 2)
        o0 = rng.randrange(0, 30)
        o1 = o0 + rng.randrange(0, 30)
        ly = pf.Layer(pf.CONV, 0, kernel=(k, 1), stride=(s, 1), dilation=(d, 1), pad_top=p)
        want = pf.needed_range(ly, 0, (o0, o1), n)
        assert lib.window_axis(o0, o1, n, k, s, d, p) == want, (o0, o1, n, k, s, d, p)


def test_constant_spec_and_checks() -> None:
    lib = core()
    s = patched_stage(zoo("odd_stride2"), 0, 3, (3, 2))
    consts = native.model_constants(s.patched, s.op, lib)
    specs = lib.constant_specs(s.blob)
    for index in range(1, len(s.op.inputs)):
        spec, arr = specs[index], consts[index]
        assert spec is not None and arr is not None
        assert (spec.dtype, spec.elements) == (str(arr.dtype), arr.size)
    x = random_input(s.model, 0)
    stage_x = run_graph(s.model, [x])[s.graph.input]
    bad = list(consts)
    layer0 = pf.decode(s.blob).layers[0]
    shifts = np.array(bad[layer0.shifts])
    shifts[0] = 31
    bad[layer0.shifts] = shifts
    with pytest.raises(native.NativeRunError, match="shift 31 out of range"):
        lib.run(s.blob, stage_x, bad)
    with pytest.raises(native.NativeRunError, match="options need int8"):
        lib.run(s.blob, stage_x, [None] * len(consts))


def test_build_errors_are_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    core()
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(native.CompilerNotFound, match="not an executable"):
        native.build("release")
    monkeypatch.setenv("CXX", f"{native.compiler()[0] if False else 'c++'} -include "
                       "/nonexistent/missing.h")
    with pytest.raises(NativeBuildError, match=r"missing\.h"):
        native.build("release")
    assert native.unavailable_reason("release") is not None


@pytest.mark.slow
def test_build_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    core()
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    first = native.build("release")
    assert native.build("release") == first
    assert native.build("portable") != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ version 2

# (model, first op, last op, grid, INPUT_NCHW, STREAM): stride-1 and stride-2 pairs,
# 3x3/5x5/7x7 depthwise, residual ADD between pairs, pools (no pair), 1x1 to 8x8 grids
V2_ZOO_CASES = [
    ("odd_stride2", 0, 4, (3, 2), True, True),
    ("odd_stride2", 0, 4, (1, 1), True, True),
    ("odd_stride2", 0, 1, (8, 8), True, True),
    ("mbv2_035_144", 0, 9, (5, 5), True, True),
    ("mbv2_035_144", 0, 9, (2, 3), False, True),
    ("mbv2_035_144", 0, 20, (2, 3), True, False),
    ("mbv1_025_96", 0, 10, (3, 1), False, True),
    ("mbv1_025_96", 0, 5, (1, 1), True, True),
    ("mcunet_dw57", 0, 12, (3, 3), True, True),
    ("mcunet_dw57", 0, 5, (2, 3), False, True),
    ("pools_dilated", 0, 7, (2, 2), True, False),
]


def _check_version2(name: str, first: int, last: int, grid: tuple[int, int], nchw: bool,
                    stream: bool, variant: str = "release") -> None:
    """The core equals patch_ref and the original model's values on a real stage with
    INPUT_NCHW and/or STREAM (the stage input transposed to NCHW for INPUT_NCHW)."""
    core(variant)
    s = patched_stage(zoo(name), first, last, grid)
    op = version2_op(s, nchw=nchw, stream=stream)
    values = run_graph(s.model, [random_input(s.model, first + last + grid[1])])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    x = to_nchw(stage_in) if nchw else stage_in
    ref = run_patch_exec(s.patched, op, x)
    got = run_patch_exec_native(s.patched, op, x, variant=variant)
    assert np.array_equal(ref, want), "the numpy reference differs from the original model"
    assert np.array_equal(got, want), f"max |diff| {np.abs(got.astype(int) - want).max()}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid", "nchw", "stream"), V2_ZOO_CASES)
def test_version2_zoo_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int],
                                      nchw: bool, stream: bool) -> None:
    _check_version2(name, first, last, grid, nchw, stream)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (5, 5)), ("mcunet_dw57", 0, 12, (3, 3)),
                          ("odd_stride2", 0, 4, (3, 2))])
def test_version2_portable_inner_loops_bit_exact(name: str, first: int, last: int,
                                                 grid: tuple[int, int]) -> None:
    _check_version2(name, first, last, grid, nchw=True, stream=True, variant="portable")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (5, 5)), ("odd_stride2", 0, 4, (3, 2))])
def test_version2_stream_without_bias_equals_patch_ref(name: str, first: int, last: int,
                                                       grid: tuple[int, int]) -> None:
    """No conv reads a bias (TFLM's no-bias path): the core equals patch_ref."""
    lib = core()
    s = patched_stage(zoo(name), first, last, grid)
    op = version2_op(s, nchw=True, stream=True, bias=False)
    x = to_nchw(run_graph(s.model, [random_input(s.model, 4)])[s.graph.input])
    specs = lib.constant_specs(op.custom_options or b"")
    biases = {ly.bias for ly in pf.decode(s.blob).layers if ly.kind in pf.CONV_KINDS}
    assert biases and all(specs[i].dtype is None for i in biases)  # no layer reads them
    got = run_patch_exec_native(s.patched, op, x)
    assert np.array_equal(got, run_patch_exec(s.patched, op, x))


STREAM_CASES = [(stride, bias, same, grid) for stride in (1, 2) for bias in (True, False)
                for same in (True, False) for grid in ((1, 1), (2, 3), (4, 4))]


@pytest.mark.slow
@pytest.mark.parametrize(("stride", "bias", "same", "grid"), STREAM_CASES)
def test_stream_pair_bit_exact(stride: int, bias: bool, same: bool,
                               grid: tuple[int, int]) -> None:
    """A synthetic STREAM pair (conv -> 3x3 depthwise of 18 channels) with and without
    INPUT_NCHW: the core equals patch_ref, ref_ops on whole tensors, and the core running
    the same stage as version 1; extreme constants on odd grids."""
    lib = core()
    for nchw in (False, True):
        o = stream_stage(stride=stride, bias=bias, same=same, grid=grid, nchw=nchw,
                         tail=grid[0] % 2 == 0, seed=stride + 2 * grid[1])
        assert o.layers[0].stream and o.input_nchw == nchw
        rng = np.random.default_rng(stride * 10 + grid[0])
        x = random_stage_input(o, rng)
        consts = random_constants(o, rng, extreme=grid[1] % 2 == 1)
        got = lib.run(pf.encode(o), x, consts)
        want = stage_reference(o, x, consts)
        model, op = array_model(o, consts)
        assert want is not None and np.array_equal(got, want)
        assert np.array_equal(run_patch_exec(model, op, x), got)
        v1 = with_version2(o, nchw=False, stream=False)
        nhwc = x.transpose(0, 2, 3, 1) if nchw else x
        assert np.array_equal(lib.run(pf.encode(v1), np.ascontiguousarray(nhwc), consts), got)


def test_input_nchw_shape() -> None:
    """PatchExecInputNchw, and the ctypes run checking input 0 against it."""
    lib = core()
    v1, v2 = base_blob(1), base_blob(2)
    assert (lib.input_nchw(v1), lib.input_nchw(v2)) == (False, True)
    _, h, w, c = lib.io_shape(v2, 0)
    assert lib.input_shape(v1) == (1, h, w, c) and lib.input_shape(v2) == (1, c, h, w)
    o = pf.decode(v2)
    rng = np.random.default_rng(0)
    consts = random_constants(o, rng)
    nhwc = rng.integers(-128, 128, (1, h, w, c), dtype=np.int8)
    with pytest.raises(native.NativeRunError, match=rf"the options say int8 \(1, {c}, {h}, {w}\)"):
        lib.run(v2, nhwc, consts)
    assert lib.run(v2, to_nchw(nhwc), consts).shape == lib.io_shape(v2, 1)


@pytest.mark.parametrize(("name", "last", "grid"), [("zoo:nchw_input", 4, (3, 2)),
                                                    ("zoo:nchw_input", 4, (1, 1)),
                                                    ("mobilenet_v2_int8_224_nchw", 8, (4, 4))])
def test_folded_transpose_stage_bit_exact(name: str, last: int, grid: tuple[int, int]) -> None:
    """A stage starting at the model's NCHW -> NHWC TRANSPOSE, as the converter writes it
    (INPUT_NCHW, STREAM pairs): the core reads the NCHW tensor and equals the model."""
    model = zoo(name[4:]) if name.startswith("zoo:") else load_model(shared_model_path(name))
    assert model.operators[0].name == "TRANSPOSE"
    s = patched_stage(model, 0, last, grid)
    o = pf.decode(s.blob)
    assert o.input_nchw and any(ly.stream for ly in o.layers)
    values = run_graph(model, [random_input(model, 2)])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    assert stage_in.shape == core().input_shape(s.blob)
    assert np.array_equal(run_patch_exec_native(s.patched, s.op, stage_in), want)


# ------------------------------------------------------------------ halo caches


def _check_cached(name: str, first: int, last: int, grid: tuple[int, int],
                  variant: str = "release") -> None:
    """The core equals patch_ref and the original model on a stage with CACHE_COLS."""
    core(variant)
    s = cached_stage(name, first, last, grid)
    values = run_graph(s.model, [random_input(s.model, first + last)])
    x, want = values[s.graph.input], values[s.graph.output]  # NCHW when TRANSPOSE is folded
    ref = run_patch_exec(s.patched, s.op, x)
    got = run_patch_exec_native(s.patched, s.op, x, variant=variant)
    assert np.array_equal(ref, want), "the numpy reference differs from the original model"
    assert np.array_equal(got, want), f"max |diff| {np.abs(got.astype(int) - want).max()}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), CACHE_CASES)
def test_cached_stage_bit_exact(name: str, first: int, last: int,
                                grid: tuple[int, int]) -> None:
    _check_cached(name, first, last, grid)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), CACHE_CASES)
def test_cached_stage_portable_bit_exact(name: str, first: int, last: int,
                                         grid: tuple[int, int]) -> None:
    _check_cached(name, first, last, grid, variant="portable")


def test_random_cached_stages_bit_exact() -> None:
    """Synthetic stages with CACHE_COLS (random tensors, PAD, ADD, pools, STREAM
    elsewhere): the core equals ref_ops on whole tensors, patch_ref where it runs, and
    the portable build."""
    lib, portable = core(), core("portable")
    count = 0
    for seed in range(600):
        o = random_stage(random.Random(seed))
        if not any(t.cached for t in o.tensors):
            continue
        rng = np.random.default_rng(seed)
        x = random_stage_input(o, rng)
        consts = random_constants(o, rng, extreme=seed % 2 == 1)
        blob = pf.encode(o)
        got = lib.run(blob, x, consts)
        want = stage_reference(o, x, consts)
        assert want is not None and np.array_equal(got, want), seed
        assert np.array_equal(portable.run(blob, x, consts), got), seed
        count += 1
    assert count >= 20


@pytest.mark.parametrize("case", sorted(CACHE_BAD_STATUS))
def test_malformed_cache_is_rejected_by_both(case: str) -> None:
    """test_halo_cache's malformed cases: the C status per case, the same message."""
    lib = core()
    blob, message = cache_bad_blob(case)
    got = lib.validate(blob)
    assert got.status == CACHE_BAD_STATUS[case], got.message
    with pytest.raises(pf.OptionsError, match=message) as err:
        pf.decode(blob)
    assert got.message == str(err.value)


@pytest.mark.parametrize("case", sorted(extra_cache_cases()))
def test_more_malformed_cache_blobs(case: str) -> None:
    lib = core()
    blob, status, message = extra_cache_cases()[case]
    got = lib.validate(blob)
    assert got.status == status, got.message
    with pytest.raises(pf.OptionsError, match=message) as err:
        pf.decode(blob)
    assert got.message == str(err.value)


def test_cached_blob_truncations_are_rejected() -> None:
    lib = core()
    blob = cached_stage("mbv2_035_144", 0, 9, (3, 3)).blob
    assert lib.validate(blob).ok
    for n in range(len(blob)):
        assert lib.validate(blob[:n]).status == Status.TRUNCATED, n


# ------------------------------------------------------------------ the Arm DSP path
# The "dsp" build runs the Cortex-M4's DSP-extension inner loops (patch_exec_dsp.h) with
# the instructions emulated in portable C++: the same bytes as the portable build.


@pytest.mark.parametrize("seed", range(150))
def test_dsp_random_stage_equals_portable(seed: int) -> None:
    """The fuzzer's random stages (every kind, depth multipliers, dilations, STREAM
    pairs, caches; odd seeds with extreme constants): dsp == portable == ref_ops."""
    dsp, portable = core("dsp"), core("portable")
    options = random_stage(random.Random(seed))
    blob = pf.encode(options)
    rng = np.random.default_rng(seed)
    x = random_stage_input(options, rng)
    consts = random_constants(options, rng, extreme=seed % 2 == 1)
    got = dsp.run(blob, x, consts)
    assert np.array_equal(got, portable.run(blob, x, consts))
    want = stage_reference(options, x, consts)
    assert want is not None and np.array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), ZOO_CASES)
def test_dsp_zoo_stage_bit_exact(name: str, first: int, last: int,
                                 grid: tuple[int, int]) -> None:
    _check_stage(patched_stage(zoo(name), first, last, grid), seed=first + last + grid[0],
                 variant="dsp")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid", "nchw", "stream"), V2_ZOO_CASES)
def test_dsp_version2_zoo_stage_bit_exact(name: str, first: int, last: int,
                                          grid: tuple[int, int], nchw: bool,
                                          stream: bool) -> None:
    _check_version2(name, first, last, grid, nchw, stream, variant="dsp")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), CACHE_CASES)
def test_dsp_cached_stage_bit_exact(name: str, first: int, last: int,
                                    grid: tuple[int, int]) -> None:
    _check_cached(name, first, last, grid, variant="dsp")


@pytest.mark.slow
@pytest.mark.parametrize(("first", "last", "grid"), [(0, 7, (4, 4)), (0, 26, (2, 2)),
                                                     (0, 3, (1, 1))])
def test_dsp_person_detect_stage_bit_exact(first: int, last: int,
                                           grid: tuple[int, int]) -> None:
    """Depth multiplier 8 (four channels per input channel in the DSP kernel)."""
    model = load_model(shared_model_path("person_detect"))
    _check_stage(patched_stage(model, first, last, grid), seed=1, variant="dsp")

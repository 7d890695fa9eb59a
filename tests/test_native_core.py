"""The C++ PATCH_EXEC core (custom_ops/patch_exec) through ctypes: bit-exact against the
numpy reference and the original model's values, the planner's scratch size, and the
validator against patch_format on malformed blobs. One case per test."""

from __future__ import annotations

import random
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from conftest import shared_file, shared_model_path
from native_support import (
    BAD_STATUS,
    PatchedStage,
    bad_blob,
    base_blob,
    core,
    extra_cases,
    patched_stage,
    python_accepts,
    random_input,
    zoo,
)

from tflm_patch import native, ref_ops, tflm_runner
from tflm_patch import patch_format as pf
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.native import NativeBuildError, Status, run_patch_exec_native
from tflm_patch.native_fuzz import random_constants, random_stage, stage_reference
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


@pytest.mark.parametrize(("name", "first", "last", "grid"), ZOO_CASES)
def test_zoo_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int]) -> None:
    _check_stage(patched_stage(zoo(name), first, last, grid), seed=first + last + grid[0])


@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (5, 5)), ("pools_dilated", 0, 7, (2, 2)),
                          ("mcunet_dw57", 0, 12, (3, 3)), ("odd_stride2", 0, 4, (3, 2))])
def test_portable_inner_loops_bit_exact(name: str, first: int, last: int,
                                        grid: tuple[int, int]) -> None:
    """The build without SSE2 (what a Cortex-M compiles) gives the same bytes."""
    _check_stage(patched_stage(zoo(name), first, last, grid), seed=3, variant="portable")


@pytest.mark.parametrize(("first", "last", "grid"), [(0, 7, (4, 4)), (0, 12, (3, 3)),
                                                     (0, 26, (2, 2)), (0, 3, (1, 1))])
def test_person_detect_stage_bit_exact(first: int, last: int, grid: tuple[int, int]) -> None:
    """Its first layer is a depthwise convolution with depth multiplier 8."""
    model = load_model(shared_model_path("person_detect"))
    assert model.operators[0].options.depthMultiplier == 8
    _check_stage(patched_stage(model, first, last, grid), seed=1)


# ------------------------------------------------------------------ synthetic stages


@pytest.mark.parametrize("seed", range(40))
def test_random_stage_bit_exact(seed: int) -> None:
    """Random stages (every kind, depth multipliers 1-3, dilations, asymmetric padding,
    PAD, residual ADD, random grids) against ref_ops on whole tensors; odd seeds use
    extreme constants (any multiplier >= 0, shifts -31..30, any bias)."""
    lib = core()
    options = random_stage(random.Random(seed))
    blob = pf.encode(options)
    rng = np.random.default_rng(seed)
    t0 = options.tensors[0]
    x = rng.integers(-128, 128, (1, t0.height, t0.width, t0.channels), dtype=np.int8)
    consts = random_constants(options, rng, extreme=seed % 2 == 1)
    want = stage_reference(options, x, consts)
    assert want is not None
    assert np.array_equal(lib.run(blob, x, consts), want)


def test_random_stages_cover_depth_multipliers_and_every_kind() -> None:
    stages = [random_stage(random.Random(seed)) for seed in range(40)]
    layers = [ly for o in stages for ly in o.layers]
    assert {ly.kind for ly in layers} == set(pf.KIND_NAMES)
    assert {ly.depth_multiplier for ly in layers if ly.kind == pf.DEPTHWISE} >= {1, 2, 3}
    assert any(ly.dilation != (1, 1) for ly in layers)


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


def test_build_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    core()
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    first = native.build("release")
    assert native.build("release") == first
    assert native.build("portable") != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]

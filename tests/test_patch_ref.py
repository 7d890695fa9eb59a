"""The numpy PATCH_EXEC reference, patch by patch, against the original operators:
exact int8 equality on seeded inputs, one (model, stage, grid) per test."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from functools import cache

import native_fuzz
import numpy as np
import pytest
from conftest import shared_model_path
from native_support import array_model

from tflm_patch import patch_format as pf
from tflm_patch.geometry import tensor_rects
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.patch_ref import HaloError, run_layer, run_patch_exec
from tflm_patch.receptive_field import Rect
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import axis_ranges, bands, make_schedule
from tflm_patch.stage import build_stage, op_support, stage_check
from tflm_patch.zoo import ensure_model


@cache
def _zoo(name: str) -> Model:
    return load_model(ensure_model(name))


def _check(model: Model, first: int, last: int, grid: tuple[int, int], seed: int,
           stream: bool = True) -> None:
    graph = build_stage(model, first, last, stream=stream)
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, grid)))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    x = np.random.default_rng(seed).integers(-128, 128, model.tensors[model.inputs[0]].shape,
                                             dtype=np.int8)
    values = run_graph(model, [x])
    got = run_patch_exec(patched, op, values[graph.input])
    want = values[graph.output]
    assert got.dtype == np.int8 and got.shape == want.shape
    assert np.array_equal(got, want), f"max |diff| {np.abs(got.astype(int) - want).max()}"


ZOO_CASES = [
    ("mbv2_035_144", 0, 9, (5, 5)),  # residual ADD inside, stride 2
    ("mbv2_035_144", 0, 20, (2, 3)),
    ("mbv1_025_96", 0, 3, (8, 8)),
    ("mbv1_025_96", 0, 10, (3, 1)),
    ("pools_dilated", 0, 7, (2, 2)),  # max/avg pools, dilated convolutions
    ("pools_dilated", 0, 1, (2, 7)),
    ("mcunet_dw57", 0, 5, (2, 3)),  # 5x5 and 7x7 depthwise
    ("mcunet_dw57", 0, 12, (3, 3)),
    ("odd_stride2", 0, 4, (3, 2)),  # odd sizes with stride 2 (asymmetric SAME padding)
    ("odd_stride2", 0, 1, (8, 8)),
    ("nchw_input", 0, 3, (3, 2)),  # folded TRANSPOSE (INPUT_NCHW), a STREAM pair
    ("nchw_input", 0, 10, (2, 2)),  # folded TRANSPOSE, several STREAM pairs, ADD
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), ZOO_CASES)
def test_zoo_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int]) -> None:
    _check(_zoo(name), first, last, grid, seed=first + last)


@pytest.mark.slow
@pytest.mark.parametrize(("first", "last", "grid"), [(0, 7, (4, 4)), (0, 12, (3, 3)),
                                                     (0, 26, (2, 2))])
def test_person_detect_stage_bit_exact(first: int, last: int, grid: tuple[int, int]) -> None:
    _check(load_model(shared_model_path("person_detect")), first, last, grid, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize(("last", "grid"), [(18, (3, 4)), (30, (2, 3))])
def test_mobilenet_v2_stage_with_explicit_pads_bit_exact(last: int, grid: tuple[int, int]
                                                         ) -> None:
    _check(load_model(shared_model_path("mobilenet_v2_int8_224_nchw")), 1, last, grid, seed=2)


@pytest.mark.slow
def test_mobilenet_v2_stage_with_folded_transpose_bit_exact() -> None:
    _check(load_model(shared_model_path("mobilenet_v2_int8_224_nchw")), 0, 18, (3, 4), seed=3)


@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (3, 3)), ("nchw_input", 0, 10, (2, 2))])
def test_stage_without_stream_bit_exact(name: str, first: int, last: int,
                                        grid: tuple[int, int]) -> None:
    _check(_zoo(name), first, last, grid, seed=4, stream=False)


@pytest.mark.parametrize(("name", "first", "last", "grid"),
                         [("mbv2_035_144", 0, 9, (3, 3)), ("nchw_input", 0, 10, (2, 2)),
                          ("mcunet_dw57", 0, 12, (3, 3))])
def test_stream_shrinks_scratch_at_equal_macs(name: str, first: int, last: int,
                                              grid: tuple[int, int]) -> None:
    model = _zoo(name)
    streamed = build_stage(model, first, last)
    plain = build_stage(model, first, last, stream=False)
    flagged = [k for k, ly in enumerate(streamed.layers) if ly.stream]
    assert flagged and not any(ly.stream for ly in plain.layers)
    for k in flagged:  # an expansion conv feeding its depthwise
        assert streamed.layers[k].kind == pf.CONV
        assert streamed.layers[k + 1].kind == pf.DEPTHWISE
        assert streamed.layers[k + 1].input0 == k + 1
    a, b = make_schedule(streamed, grid), make_schedule(plain, grid)
    assert a.macs == b.macs
    assert a.scratch_bytes < b.scratch_bytes
    for k in flagged:  # the streamed tensor's slot holds one channel
        assert a.slots[k + 1][1] * streamed.shapes[k + 1][2] == b.slots[k + 1][1]


def test_leading_transpose_is_folded() -> None:
    model = _zoo("nchw_input")
    assert model.operators[0].name == "TRANSPOSE"
    graph = build_stage(model, 0, 3)
    assert graph.input_nchw and graph.input == model.inputs[0]
    assert graph.shapes[0] == (80, 80, 3)  # described NHWC, read from NCHW
    assert len(graph.layers) == 3  # the TRANSPOSE has no layer
    sched = make_schedule(graph, (2, 2))
    rows = max(hi - lo for lo, hi in sched.rows[0])
    cols = max(hi - lo for lo, hi in sched.cols[0])
    assert sched.slots[0][1] == rows * cols * 3  # tensor 0 gets a slot for the gather
    after = build_stage(model, 1, 3)
    assert not after.input_nchw and after.input == model.operators[0].outputs[0]


def test_pads_before_convolutions_are_folded() -> None:
    model = load_model(shared_model_path("mobilenet_v2_int8_224_nchw"))
    folded = build_stage(model, 1, 18)
    plain = build_stage(model, 1, 18, fold_pads=False)
    n_pads = sum(model.operators[i].name == "PAD" for i in range(1, 19))
    assert n_pads > 0
    assert len(plain.layers) == 18 and len(folded.layers) == 18 - n_pads
    assert all(ly.kind != pf.PAD for ly in folded.layers)


@pytest.mark.parametrize("name", ["mbv2_035_144", "pools_dilated", "odd_stride2"])
def test_schedule_ranges_equal_receptive_field_module(name: str) -> None:
    """Two implementations of box-mode halos agree: schedule (from the PATCH_EXEC
    layers) and receptive_field.required_rects (from the TFLite operators)."""
    model = _zoo(name)
    last = {"mbv2_035_144": 20, "pools_dilated": 7, "odd_stride2": 4}[name]
    graph = build_stage(model, 0, last, fold_pads=False)
    h, w, _ = graph.shapes[-1]
    rows = axis_ranges(graph, 0, 3)
    cols = axis_ranges(graph, 1, 2)
    for i, (r0, r1) in enumerate(bands(h, 3)):
        for j, (c0, c1) in enumerate(bands(w, 2)):
            rects = tensor_rects(model, list(graph.ops), graph.output, Rect(r0, r1, c0, c1))
            for k, t in enumerate(graph.tensors):
                assert (rects[t].y0, rects[t].y1) == rows[k][i]
                assert (rects[t].x0, rects[t].x1) == cols[k][j]


def test_a_read_outside_the_kept_range_raises() -> None:
    """The reference refuses to read what the options do not keep (never pads silently)."""
    model = _zoo("odd_stride2")
    graph = build_stage(model, 0, 1)
    sched = make_schedule(graph, (2, 2))
    layers = graph.layers
    tensors = [pf.StageTensor(h, w, c, sched.rows[k], sched.cols[k], *sched.slots[k])
               for k, (h, w, c) in enumerate(graph.shapes)]
    o = pf.PatchOptions(tuple(tensors), layers, (2, 2), sched.scratch_bytes, 1)
    from tflm_patch.patch_ref import _View

    src = tensors[0]
    x = np.zeros((src.height, src.width, src.channels), np.int8)
    r = sched.rows[0][1]
    short = _View(x[r[0] + 1:r[1]], r[0] + 1, 0)  # one row less than the halo needs
    with pytest.raises(HaloError, match="holds rows"):
        run_layer(replace(layers[0], weights=1, bias=pf.NONE, multipliers=2, shifts=3), 0, o,
                  {0: short}, sched.rows[1][1], sched.cols[1][0],
                  (np.zeros((8, 3, 3, 3), np.int8), None, np.ones(8, np.int32),
                   np.zeros(8, np.int32)))


def test_transpose_alone_is_no_stage() -> None:
    ok, reason = stage_check(_zoo("nchw_input"), 0, 0)
    assert not ok and "besides the folded TRANSPOSE" in reason


def test_other_permutation_is_not_folded() -> None:
    model = _zoo("nchw_input")
    obj = copy.deepcopy(model.obj)
    perm = model.operators[0].inputs[1]
    buf = obj.buffers[obj.subgraphs[0].tensors[perm].buffer]
    buf.data = np.frombuffer(np.array([0, 3, 1, 2], dtype=np.int32).tobytes(), dtype=np.uint8)
    other = model_from_object(obj)
    ok, reason = op_support(other, other.operators[0])
    assert not ok and "NCHW -> NHWC permutation" in reason and "[0, 3, 1, 2]" in reason
    ok, reason = stage_check(other, 0, 3)
    assert not ok and "NCHW -> NHWC" in reason


@pytest.mark.parametrize("seed", range(40))
def test_equals_whole_tensor_reference_on_random_stage(seed: int) -> None:
    """Seeded random stages (the fuzzer's generator: versions 1 and 2, caches, windows
    that at some borders read only padding) against the whole-tensor reference."""
    o = native_fuzz.random_stage(random.Random(seed))
    if not native_fuzz.runnable(o):
        pytest.skip(f"seed {seed}: the generator made a stage TFLM itself cannot run")
    rng = np.random.default_rng(seed)
    consts = native_fuzz.random_constants(o, rng)
    model, op = array_model(o, consts)
    x = native_fuzz.random_stage_input(o, rng)
    side = {i: consts[i] for i, (dtype, _) in pf.constant_specs(o).items()
            if dtype == pf.RUNTIME_INT8}  # MUL scales and ADD addends: runtime inputs
    assert np.array_equal(run_patch_exec(model, op, x, side),  # type: ignore[arg-type]
                          native_fuzz.stage_reference(o, x, consts))

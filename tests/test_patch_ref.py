"""The numpy PATCH_EXEC reference, patch by patch, against the original operators:
exact int8 equality on seeded inputs, one (model, stage, grid) per test."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from conftest import shared_model_path

from tflm_patch import patch_format as pf
from tflm_patch.geometry import tensor_rects
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.patch_ref import HaloError, run_layer, run_patch_exec
from tflm_patch.receptive_field import Rect
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import axis_ranges, bands, make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ensure_model


@cache
def _zoo(name: str) -> Model:
    return load_model(ensure_model(name))


def _check(model: Model, first: int, last: int, grid: tuple[int, int], seed: int) -> None:
    graph = build_stage(model, first, last)
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
]


@pytest.mark.parametrize(("name", "first", "last", "grid"), ZOO_CASES)
def test_zoo_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int]) -> None:
    _check(_zoo(name), first, last, grid, seed=first + last)


@pytest.mark.parametrize(("first", "last", "grid"), [(0, 7, (4, 4)), (0, 12, (3, 3)),
                                                     (0, 26, (2, 2))])
def test_person_detect_stage_bit_exact(first: int, last: int, grid: tuple[int, int]) -> None:
    _check(load_model(shared_model_path("person_detect")), first, last, grid, seed=1)


@pytest.mark.parametrize(("last", "grid"), [(18, (3, 4)), (30, (2, 3))])
def test_mobilenet_v2_stage_with_explicit_pads_bit_exact(last: int, grid: tuple[int, int]
                                                         ) -> None:
    _check(load_model(shared_model_path("mobilenet_v2_int8_224_nchw")), 1, last, grid, seed=2)


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

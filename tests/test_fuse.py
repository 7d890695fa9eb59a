"""Fused tail stages (1x1-grid PATCH_EXECs): which operators become units, and each one
run by the numpy reference equals the original operators exactly."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import shared_model_path

from tflm_patch.evaluate import patched_op_index
from tflm_patch.fuse import fusion_units
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage, replace_stages
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage, stage_check
from tflm_patch.zoo import ZOO_NAMES, ensure_model

SHARED = ("person_detect", "mobilenet_v2_int8_224_nchw")


@cache
def _model(name: str) -> Model:
    return load_model(shared_model_path(name) if name in SHARED else ensure_model(name))


def test_mobilenet_v2_units_fold_every_pad() -> None:
    model = _model("mobilenet_v2_int8_224_nchw")
    units = fusion_units(model, exclude=[(1, 18)])
    ops = model.operators
    convs = [op.index for op in ops[19:] if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert [b for _, b in units] == convs  # every convolution after the stage
    pads = [op.index for op in ops[19:] if op.name == "PAD"]
    assert [a for a, b in units if a < b] == pads  # each PAD folded into its conv
    assert all(ops[a].name == "PAD" and ops[b].name == "DEPTHWISE_CONV_2D"
               for a, b in units if a < b)
    assert not any(1 <= a <= 18 or 1 <= b <= 18 for a, b in units)


def test_unit_inside_residual_block_needs_live_input() -> None:
    model = _model("mobilenet_v2_int8_224_nchw")
    # operator 19 (expand conv) reads the block input that the ADD at 23 reads again
    ok, reason = stage_check(model, 19, 19)
    assert not ok and "read again" in reason
    assert stage_check(model, 19, 19, live_input=True) == (True, "")


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ZOO_NAMES, *SHARED])
def test_every_fused_unit_is_exact(name: str) -> None:
    model = _model(name)
    units = fusion_units(model)
    assert units
    graphs = [build_stage(model, a, b, live_input=True) for a, b in units]
    patched = model_from_object(replace_stages(model, [(g, make_schedule(g, (1, 1)))
                                                       for g in graphs]))
    pes = [op for op in patched.operators if op.name == CUSTOM_CODE]
    assert len(pes) == len(units)
    x = np.random.default_rng(3).integers(-128, 128, model.tensors[model.inputs[0]].shape,
                                          dtype=np.int8)
    values = run_graph(model, [x])
    for g, op in zip(graphs, pes, strict=True):
        got = run_patch_exec(patched, op, values[g.input])
        want = values[g.output]
        assert np.array_equal(got, want), f"unit {g.first}..{g.last}"


def test_overlapping_stages_are_refused() -> None:
    model = _model("mbv1_025_96")
    a, b = build_stage(model, 0, 1), build_stage(model, 1, 1, live_input=True)
    with pytest.raises(ValueError, match="overlap"):
        replace_stages(model, [(a, make_schedule(a, (1, 1))), (b, make_schedule(b, (1, 1)))])


def test_replace_stage_is_replace_stages_of_one() -> None:
    model = _model("mbv1_025_96")
    g = build_stage(model, 0, 3)
    s = make_schedule(g, (2, 2))
    one = model_from_object(replace_stage(model, g, s))
    many = model_from_object(replace_stages(model, [(g, s)]))
    assert one.raw == many.raw


def test_patched_op_index() -> None:
    assert patched_op_index(8, [(1, 3), (5, 5), (6, 7)]) == [0, 1, 1, 1, 2, 3, 4, 4]
    assert patched_op_index(3, []) == [0, 1, 2]

"""Packed constants (PATCH_EXEC options version 3): the layout, the rules (Python and C
give the same message), the converter's shared constant tensors, and what they save in
TFLM's arena (one TfLiteEvalTensor per tensor)."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from native_support import core

from tflm_patch import patch_format as pf
from tflm_patch.arena import ArenaPrediction, predict_arena
from tflm_patch.arena_tail import EVAL_TENSORS, TailItem, get_target
from tflm_patch.model import Model, OperatorInfo, load_model, model_from_object
from tflm_patch.patch_ref import check_operator_tensors, run_patch_exec
from tflm_patch.planner import PlanRequest, plan, plan_stages
from tflm_patch.rewrite import (
    CUSTOM_CODE,
    PACKED_INT8,
    PACKED_INT32,
    WEIGHT_ALIGNMENT,
    replace_stage,
    replace_stages,
    to_checked_bytes,
)
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.tflm_runner import run_model
from tflm_patch.zoo import ensure_model

STAGE = ("odd_stride2", 0, 3, (3, 2))  # conv, depthwise, conv, depthwise
PLANNED = "mbv2_035_144"  # its default plan has a main stage and fused convolutions


@functools.cache
def _zoo(name: str) -> Model:
    return load_model(ensure_model(name))


@functools.cache
def _stage(pack: bool) -> tuple[Model, OperatorInfo]:
    name, first, last, grid = STAGE
    model = _zoo(name)
    graph = build_stage(model, first, last)
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, grid),
                                              pack=pack))
    return patched, next(op for op in patched.operators if op.name == CUSTOM_CODE)


def _options(pack: bool = True) -> pf.PatchOptions:
    return pf.decode(_stage(pack)[1].custom_options or b"")


def _layer_at(o: pf.PatchOptions, k: int) -> int:
    n, m = o.grid
    return pf.HEADER_BYTES + len(o.tensors) * (pf.TENSOR_BYTES + pf.RANGE_BYTES * (n + m)) \
        + pf.LAYER_BYTES * k


# ------------------------------------------------------------------ format


def test_version3_layout() -> None:
    """Version 3 in the header, PACKED (bit 2) in the header flags, the offsets of
    weights, bias, multipliers and shifts in p[4..7] (bytes 48..63 of a layer record);
    every conv layer reads input 1 (int8) and input 2 (int32)."""
    o = _options()
    blob = pf.encode(o)
    assert struct.unpack_from("<H", blob, 4) == (3,)
    assert struct.unpack_from("<H", blob, 26) == (pf.FLAG_PACKED,)
    assert o.num_inputs == 3 and pf.decode(blob) == o
    for k, ly in enumerate(o.layers):
        assert (ly.weights, ly.bias, ly.multipliers, ly.shifts) == (1, 2, 2, 2)
        assert struct.unpack_from("<4i", blob, _layer_at(o, k) + 48) == ly.p[4:8]
    weights = [ly.p[4] for ly in o.layers]
    assert all(w % WEIGHT_ALIGNMENT == 0 for w in weights) and len(set(weights)) == 4


def test_unpacked_stays_version2() -> None:
    """Without packing the same stage is the version-2 blob it was (STREAM pairs): its
    own four tensors per conv layer, p[4..7] zero."""
    o = _options(pack=False)
    assert o.version == 2 and not o.packed and o.num_inputs == 1 + 4 * 4
    assert all(ly.p[4:] == (0,) * 8 for ly in o.layers)


def test_specs_are_minimum_lengths() -> None:
    """constant_specs gives, per shared input, the end of the use that ends last."""
    o = _options()
    ends = {1: 0, 2: 0}
    for k in range(len(o.layers)):
        for index, _, shape, offset in pf.constant_slices(o, k):
            ends[index] = max(ends[index], offset + math.prod(shape))
    patched, op = _stage(True)
    specs = pf.constant_specs(o)
    assert specs == {1: ("int8", (ends[1],)), 2: ("int32", (ends[2],))}
    assert [patched.tensors[op.inputs[i]].numel for i in (1, 2)] == [ends[1], ends[2]]


def test_packed_runs_like_unpacked() -> None:
    """The numpy reference gives the same bytes for both layouts of the stage."""
    x = np.random.default_rng(3).integers(-128, 128, (1, *_zoo(STAGE[0]).tensors[
        _zoo(STAGE[0]).inputs[0]].shape[1:]), dtype=np.int8)
    outs = [run_patch_exec(*_stage(pack), x) for pack in (True, False)]
    assert outs[0].tobytes() == outs[1].tobytes()


def test_core_runs_packed_like_reference() -> None:
    from tflm_patch.native import run_patch_exec_native

    core()
    patched, op = _stage(True)
    x = np.random.default_rng(4).integers(-128, 128, patched.tensors[op.inputs[0]].shape,
                                          dtype=np.int8)
    assert run_patch_exec_native(patched, op, x).tobytes() == \
        run_patch_exec(patched, op, x).tobytes()


Mutation = Callable[[pf.PatchOptions, bytearray], None]


def _p(k: int, i: int, value: int) -> Mutation:
    def edit(o: pf.PatchOptions, b: bytearray) -> None:
        struct.pack_into("<i", b, _layer_at(o, k) + 32 + 4 * i, value)
    return edit


def _u16(at: int, value: int) -> Mutation:
    def edit(o: pf.PatchOptions, b: bytearray) -> None:
        struct.pack_into("<H", b, at, value)
    return edit


def _bias_offset_without_bias(o: pf.PatchOptions, b: bytearray) -> None:
    struct.pack_into("<H", b, _layer_at(o, 0) + 26, pf.NONE)
    _p(0, 5, 4)(o, b)


def _weights_from_int32(o: pf.PatchOptions, b: bytearray) -> None:
    struct.pack_into("<H", b, _layer_at(o, 1) + 24, 2)


# each blob breaks one version-3 rule; Python and C give this message
MALFORMED: dict[str, tuple[Mutation, str]] = {
    "negative weights offset": (
        _p(0, 4, -1), "layer 0 (CONV_2D): constant offsets [-1, 0, 12, 24] negative, or a "
        "bias offset without a bias"),
    "bias offset without a bias": (
        _bias_offset_without_bias,
        "layer 0 (CONV_2D): constant offsets [0, 4, 12, 24] negative, or a bias offset "
        "without a bias"),
    "offset + count over 2^31 - 1 bytes": (
        _p(1, 6, (1 << 31) - 1 - 8), "layer 1 (DEPTHWISE_CONV_2D): operator input 2 is used "
        "with another type or size, or is over 2^31 - 1 bytes"),
    "weights read as int32": (
        _weights_from_int32, "layer 1 (DEPTHWISE_CONV_2D): operator input 2 is used with "
        "another type or size, or is over 2^31 - 1 bytes"),
    "version 3 without PACKED": (
        _u16(26, 0), "unknown header flags 0x0000, or PACKED without version 3 or version 3 "
        "without PACKED"),
    "PACKED in version 2": (
        _u16(4, 2), "unknown header flags 0x0004, or PACKED without version 3 or version 3 "
        "without PACKED"),
    "parameter past p[7]": (_p(0, 8, 1), "layer 0 (CONV_2D): unused parameters are not 0"),
}


def _malformed(case: str) -> tuple[bytes, str]:
    o = _options()
    blob = bytearray(pf.encode(o))
    mutate, message = MALFORMED[case]
    mutate(o, blob)
    return bytes(blob), message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_version3_blob(case: str) -> None:
    blob, message = _malformed(case)
    with pytest.raises(pf.OptionsError) as info:
        pf.decode(blob)
    assert str(info.value) == message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_version3_blob_in_c(case: str) -> None:
    blob, message = _malformed(case)
    v = core().validate(blob)
    assert not v.ok and v.message == message


def test_offsets_at_the_limit_are_accepted() -> None:
    """A use ending exactly at 2^31 - 1 bytes is valid options (the tensor then must be
    that long: Prepare's business)."""
    o = _options()
    cout = o.tensors[2].channels
    layers = list(o.layers)
    layers[1] = replace(layers[1], p=(*layers[1].p[:6], ((1 << 31) - 1) // 4 - cout,
                                      *layers[1].p[7:]))
    blob = pf.encode(replace(o, layers=tuple(layers)))
    assert core().validate(blob).ok
    assert core().constant_spec(blob, 2).elements == ((1 << 31) - 1) // 4


def test_shorter_shared_tensor_is_refused_by_the_reference() -> None:
    patched, op = _stage(True)
    o = _options()
    check_operator_tensors(patched, op, o)
    n = patched.tensors[op.inputs[1]].numel
    layers = list(o.layers)
    layers[0] = replace(layers[0], p=(*layers[0].p[:4], n, *layers[0].p[5:]))
    with pytest.raises(Exception, match=r"input 1 has \d+ elements; the options need at "
                       r"least \d+"):
        check_operator_tensors(patched, op, replace(o, layers=tuple(layers)))


# ------------------------------------------------------------------ the converter


@functools.cache
def _planned(pack: bool) -> Model:
    model = _zoo(PLANNED)
    result = plan(model, PlanRequest())
    assert result.chosen is not None, result.message
    return load_model(to_checked_bytes(replace_stages(model, plan_stages(model,
                                                                         result.chosen),
                                                      pack=pack)))


def _packed_tensors(model: Model) -> list[int]:
    return [t.index for t in model.tensors if t.name in (PACKED_INT8, PACKED_INT32)]


def test_all_patch_execs_share_two_tensors() -> None:
    m = _planned(True)
    ops = [op for op in m.operators if op.name == CUSTOM_CODE]
    assert len(ops) > 1
    shared = _packed_tensors(m)
    assert len(shared) == 2
    for op in ops:
        assert pf.decode(op.custom_options or b"").packed
        assert list(op.inputs[1:]) == shared


def test_original_constants_are_pruned() -> None:
    """The packed model has the two shared tensors instead of four per conv layer; no
    tensor is left that nothing reads."""
    packed, plain = _planned(True), _planned(False)
    convs = sum(ly.kind in pf.CONV_KINDS for op in plain.operators if op.name == CUSTOM_CODE
                for ly in pf.decode(op.custom_options or b"").layers)
    biases = sum(ly.bias != pf.NONE for op in plain.operators if op.name == CUSTOM_CODE
                 for ly in pf.decode(op.custom_options or b"").layers)
    assert len(plain.tensors) - len(packed.tensors) == 3 * convs + biases - 2
    used = {t for op in packed.operators for t in (*op.inputs, *op.outputs) if t >= 0}
    assert used | set(packed.inputs) == set(range(len(packed.tensors)))


def test_shared_int32_data_is_aligned_in_the_file() -> None:
    """The writer aligns every buffer to 16: the int32 tensor's elements start on a
    multiple of 16 in the file (so on a 16-aligned model array, 4-aligned in memory)."""
    m = _planned(True)
    for index in _packed_tensors(m):
        data = m.buffer_bytes(index)
        assert data is not None and len(data) % (1 if m.tensors[index].dtype == "int8" else 4) \
            == 0
        at = m.raw.find(data)
        assert at % 16 == 0 and m.raw.find(data, at + 1) == -1


@pytest.mark.parametrize("target", ["x86_64", "cortex_m"])
def test_tail_shrinks_by_the_eval_tensors(target: str) -> None:
    """Same plan, same head: TFLM keeps one TfLiteEvalTensor per tensor of the model (24
    bytes on x86_64, 12 on the Cortex-M4), 206 fewer here; on x86_64 that is exactly what
    the tail saves (on 32-bit targets the persistent buffers after the array move by up to
    8 bytes of alignment)."""
    packed, plain = _planned(True), _planned(False)
    a, b = predict_arena(packed, target), predict_arena(plain, target)
    per_tensor = get_target(target).types["TfLiteEvalTensor"].size

    def eval_tensors(p: ArenaPrediction) -> TailItem:
        return next(i for i in p.tail.items if i.category == EVAL_TENSORS)

    for prediction, m in ((a, packed), (b, plain)):
        assert eval_tensors(prediction).size == len(m.tensors) * per_tensor
    assert a.head.size == b.head.size
    assert len(plain.tensors) - len(packed.tensors) == 206
    if target == "x86_64":
        assert b.tail.total - a.tail.total == 206 * per_tensor


def test_packed_model_runs_in_tflm_like_the_original() -> None:
    """The whole model in x86 TFLM with the C++ kernel (skips without the headers)."""
    from tflm_patch import tflm_build
    from tflm_patch.validate import random_inputs

    try:
        kernel = tflm_build.build_kernel()
    except tflm_build.TflmBuildUnavailable as e:
        pytest.skip(f"no PATCH_EXEC kernel for x86 TFLM: {e}")
    model = _zoo(PLANNED)
    x = random_inputs(model, 1)
    got = run_model(_planned(True).raw, x, **kernel.runner_kwargs())
    assert [g.tobytes() for g in got] == [w.tobytes() for w in run_model(model.raw, x)]

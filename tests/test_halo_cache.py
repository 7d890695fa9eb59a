"""Halo reuse (CACHE_COLS, options version 2): horizontally adjacent patches share the
overlapping columns of a tensor through a cache instead of recomputing them.

The numpy reference runs every cache from the one scratch array (restore before, save after
the layer), so a cache placed over a live slot, or one too small, corrupts the output: the
differential tests demand exact int8 equality with the original operators."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from itertools import pairwise

import numpy as np
import pytest

from tflm_patch import patch_format as pf
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import StageGraph, build_stage
from tflm_patch.zoo import ensure_model


@cache
def _zoo(name: str) -> Model:
    return load_model(ensure_model(name))


@cache
def _patched(name: str, first: int, last: int, grid: tuple[int, int]
             ) -> tuple[StageGraph, Model]:
    model = _zoo(name)
    graph = build_stage(model, first, last)
    sched = make_schedule(graph, grid, cache=True)
    return graph, model_from_object(replace_stage(model, graph, sched))


CASES = [
    ("mbv2_035_144", 0, 9, (3, 3)),  # expansion + stride-2 depthwise, residual ADD
    ("mbv2_035_144", 0, 20, (2, 5)),
    ("mbv1_025_96", 0, 10, (2, 4)),
    ("pools_dilated", 0, 7, (2, 3)),  # VALID windows, pools, a dilated conv
    ("mcunet_dw57", 0, 12, (2, 4)),  # 5x5 and 7x7 depthwise
    ("odd_stride2", 0, 4, (3, 3)),  # asymmetric SAME padding
    ("nchw_input", 0, 10, (2, 3)),  # with INPUT_NCHW and STREAM
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "first", "last", "grid"), CASES)
def test_cached_stage_bit_exact(name: str, first: int, last: int, grid: tuple[int, int]
                                ) -> None:
    graph, patched = _patched(name, first, last, grid)
    model = _zoo(name)
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    assert any(t.cached for t in pf.decode(op.custom_options or b"").tensors)
    x = np.random.default_rng(first + last).integers(
        -128, 128, model.tensors[model.inputs[0]].shape, dtype=np.int8)
    values = run_graph(model, [x])
    got = run_patch_exec(patched, op, values[graph.input])
    want = values[graph.output]
    assert np.array_equal(got, want), f"max |diff| {np.abs(got.astype(int) - want).max()}"


@pytest.mark.parametrize(("name", "first", "last", "grid"), CASES)
def test_cache_computes_each_column_once(name: str, first: int, last: int,
                                         grid: tuple[int, int]) -> None:
    """A cached tensor's computed ranges never overlap (no column twice), the MACs drop
    and the rows are the same as without caches."""
    graph = build_stage(_zoo(name), first, last)
    plain, cached = make_schedule(graph, grid), make_schedule(graph, grid, cache=True)
    assert cached.cached and cached.macs < plain.macs
    assert cached.rows == plain.rows
    o = pf.decode(next(op for op in _patched(name, first, last, grid)[1].operators
                       if op.name == CUSTOM_CODE).custom_options or b"")
    for t in cached.cached:
        st = o.tensors[t]
        comps = [st.computed_cols(j) for j in range(grid[1])]
        for a, b in pairwise(comps):
            assert a[1] <= b[0]
        assert st.cache_bytes == st.cache_need() > 0
        lo, hi = st.cache_offset, st.cache_offset + st.cache_bytes
        assert hi <= cached.scratch_bytes
        for k, other in enumerate(o.tensors):  # caches overlap no slot and no cache
            if o.has_slot(k):
                assert hi <= other.slot_offset or other.slot_offset + other.slot_bytes <= lo
            if other.cached and k != t:
                assert hi <= other.cache_offset or other.cache_offset + other.cache_bytes <= lo


def test_stream_outputs_are_not_cached() -> None:
    graph = build_stage(_zoo("mbv2_035_144"), 0, 9)
    sched = make_schedule(graph, (3, 3), cache=True)
    streamed = {k + 1 for k, ly in enumerate(graph.layers) if ly.stream}
    assert streamed and not streamed & sched.cached


def test_single_column_band_has_nothing_to_cache() -> None:
    graph = build_stage(_zoo("mbv2_035_144"), 0, 9)
    assert not make_schedule(graph, (4, 1), cache=True).cached


# ------------------------------------------------------------------- malformed options


@cache
def _options() -> pf.PatchOptions:
    _, patched = _patched("mbv2_035_144", 0, 9, (3, 3))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    return pf.decode(op.custom_options or b"")


def _cached_index(o: pf.PatchOptions) -> int:
    return next(k for k, t in enumerate(o.tensors) if t.cached)


def _set_tensor(o: pf.PatchOptions, k: int, **changes: object) -> pf.PatchOptions:
    tensors = list(o.tensors)
    tensors[k] = replace(tensors[k], **changes)  # type: ignore[arg-type]
    return replace(o, tensors=tuple(tensors))


def _cache_on_input(o: pf.PatchOptions) -> pf.PatchOptions:
    t = o.tensors[_cached_index(o)]
    return _set_tensor(o, 0, flags=pf.TENSOR_CACHE_COLS, cache_offset=t.cache_offset,
                       cache_bytes=0)


def _cache_on_stream_output(o: pf.PatchOptions) -> pf.PatchOptions:
    k = next(k for k, ly in enumerate(o.layers) if ly.stream) + 1
    return _set_tensor(o, k, flags=pf.TENSOR_CACHE_COLS, cache_offset=o.scratch_bytes,
                       cache_bytes=0)


def _cache_too_small(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    return _set_tensor(o, k, cache_bytes=o.tensors[k].cache_bytes - 1)


def _cache_outside_scratch(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    return _set_tensor(o, k, cache_offset=o.scratch_bytes - o.tensors[k].cache_bytes + 1)


def _cache_over_a_slot(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    slot = next(t for j, t in enumerate(o.tensors) if o.has_slot(j) and t.slot_bytes
                >= o.tensors[k].cache_bytes)
    return _set_tensor(o, k, cache_offset=slot.slot_offset)


def _columns_moving_left(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    cols = list(o.tensors[k].cols)
    cols[1] = (cols[0][0], cols[1][1])
    cols[0] = (cols[1][0] + 1, cols[0][1])
    return _set_tensor(o, k, cols=tuple(cols))


def _empty_column_range(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    cols = list(o.tensors[k].cols)
    cols[-1] = (cols[-1][1], cols[-1][1])
    return _set_tensor(o, k, cols=tuple(cols))


def _cache_record_without_flag(o: pf.PatchOptions) -> pf.PatchOptions:
    k = _cached_index(o)
    return _set_tensor(o, k, flags=0)


def _unknown_tensor_flag(o: pf.PatchOptions) -> pf.PatchOptions:
    return _set_tensor(o, _cached_index(o), flags=pf.TENSOR_CACHE_COLS | 4)


MALFORMED: dict[str, tuple[Callable[[pf.PatchOptions], pf.PatchOptions], str]] = {
    "cache on the stage input": (_cache_on_input, "only on an intermediate tensor"),
    "cache on a STREAM output": (_cache_on_stream_output, "not the output of a STREAM"),
    "cache too small": (_cache_too_small, "< the widest overlap"),
    "cache outside the scratch": (_cache_outside_scratch, "outside the"),
    "cache over a slot": (_cache_over_a_slot, "overlaps the slot"),
    "columns moving left": (_columns_moving_left, "moving right|halo too small"),
    "empty column range": (_empty_column_range, "column range non-empty"),
    "cache record without the flag": (_cache_record_without_flag, "not the flag CACHE_COLS"),
    "unknown tensor flag": (_unknown_tensor_flag, "unknown"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_cache_is_rejected(case: str) -> None:
    breaker, message = MALFORMED[case]
    with pytest.raises(pf.OptionsError, match=message):
        pf.encode(breaker(_options()))


def test_tensor_flags_in_version_1_are_rejected() -> None:
    blob = bytearray(pf.encode(_options()))
    assert struct.unpack_from("<H", blob, 4) == (2,)
    struct.pack_into("<HH", blob, 26, 0, 0)  # no header flags: a version-1 header ...
    struct.pack_into("<H", blob, 4, 1)
    with pytest.raises(pf.OptionsError, match="total_bytes"):  # ... without the table
        pf.decode(bytes(blob))
    blob = blob[:len(blob) - pf.CACHE_BYTES * len(_options().tensors)]
    struct.pack_into("<I", blob, 8, len(blob))
    with pytest.raises(pf.OptionsError, match="reserved"):
        pf.decode(bytes(blob))


def test_cache_round_trips() -> None:
    o = _options()
    assert pf.decode(pf.encode(o)) == o
    assert o.flags & pf.FLAG_CACHES and o.version == 2
    blob = pf.encode(o)
    n, m = o.grid
    table = pf.HEADER_BYTES + len(o.tensors) * (pf.TENSOR_BYTES + pf.RANGE_BYTES * (n + m)) \
        + pf.LAYER_BYTES * len(o.layers)
    assert len(blob) == table + pf.CACHE_BYTES * len(o.tensors)
    for k, t in enumerate(o.tensors):
        assert struct.unpack_from("<II", blob, table + pf.CACHE_BYTES * k) == \
            (t.cache_offset, t.cache_bytes)
        assert struct.unpack_from("<H", blob, pf.HEADER_BYTES + pf.TENSOR_BYTES * k + 6) == \
            (t.flags,)

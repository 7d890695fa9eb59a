"""PATCH_EXEC options v1: the byte layout of docs/patch_exec.md and every validation rule."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import pytest

from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.rewrite import replace_stage
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ensure_model


@pytest.fixture(scope="module")
def options() -> pf.PatchOptions:
    """A real plan: odd_stride2 ops 0..3 (conv, depthwise, conv, depthwise), grid 3x2."""
    model = load_model(ensure_model("odd_stride2"))
    graph = build_stage(model, 0, 3)
    obj = replace_stage(model, graph, make_schedule(graph, (3, 2)))
    op = next(o for o in obj.subgraphs[0].operators if o.customOptions is not None)
    return pf.decode(bytes(op.customOptions))


@pytest.fixture(scope="module")
def blob(options: pf.PatchOptions) -> bytes:
    return pf.encode(options)


def test_roundtrip(options: pf.PatchOptions, blob: bytes) -> None:
    assert pf.decode(blob) == options
    assert pf.encode(pf.decode(blob)) == blob


def test_header_layout(options: pf.PatchOptions, blob: bytes) -> None:
    n, m = options.grid
    num_l = len(options.layers)
    assert blob[:4] == b"TPEX"
    assert struct.unpack_from("<HHI", blob, 4) == (1, 32, len(blob))
    assert struct.unpack_from("<HHHHIH", blob, 12) == (num_l + 1, num_l, n, m,
                                                       options.scratch_bytes,
                                                       options.num_inputs)
    assert len(blob) == 32 + 16 * (num_l + 1) + 4 * (num_l + 1) * (n + m) + 80 * num_l


def test_tensor_range_and_layer_layout(options: pf.PatchOptions, blob: bytes) -> None:
    t1 = options.tensors[1]
    assert struct.unpack_from("<HHHHII", blob, 32 + 16) == (t1.height, t1.width, t1.channels,
                                                            0, t1.slot_offset, t1.slot_bytes)
    n, m = options.grid
    num_t = len(options.tensors)
    ranges = 32 + 16 * num_t
    t0 = options.tensors[0]
    assert struct.unpack_from("<HH", blob, ranges) == t0.rows[0]
    assert struct.unpack_from("<HH", blob, ranges + 4 * n) == t0.cols[0]
    layer0 = ranges + 4 * num_t * (n + m)
    ly = options.layers[0]
    kind, _, in0, in1 = struct.unpack_from("<BBHH", blob, layer0)
    assert (kind, in0, in1) == (pf.CONV, 0, pf.NONE)
    assert struct.unpack_from("<4H", blob, layer0 + 24) == (ly.weights, ly.bias, ly.multipliers,
                                                            ly.shifts)
    assert struct.unpack_from("<4i", blob, layer0 + 32) == ly.p[:4]


def _layer_offset(o: pf.PatchOptions, k: int) -> int:
    num_t = len(o.tensors)
    return 32 + 16 * num_t + 4 * num_t * sum(o.grid) + 80 * k


def _range_offset(o: pf.PatchOptions, t: int, band: int) -> int:
    return 32 + 16 * len(o.tensors) + 4 * (t * sum(o.grid) + band)


Mutation = Callable[[pf.PatchOptions, bytearray], bytes]


def _poke(fmt: str, offset: Callable[[pf.PatchOptions], int], *values: int) -> Mutation:
    def mutate(o: pf.PatchOptions, b: bytearray) -> bytes:
        struct.pack_into(fmt, b, offset(o), *values)
        return bytes(b)
    return mutate


def _pool_with_dilation(o: pf.PatchOptions, b: bytearray) -> bytes:
    """The last layer (a depthwise conv) made a MAX_POOL_2D with dilation 2."""
    at = _layer_offset(o, len(o.layers) - 1)
    struct.pack_into("<B", b, at, pf.MAX_POOL)
    struct.pack_into("<H", b, at + 14, 2)
    struct.pack_into("<4H", b, at + 24, *(pf.NONE,) * 4)
    struct.pack_into("<2i", b, at + 32, 0, 0)
    return bytes(b)


BAD: dict[str, tuple[Mutation, str]] = {
    "empty": (lambda o, b: b"", "shorter than"),
    "truncated": (lambda o, b: bytes(b[:-1]), "blob length"),
    "trailing byte": (lambda o, b: bytes(b) + b"\0", "blob length"),
    "bad magic": (_poke("<4s", lambda o: 0, b"TPEY"), "bad magic"),
    "version 2": (_poke("<H", lambda o: 4, 2), "version 2 is not supported"),
    "header size": (_poke("<H", lambda o: 6, 36), "header_bytes"),
    "total bytes": (_poke("<I", lambda o: 8, 10), "total_bytes"),
    "tensor count": (_poke("<H", lambda o: 12, 3), "num_tensors"),
    "zero layers": (_poke("<HH", lambda o: 12, 1, 0), "num_layers"),
    "huge grid": (_poke("<H", lambda o: 16, 60000), "grid"),
    "zero grid": (_poke("<H", lambda o: 18, 0), "grid"),
    "no inputs": (_poke("<H", lambda o: 24, 0), "num_inputs"),
    "reserved": (_poke("<I", lambda o: 28, 1), "reserved"),
    "zero height": (_poke("<H", lambda o: 32 + 16, 0), "has a zero"),
    "slot past scratch": (_poke("<I", lambda o: 32 + 16 + 8, 1 << 30), "outside the"),
    "slot too small": (_poke("<I", lambda o: 32 + 16 + 12, 1), "largest patch"),
    "input has a slot": (_poke("<I", lambda o: 32 + 8, 0), "no scratch slot"),
    "range past tensor": (_poke("<HH", lambda o: _range_offset(o, 1, 0), 0, 9999), "outside"),
    "output gap": (_poke("<HH", lambda o: _range_offset(o, len(o.tensors) - 1, 1), 5, 6),
                   "tiling"),
    "halo too small": (_poke("<HH", lambda o: _range_offset(o, 1, 0), 0, 1), "halo too small"),
    "unknown kind": (_poke("<B", lambda o: _layer_offset(o, 0), 9), "unknown kind"),
    "reads the future": (_poke("<H", lambda o: _layer_offset(o, 0) + 2, 3), "not produced"),
    "conv without weights": (_poke("<H", lambda o: _layer_offset(o, 0) + 24, pf.NONE),
                             "needs weights"),
    "weights index": (_poke("<H", lambda o: _layer_offset(o, 0) + 24, 999), r"outside \[1"),
    "input 0 as weights": (_poke("<H", lambda o: _layer_offset(o, 0) + 24, 0), r"outside \[1"),
    "zero stride": (_poke("<H", lambda o: _layer_offset(o, 0) + 10, 0), ">= 1"),
    "activation range": (_poke("<ii", lambda o: _layer_offset(o, 0) + 40, 5, -5),
                         "activation range"),
    "unused parameter": (_poke("<i", lambda o: _layer_offset(o, 0) + 32 + 4 * 11, 7),
                         "unused"),
    "pool with dilation": (_pool_with_dilation, "dilation must be 1"),
    "constant of two types": (_poke("<H", lambda o: _layer_offset(o, 1) + 26, 1),
                              "used with another type"),
    "channel mismatch": (_poke("<H", lambda o: 32 + 16 * 2 + 4, 5), "channels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_blob_is_rejected(case: str, options: pf.PatchOptions, blob: bytes) -> None:
    mutate, message = BAD[case]
    with pytest.raises(pf.OptionsError, match=message):
        pf.decode(mutate(options, bytearray(blob)))


def test_overlapping_live_slots_are_rejected(options: pf.PatchOptions) -> None:
    t1, t2 = options.tensors[1], options.tensors[2]  # layer 1 reads tensor 1, writes 2
    clash = replace(t2, slot_offset=t1.slot_offset)
    bad = replace(options, tensors=(*options.tensors[:2], clash, *options.tensors[3:]),
                  scratch_bytes=max(options.scratch_bytes, t1.slot_offset + t2.slot_bytes))
    with pytest.raises(pf.OptionsError, match="overlap"):
        pf.encode(bad)


def test_slots_of_tensors_never_live_together_may_share(options: pf.PatchOptions) -> None:
    life = options.lifetimes()
    inner = range(1, len(options.tensors) - 1)
    shared = [(a, b) for a in inner for b in inner if a < b and life[a][1] < life[b][0]]
    assert shared, "the fixture should have two tensors with disjoint lifetimes"
    a, b = shared[0]
    ta, tb = options.tensors[a], options.tensors[b]
    moved = replace(tb, slot_offset=ta.slot_offset)
    tensors = list(options.tensors)
    tensors[b] = moved
    scratch = max(options.scratch_bytes, ta.slot_offset + tb.slot_bytes)
    pf.decode(pf.encode(replace(options, tensors=tuple(tensors), scratch_bytes=scratch)))

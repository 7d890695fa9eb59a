"""PATCH_EXEC options versions 1 and 2: the byte layout of docs/patch_exec.md and every
validation rule."""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from native_fuzz import assign_slots, with_version2

from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.rewrite import replace_stage
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ensure_model


@functools.cache
def real_options() -> pf.PatchOptions:
    """A real plan: odd_stride2 ops 0..3 (conv, depthwise, conv, depthwise), grid 3x2, as
    the converter writes it."""
    model = load_model(ensure_model("odd_stride2"))
    graph = build_stage(model, 0, 3)
    obj = replace_stage(model, graph, make_schedule(graph, (3, 2)), pack=False)
    op = next(o for o in obj.subgraphs[0].operators if o.customOptions is not None)
    return pf.decode(bytes(op.customOptions))


@functools.cache
def base_options(version: int) -> pf.PatchOptions:
    """The real plan as version 1 (no flags), or as version 2 with INPUT_NCHW and STREAM
    on both conv -> depthwise pairs (layers 0 and 2); slots sized and packed anew. The
    malformed cases (BAD, BAD_V2) start from these; so do the C tests and the fuzz
    corpus (tests/native_support.py, tools/make_fuzz_corpus.py)."""
    v2 = version == 2
    o = with_version2(real_options(), nchw=v2, stream=v2)
    assert o.version == version and (not v2 or [ly.stream for ly in o.layers] ==
                                     [True, False, True, False])
    return o


@pytest.fixture(scope="module")
def options() -> pf.PatchOptions:
    return base_options(1)


@pytest.fixture(scope="module")
def options_v2() -> pf.PatchOptions:
    return base_options(2)


@pytest.fixture(scope="module")
def blob(options: pf.PatchOptions) -> bytes:
    return pf.encode(options)


def test_roundtrip(options: pf.PatchOptions, blob: bytes, options_v2: pf.PatchOptions) -> None:
    assert pf.decode(blob) == options
    assert pf.encode(pf.decode(blob)) == blob
    assert pf.decode(pf.encode(options_v2)) == options_v2


def test_header_layout(options: pf.PatchOptions, blob: bytes) -> None:
    n, m = options.grid
    num_l = len(options.layers)
    assert blob[:4] == b"TPEX"
    assert struct.unpack_from("<HHI", blob, 4) == (1, 32, len(blob))
    assert struct.unpack_from("<HHHHIH", blob, 12) == (num_l + 1, num_l, n, m,
                                                       options.scratch_bytes,
                                                       options.num_inputs)
    assert len(blob) == 32 + 16 * (num_l + 1) + 4 * (num_l + 1) * (n + m) + 80 * num_l
    assert struct.unpack_from("<H", blob, 26) == (0,)


def test_version2_flags_layout(options_v2: pf.PatchOptions) -> None:
    """Version 2: header flags at offset 26 (INPUT_NCHW = bit 0), layer flags at byte 1
    of a layer record (STREAM = bit 0); tensor 0 has a slot, a STREAM layer's output a
    one-channel one."""
    b = pf.encode(options_v2)
    assert struct.unpack_from("<HHI", b, 4) == (2, 32, len(b))
    assert struct.unpack_from("<H", b, 26) == (pf.FLAG_INPUT_NCHW,)
    assert [b[_layer_offset(options_v2, k) + 1] for k in range(4)] == [1, 0, 1, 0]
    t0, t1 = options_v2.tensors[0], options_v2.tensors[1]
    assert struct.unpack_from("<II", b, 32 + 8) == (t0.slot_offset, t0.max_patch_bytes())
    assert struct.unpack_from("<I", b, 32 + 16 + 12) == (t1.max_patch_bytes() // t1.channels,)


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


def _poke(fmt: str, offset: Callable[[pf.PatchOptions], int], *values: int | bytes) -> Mutation:
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
    "version 4": (_poke("<H", lambda o: 4, 4), "version 4 is not supported"),
    "version 3 without PACKED": (_poke("<H", lambda o: 4, 3), "version 3 without PACKED"),
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
    "unknown kind": (_poke("<B", lambda o: _layer_offset(o, 0), 200), "unknown kind"),
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


def _tensor_offset(t: int) -> int:
    return 32 + 16 * t


def _pokes(*mutations: Mutation) -> Mutation:
    def mutate(o: pf.PatchOptions, b: bytearray) -> bytes:
        for m in mutations:
            b = bytearray(m(o, b))
        return bytes(b)
    return mutate


def _shrink_slot(t: int) -> Mutation:
    """Tensor t's slot one byte smaller than validation requires."""
    def mutate(o: pf.PatchOptions, b: bytearray) -> bytes:
        struct.pack_into("<I", b, _tensor_offset(t) + 12, o.slot_need(t) - 1)
        return bytes(b)
    return mutate


def _share_fresh_slot(a: int, c: int) -> Mutation:
    """Tensors a and c moved to one slot at the first (4-aligned) offset where it meets no
    other slot (the scratch grown when that is past its end): they overlap each other and
    nothing else."""
    def mutate(o: pf.PatchOptions, b: bytearray) -> bytes:
        size = max(o.tensors[a].slot_bytes, o.tensors[c].slot_bytes)
        others = [(t.slot_offset, t.slot_offset + t.slot_bytes) for k, t in enumerate(o.tensors)
                  if o.has_slot(k) and k not in (a, c)]
        fresh = min(at for at in [0, *((e + 3) // 4 * 4 for _, e in others)]
                    if all(at + size <= lo or hi <= at for lo, hi in others))
        for t in (a, c):
            struct.pack_into("<I", b, _tensor_offset(t) + 8, fresh)
        struct.pack_into("<I", b, 20, max(o.scratch_bytes, fresh + size))
        return bytes(b)
    return mutate


def _stream_on_last_layer(o: pf.PatchOptions, b: bytearray) -> bytes:
    """The last layer (3, a depthwise conv) made a CONV_2D flagged STREAM; layer 2 loses
    its STREAM and its output tensor 3 gets a full slot after the end of the scratch."""
    last = len(o.layers) - 1
    struct.pack_into("<BB", b, _layer_offset(o, last), pf.CONV, pf.LAYER_STREAM)
    struct.pack_into("<B", b, _layer_offset(o, last - 1) + 1, 0)
    full = o.tensors[last].max_patch_bytes()  # tensor `last` is layer last - 1's output
    struct.pack_into("<II", b, _tensor_offset(last) + 8, o.scratch_bytes, full)
    struct.pack_into("<I", b, 20, o.scratch_bytes + full)
    return bytes(b)


_STREAM_PAIR = "STREAM needs a CONV_2D followed by the DEPTHWISE_CONV_2D"

# Version-2 rules, applied to base_options(2): INPUT_NCHW, layers 0 and 2 STREAM.
BAD_V2: dict[str, tuple[Mutation, str]] = {
    "v2 unknown header flag": (_poke("<H", lambda o: 26, 0x81), "unknown header flags 0x0081"),
    "v2 header flag in version 1": (_poke("<H", lambda o: 4, 1), "reserved fields not 0"),
    "v2 layer flag in version 1": (_pokes(_poke("<H", lambda o: 4, 1),
                                          _poke("<H", lambda o: 26, 0)),
                                   "layer 0: reserved byte is 1"),
    "v2 unknown layer flag": (_poke("<B", lambda o: _layer_offset(o, 1) + 1, 0x40),
                              "layer 1: unknown flags 0x40"),
    "v2 stream on a depthwise": (_poke("<B", lambda o: _layer_offset(o, 1) + 1, 1),
                                 r"layer 1 \(DEPTHWISE_CONV_2D\): " + _STREAM_PAIR),
    "v2 stream on the last layer": (_stream_on_last_layer, "layer 3 .*" + _STREAM_PAIR),
    "v2 stream partner with depth multiplier 2": (
        _poke("<H", lambda o: _layer_offset(o, 1) + 22, 2), "layer 0 .*" + _STREAM_PAIR),
    "v2 stream partner reads another tensor": (
        _poke("<H", lambda o: _layer_offset(o, 1) + 2, 0), "layer 0 .*" + _STREAM_PAIR),
    "v2 stream output read twice": (_poke("<H", lambda o: _layer_offset(o, 2) + 2, 1),
                                    "output tensor 1 is also read by layer 2"),
    "v2 stream output slot too small": (_shrink_slot(1), "tensor 1: slot .* largest patch"),
    "v2 input without a slot": (_poke("<II", lambda o: _tensor_offset(0) + 8, pf.EXTERNAL, 0),
                                "tensor 0: slot .* is outside the"),
    "v2 input slot too small": (_shrink_slot(0), "tensor 0: slot .* largest patch"),
    "v2 input slot overlaps tensor 1": (_share_fresh_slot(0, 1), "tensors 0 and 1 .*overlap"),
    # tensor 0 lives until layer 1 only because layer 0 (its reader) is STREAM
    "v2 stream input lives until the depthwise": (_share_fresh_slot(0, 2),
                                                  "tensors 0 and 2 .*overlap"),
}


def _huge_constant(o: pf.PatchOptions, b: bytearray) -> bytes:
    """One 1x1 CONV_2D of 65535 -> 65535 channels: its weights have 65535^2 elements,
    under 2^32 but over 2^31 - 1 (every stage tensor is small)."""
    whole = ((0, 1),)
    t = pf.StageTensor(1, 1, 1000, whole, whole)
    ly = pf.Layer(pf.CONV, 0, weights=1, multipliers=2, shifts=3,
                  p=(0, 0, -128, 127) + (0,) * (pf.NUM_P - 4))
    blob = bytearray(pf.encode(pf.PatchOptions((t, t), (ly,), (1, 1), 0, 4)))
    for k in (0, 1):
        struct.pack_into("<H", blob, _tensor_offset(k) + 4, 65535)
    return bytes(blob)


def _scratch_over_bound(o: pf.PatchOptions, b: bytearray) -> bytes:
    struct.pack_into("<I", b, 20, pf.scratch_bound(o)[0] + 1)
    return bytes(b)


# The size rules (rule 5's 2^31 bound, rule 6's tensor bound, rule 10), applied to
# base_options(1): (mutation, C status, the message both validators give).
HARDENED: dict[str, tuple[Mutation, int, str]] = {
    "scratch_bytes near 2^32": (_poke("<I", lambda o: 20, 0xFFFFFFF1), 5,
                                "scratch_bytes 4294967281 is more than 2147483632 (2^31 - 16)"),
    "scratch_bytes 2^31": (_poke("<I", lambda o: 20, 1 << 31), 5,
                           "scratch_bytes 2147483648 is more than 2147483632 (2^31 - 16)"),
    "scratch_bytes one over the slots": (
        _scratch_over_bound, 5,
        "scratch_bytes 14245 is more than the 14244 bytes its 3 slots and caches need laid end "
        "to end (8 bytes of alignment each)"),
    "tensor over 2^31 bytes": (_poke("<HHH", lambda o: _tensor_offset(1), 40000, 40000, 2), 5,
                               "tensor 1: 40000x40000x2 is 3200000000 bytes, more than 2^31 - 1"),
    "constant over 2^31 bytes": (
        _huge_constant, 7,
        "layer 0 (CONV_2D): operator input 1 is used with another type or size, or is over "
        "2^31 - 1 bytes"),
}


@pytest.mark.parametrize("case", sorted(HARDENED))
def test_oversized_blob_is_rejected(case: str, options: pf.PatchOptions, blob: bytes) -> None:
    mutate, _, message = HARDENED[case]
    with pytest.raises(pf.OptionsError) as info:
        pf.decode(mutate(options, bytearray(blob)))
    assert str(info.value) == message


def test_scratch_bound_allows_the_planners_and_the_fuzzers_layouts(
        options: pf.PatchOptions) -> None:
    """Packed slots (the planner), and slots one after another with 0 or 3 bytes of gap
    rounded to 4 (native_fuzz.assign_slots), stay within rule 10's bound."""
    assert options.scratch_bytes <= pf.scratch_bound(options)[0]
    for seed in range(50):
        o = assign_slots(options, random.Random(seed))
        assert o.scratch_bytes <= pf.scratch_bound(o)[0]
        pf.encode(o)


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_blob_is_rejected(case: str, options: pf.PatchOptions, blob: bytes) -> None:
    mutate, message = BAD[case]
    with pytest.raises(pf.OptionsError, match=message):
        pf.decode(mutate(options, bytearray(blob)))


@pytest.mark.parametrize("case", sorted(BAD_V2))
def test_malformed_v2_blob_is_rejected(case: str, options_v2: pf.PatchOptions) -> None:
    mutate, message = BAD_V2[case]
    with pytest.raises(pf.OptionsError, match=message):
        pf.decode(mutate(options_v2, bytearray(pf.encode(options_v2))))


def test_version2_input_slot_may_share_with_a_later_tensor(options_v2: pf.PatchOptions
                                                            ) -> None:
    """Tensor 0 (INPUT_NCHW) dies after layer 1 (the STREAM pair reading it); tensor 3 is
    made by layer 2: their slots may share bytes (rule 8 is about lifetimes only)."""
    assert options_v2.lifetimes()[0] == (-1, 1) and options_v2.lifetimes()[3][0] == 2
    pf.decode(_share_fresh_slot(0, 3)(options_v2, bytearray(pf.encode(options_v2))))


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

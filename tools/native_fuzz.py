"""Fuzzing the PATCH_EXEC options decoder (issue 4): the C++ validator against
`patch_format.decode`, under ASan + UBSan.

Every input blob is validated by the C core (asan build) and by the Python decoder; they
must agree on accept/reject. A blob both accept is then run by the core on a random
input with random constants of the right types and sizes (when its work is small), and
the output must equal the numpy reference computed on whole tensors (`stage_reference`,
ref_ops applied layer by layer: the patch schedule must not change the result). Any
sanitizer report ends the (child) process with a non-zero status.

Inputs come from mutations of a seed corpus (tests/fuzz_corpus: real blobs of zoo plans,
synthetic stages of both format versions and the malformed cases of the format tests):
byte and bit flips, truncations, insertions, splices, and structure-aware mutations that
set a field of the header, a tensor, a range, a layer or a cache record to an interesting
value (optionally fixing total_bytes so that the deeper rules run) or toggle a version-2
flag (INPUT_NCHW, STREAM, CACHES with its cache table, a tensor's CACHE_COLS). Two
engines: "atheris" (libFuzzer, coverage of the Python decoder, our mutator as its custom
mutator) when it is installed, else "builtin" (seeded, time-bounded loop).

    python tools/native_child.py fuzz [--seconds 60] [--engine auto|atheris|builtin]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from native_sanitize import child_command, run_sanitized

from tflm_patch import native, ref_ops
from tflm_patch import patch_format as pf
from tflm_patch.errors import TflmPatchError
from tflm_patch.schedule import band_ranges, cached_band_ranges, cols_cacheable

log = logging.getLogger(__name__)

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fuzz_corpus"
DEFAULT_SECONDS = 60.0
MAX_RUN_MACS = 3_000_000  # run (and reference) only blobs this cheap
MAX_RUN_VALUES = 1 << 20  # elements of any tensor or constant of a run
_INTERESTING_16 = (0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_INTERESTING_32 = (0, 1, 2, 31, 32, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                   0xFFFFFFFE, 0xFFFFFFFF, 0x40000000, 1 << 30 | 1)


class FuzzFailure(TflmPatchError):
    """The validators disagree, the run differs from the reference, or Python crashed."""


# ------------------------------------------------------------------ blob structure


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # 1, 2 or 4 bytes
    signed: bool = False


def blob_fields(blob: bytes) -> list[Field]:
    """Every field of the blob's layout as far as its header describes it (clipped to the
    blob's length)."""
    out = [Field(4, 2), Field(6, 2), Field(8, 4), Field(12, 2), Field(14, 2), Field(16, 2),
           Field(18, 2), Field(20, 4), Field(24, 2), Field(26, 2), Field(28, 4)]
    if len(blob) < pf.HEADER_BYTES:
        return [f for f in out if f.offset + f.size <= len(blob)]
    num_t, num_l, n, m = struct.unpack_from("<HHHH", blob, 12)
    pos = pf.HEADER_BYTES
    for _ in range(min(num_t, 512)):
        out += [Field(pos, 2), Field(pos + 2, 2), Field(pos + 4, 2), Field(pos + 6, 2),
                Field(pos + 8, 4), Field(pos + 12, 4)]
        pos += pf.TENSOR_BYTES
    ranges = min(num_t * (n + m), 4096)
    out += [Field(pos + 2 * i, 2) for i in range(2 * ranges)]
    pos += pf.RANGE_BYTES * num_t * (n + m)
    for _ in range(min(num_l, 256)):
        out += [Field(pos, 1), Field(pos + 1, 1)] + [Field(pos + 2 + 2 * i, 2) for i in range(15)]
        out += [Field(pos + 32 + 4 * i, 4, signed=True) for i in range(pf.NUM_P)]
        pos += pf.LAYER_BYTES
    if _has_caches(blob):
        for _ in range(min(num_t, 512)):
            out += [Field(pos, 4), Field(pos + 4, 4)]
            pos += pf.CACHE_BYTES
    return [f for f in out if f.offset + f.size <= len(blob)]


def _has_caches(blob: bytes | bytearray) -> bool:
    return len(blob) >= pf.HEADER_BYTES and bool(blob[26] & pf.FLAG_CACHES)


def _set_field(b: bytearray, f: Field, value: int) -> None:
    fmt = {1: "B", 2: "H", 4: "I"}[f.size]
    struct.pack_into("<" + fmt, b, f.offset, value & ((1 << (8 * f.size)) - 1))


def _get_field(b: bytes | bytearray, f: Field) -> int:
    fmt = {1: "B", 2: "H", 4: "i" if f.signed else "I"}[f.size]
    return int(struct.unpack_from("<" + fmt, b, f.offset)[0])


def fix_total(b: bytearray) -> None:
    """Set total_bytes to the formula of the header's counts (a consistent header)."""
    if len(b) >= pf.HEADER_BYTES:
        num_l, n, m = struct.unpack_from("<HHH", b, 14)
        size = pf.blob_size(num_l, (n, m), _has_caches(b))
        struct.pack_into("<I", b, 8, size & 0xFFFFFFFF)


# ------------------------------------------------------------------ mutations


def _mutate_field(b: bytearray, rng: random.Random) -> None:
    fields = blob_fields(bytes(b))
    if not fields:
        return
    f = rng.choice(fields)
    old = _get_field(b, f)
    roll = rng.random()
    if roll < 0.35:
        value = old + rng.choice((-2, -1, 1, 2))
    elif roll < 0.7:
        value = rng.choice(_INTERESTING_16 if f.size <= 2 else _INTERESTING_32)
    elif roll < 0.85 and f.signed:
        value = rng.choice((-256, -255, -128, -129, -31, -32, 30, 31, 127, 128, 255, 256,
                            -(1 << 31), (1 << 31) - 1))
    else:
        value = rng.getrandbits(8 * f.size)
    _set_field(b, f, value)


def _resize(b: bytearray, rng: random.Random) -> bytearray:
    roll = rng.random()
    if roll < 0.4:
        return b[:rng.randrange(len(b) + 1)]
    pos = rng.randrange(len(b) + 1)
    if roll < 0.7:
        return b[:pos] + bytearray(rng.getrandbits(8) for _ in range(rng.choice((1, 2, 4, 16))))\
            + b[pos:]
    end = min(len(b), pos + rng.choice((1, 2, 4, 16, 80)))
    return b[:pos] + b[end:]


def _toggle_flag(b: bytearray, rng: random.Random) -> bytearray:
    """Flip INPUT_NCHW, a layer's STREAM, CACHES (adding or removing the cache table) or
    a tensor's CACHE_COLS (a version-2 feature), usually making the blob version 2."""
    if len(b) < pf.HEADER_BYTES:
        return b
    # layer records start at even offsets: the 1-byte fields at odd ones are their flags
    layer_flags = [f for f in blob_fields(bytes(b)) if f.size == 1 and f.offset % 2 == 1]
    roll = rng.random()
    if layer_flags and roll < 0.45:
        f = rng.choice(layer_flags)
        _set_field(b, f, _get_field(b, f) ^ pf.LAYER_STREAM)
    elif roll < 0.6:
        _set_field(b, Field(26, 2), _get_field(b, Field(26, 2)) ^ pf.FLAG_INPUT_NCHW)
    elif roll < 0.8:
        b = _toggle_caches(b, rng)
    else:
        _toggle_cache_cols(b, rng)
    # dropping the cache table can leave less than a header
    if rng.random() < 0.8 and len(b) >= pf.HEADER_BYTES:
        _set_field(b, Field(4, 2), 2)
    return b


def _toggle_caches(b: bytearray, rng: random.Random) -> bytearray:
    """Flip the header flag CACHES; usually add (all EXTERNAL, 0) or drop the table too."""
    num_t = struct.unpack_from("<H", b, 12)[0]
    table = pf.CACHE_BYTES * num_t
    on = not _has_caches(b)
    _set_field(b, Field(26, 2), _get_field(b, Field(26, 2)) ^ pf.FLAG_CACHES)
    if rng.random() < 0.9:
        if on:
            b = b + bytearray(struct.pack("<II", pf.EXTERNAL, 0) * num_t)
        elif len(b) >= table:
            b = b[:len(b) - table]
        fix_total(b)
    return b


def _toggle_cache_cols(b: bytearray, rng: random.Random) -> None:
    """Flip a tensor's CACHE_COLS; with the table, often give it a cache record (at the
    end of the scratch, sized as a guess) or clear the record."""
    num_t, num_l, n, m = struct.unpack_from("<HHHH", b, 12)
    if num_t == 0:
        return
    t = rng.randrange(min(num_t, 512))
    flags = Field(pf.HEADER_BYTES + pf.TENSOR_BYTES * t + 6, 2)
    if flags.offset + 2 > len(b):
        return
    on = not _get_field(b, flags) & pf.TENSOR_CACHE_COLS
    _set_field(b, flags, _get_field(b, flags) ^ pf.TENSOR_CACHE_COLS)
    at = pf.blob_size(num_l, (n, m)) + pf.CACHE_BYTES * t
    if not _has_caches(b) or at + pf.CACHE_BYTES > len(b) or rng.random() < 0.2:
        return
    if not on:
        struct.pack_into("<II", b, at, pf.EXTERNAL, 0)
        return
    h, w, c = struct.unpack_from("<HHH", b, pf.HEADER_BYTES + pf.TENSOR_BYTES * t)
    scratch = struct.unpack_from("<I", b, 20)[0]
    size = min(h * c * rng.choice((0, 1, 2, 4, max(1, w // 2))), 0xFFFFFFFF)  # a uint32
    struct.pack_into("<II", b, at, scratch, size)
    if rng.random() < 0.7:
        struct.pack_into("<I", b, 20, min(scratch + size, 0xFFFFFFFF))


def mutate(blob: bytes, rng: random.Random, corpus: Sequence[bytes] = ()) -> bytes:
    """One to four mutations of `blob` (structure-aware most of the time)."""
    b = bytearray(blob)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        roll = rng.random()
        if roll < 0.08:
            b = _toggle_flag(b, rng)
        elif roll < 0.55:
            _mutate_field(b, rng)
        elif roll < 0.7 and b:
            i = rng.randrange(len(b))
            b[i] = b[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.getrandbits(8)
        elif roll < 0.82:
            b = _resize(b, rng)
        elif roll < 0.9 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(min(len(b), len(other)) + 1)
            b = b[:cut] + bytearray(other[cut:])
        else:
            _mutate_field(b, rng)
            fix_total(b)
        if rng.random() < 0.25:
            fix_total(b)
    return bytes(b)


# ------------------------------------------------------------------ synthetic stages


def _window_out(n_in: int, k: int, s: int, d: int, rng: random.Random) -> tuple[int, int]:
    """(pad_before, output size) of a random window along one axis (>= 1 output)."""
    eff = (k - 1) * d + 1
    before = rng.randrange(eff)
    after = rng.randrange(eff)
    if n_in + before + after < eff:
        after = eff - n_in - before
    return before, (n_in + before + after - eff) // s + 1


def _random_layer(rng: random.Random, k: int, shapes: list[tuple[int, int, int]],
                  next_input: int, after_conv: bool = False
                  ) -> tuple[pf.Layer, tuple[int, int, int], int]:
    """Layer k reading tensor k (or an ADD of two equal tensors), its output shape and the
    number of constant inputs it uses (from operator input `next_input` on). After a
    CONV_2D it is often a depthwise conv with multiplier 1 (a pair STREAM can take)."""
    h, w, c = shapes[k]
    kind = rng.choice((pf.CONV, pf.CONV, pf.DEPTHWISE, pf.DEPTHWISE, pf.AVERAGE_POOL,
                       pf.MAX_POOL, pf.PAD, pf.ADD, pf.MUL))
    pair = after_conv and rng.random() < 0.5
    kind = pf.DEPTHWISE if pair else kind
    act = sorted(rng.sample(range(-128, 128), 2)) if rng.random() < 0.4 else [-128, 127]
    p: tuple[int, ...]
    if kind == pf.MUL:  # by a runtime per-channel operand (operator input next_input)
        p = (rng.randrange(-127, 129), rng.randrange(-128, 128), act[0], act[1],
             rng.randrange(-127, 129), rng.randrange(1 << 30, 1 << 31), -rng.randrange(0, 12),
             0, 0, 0, 0, 0)
        return pf.Layer(pf.MUL, k, weights=next_input, p=p), (h, w, c), 1
    if kind == pf.ADD:
        same = [t for t, s in enumerate(shapes) if s == (h, w, c)]
        p = (
            rng.randrange(-127, 129), rng.randrange(-128, 128), act[0], act[1],
            rng.randrange(-127, 129), 20, rng.randrange(1 << 30, 1 << 31), -rng.randrange(1, 4),
            rng.randrange(1 << 30, 1 << 31), -rng.randrange(1, 4),
            rng.randrange(1 << 30, 1 << 31), -rng.randrange(15, 22))
        if rng.random() < 0.3:  # a runtime addend (operator input next_input)
            return pf.Layer(pf.ADD, k, weights=next_input, p=p), (h, w, c), 1
        return pf.Layer(pf.ADD, k, input1=rng.choice(same), p=p), (h, w, c), 0
    if kind == pf.PAD:
        top, left = rng.randrange(3), rng.randrange(3)
        out = (h + top + rng.randrange(3), w + left + rng.randrange(3), c)
        p = (rng.randrange(-128, 128),) + (0,) * (pf.NUM_P - 1)
        return pf.Layer(pf.PAD, k, pad_top=top, pad_left=left, p=p), out, 0
    kh, kw = rng.randrange(1, 6), rng.randrange(1, 6)
    sh, sw = rng.randrange(1, 4), rng.randrange(1, 4)
    pool = kind in pf.POOL_KINDS
    dh, dw = (1, 1) if pool else (rng.choice((1, 1, 2, 3)), rng.choice((1, 1, 2)))
    top, oh = _window_out(h, kh, sh, dh, rng)
    left, ow = _window_out(w, kw, sw, dw, rng)
    if pool:
        top, left = min(top, kh - 1), min(left, kw - 1)  # no window entirely in padding
        p = (0, 0, act[0], act[1]) + (0,) * 8
        return pf.Layer(kind, k, kernel=(kh, kw), stride=(sh, sw), pad_top=top,
                        pad_left=left, p=p), (oh, ow, c), 0
    dm = rng.choice((1, 1, 1, 2, 3)) if kind == pf.DEPTHWISE and not pair else 1
    cout = c * dm if kind == pf.DEPTHWISE else rng.randrange(1, 13)
    p = (rng.randrange(-127, 129), rng.randrange(-128, 128), act[0], act[1]) + (0,) * 8
    bias = pf.NONE if rng.random() < 0.2 else next_input + 1
    layer = pf.Layer(kind, k, kernel=(kh, kw), stride=(sh, sw), dilation=(dh, dw),
                     pad_top=top, pad_left=left, depth_multiplier=dm, weights=next_input,
                     bias=bias, multipliers=next_input + 2, shifts=next_input + 3, p=p)
    return layer, (oh, ow, cout), 4


def _live_together(life: Sequence[tuple[int, int]], a: int, b: int) -> bool:
    return not (life[a][1] < life[b][0] or life[b][1] < life[a][0])


def pack_slots(sizes: dict[int, int], life: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Offsets of the slots: largest first, first fit among the tensors live at the same
    time (validation rule 8), 4-byte aligned."""
    placed: dict[int, int] = {}
    for t in sorted(sizes, key=lambda k: (-sizes[k], k)):
        clashes = sorted((placed[o], placed[o] + sizes[o]) for o in placed
                         if sizes[o] > 0 and _live_together(life, t, o))
        offset = 0
        for lo, hi in clashes:
            if offset + sizes[t] <= lo:
                break
            offset = max(offset, (hi + 3) // 4 * 4)
        placed[t] = offset
    return placed


def assign_slots(o: pf.PatchOptions, rng: random.Random | None = None) -> pf.PatchOptions:
    """`o` with every slot (o.has_slot) sized as validation requires (o.slot_need):
    packed by lifetime without `rng`, else separate with random gaps or packed; then
    every CACHE_COLS tensor's cache (cache_need bytes) after the slots."""
    slotted = [k for k in range(len(o.tensors)) if o.has_slot(k)]
    sizes = {k: o.slot_need(k) for k in slotted}
    if rng is None or rng.random() < 0.5:
        offsets = pack_slots(sizes, o.lifetimes())
        scratch = max((offsets[k] + sizes[k] for k in slotted), default=0)
    else:
        offsets, scratch = {}, 0
        for k in slotted:
            offsets[k] = scratch
            scratch = (scratch + sizes[k] + rng.choice((0, 0, 3)) + 3) // 4 * 4
    tensors = [replace(t, slot_offset=offsets[k], slot_bytes=sizes[k]) if k in offsets
               else replace(t, slot_offset=pf.EXTERNAL, slot_bytes=0)
               for k, t in enumerate(o.tensors)]
    for k, t in enumerate(tensors):
        if t.cached:
            offset = (scratch + 3) // 4 * 4
            tensors[k] = replace(t, cache_offset=offset, cache_bytes=t.cache_need())
            scratch = offset + t.cache_need()
        else:
            tensors[k] = replace(t, cache_offset=pf.EXTERNAL, cache_bytes=0)
    return replace(o, tensors=tuple(tensors), scratch_bytes=scratch)


def with_version2(o: pf.PatchOptions, *, nchw: bool, stream: bool | Sequence[int]
                  ) -> pf.PatchOptions:
    """`o` with INPUT_NCHW set or not and STREAM on every candidate layer (stream=True;
    never one whose output has CACHE_COLS), on the given layers, or on none, its slots
    (and caches) sized and packed anew; CACHES and PACKED stay as they are."""
    chosen = set(pf.stream_candidates(o.layers)) if stream is True else set(stream or ())
    chosen -= {k for k in chosen if o.tensors[k + 1].cached}
    layers = tuple(replace(ly, flags=pf.LAYER_STREAM if k in chosen else 0)
                   for k, ly in enumerate(o.layers))
    flags = (pf.FLAG_INPUT_NCHW if nchw else 0) | (o.flags & (pf.FLAG_CACHES | pf.FLAG_PACKED))
    return assign_slots(replace(o, layers=layers, flags=flags))


def _last_lut_or_concat(rng: random.Random, k: int, shapes: list[tuple[int, int, int]],
                        next_input: int) -> tuple[pf.Layer, tuple[int, int, int], int]:
    """Layer k: a LUT of tensor k (its table operator input `next_input`) or a
    CONCATENATION of tensor k and tensor 0 or k (the same rows and columns)."""
    h, w, c = shapes[k]
    if rng.random() < 0.5:
        return pf.Layer(pf.LUT, k, weights=next_input), (h, w, c), 1
    other = rng.choice([t for t in (0, k) if shapes[t][:2] == (h, w)])
    return pf.Layer(pf.CONCAT, k, input1=other), (h, w, c + shapes[other][2]), 0


def random_stage(rng: random.Random, max_layers: int = 5, version2: bool | None = None
                 ) -> pf.PatchOptions:
    """A random valid stage (small tensors) with a random grid: every kind, strides,
    dilations, depth multipliers, asymmetric padding, PAD and residual ADD; with
    `version2` (at random when None) INPUT_NCHW, STREAM pairs and CACHE_COLS halo caches,
    each at random."""
    shapes = [(rng.randrange(3, 17), rng.randrange(3, 17), rng.randrange(1, 9))]
    layers: list[pf.Layer] = []
    num_inputs = 1
    for k in range(rng.randrange(1, max_layers + 1)):
        after_conv = bool(layers) and layers[-1].kind == pf.CONV
        layer, shape, used = _random_layer(rng, k, shapes, num_inputs, after_conv)
        layers.append(layer)
        shapes.append(shape)
        num_inputs += used
    aux = random.Random(repr(shapes))  # a last LUT or CONCATENATION, drawn outside `rng`
    if aux.random() < 0.4:
        layer, shape, used = _last_lut_or_concat(aux, len(layers), shapes, num_inputs)
        layers.append(layer)
        shapes.append(shape)
        num_inputs += used
    n = rng.randrange(1, min(shapes[-1][0], 4) + 1)
    m = rng.randrange(1, min(shapes[-1][1], 4) + 1)
    rows = band_ranges(layers, shapes, 0, n)
    cols = band_ranges(layers, shapes, 1, m)
    tensors = tuple(pf.StageTensor(h, w, c, tuple(rows[t]), tuple(cols[t]))
                    for t, (h, w, c) in enumerate(shapes))
    v2 = rng.random() < 0.5 if version2 is None else version2
    flags = pf.FLAG_INPUT_NCHW if v2 and rng.random() < 0.5 else 0
    stream = {k for k in pf.stream_candidates(layers) if v2 and rng.random() < 0.8}
    layers = [replace(ly, flags=pf.LAYER_STREAM) if k in stream else ly
              for k, ly in enumerate(layers)]
    if v2 and m > 1 and rng.random() < 0.6:  # halo caches on some intermediate tensors
        wanted = frozenset(t for t in range(1, len(layers)) if t - 1 not in stream
                           and rng.random() < 0.6)
        cols, cached = cached_band_ranges(
            layers, shapes, m, lambda t, outs: t in wanted and cols_cacheable(outs))
        flags |= pf.FLAG_CACHES
        tensors = tuple(replace(t, cols=tuple(cols[k]),
                                flags=pf.TENSOR_CACHE_COLS if k in cached else 0)
                        for k, t in enumerate(tensors))
    o = pf.PatchOptions(tensors, tuple(layers), (n, m), 0, num_inputs, flags)
    return assign_slots(o, rng)


def random_stage_input(o: pf.PatchOptions, rng: np.random.Generator) -> np.ndarray:
    """A random operator input 0 of `o`: int8 [1, H, W, C], or [1, C, H, W] with
    INPUT_NCHW."""
    t0 = o.tensors[0]
    shape = (1, t0.channels, t0.height, t0.width) if o.input_nchw else \
        (1, t0.height, t0.width, t0.channels)
    return rng.integers(-128, 128, shape, dtype=np.int8)


# ------------------------------------------------------------------ runs


def _specs_agree(lib: Any, blob: bytes, o: pf.PatchOptions) -> None:
    """C's PatchExecConstantSpec against patch_format.constant_specs (FuzzFailure when
    they differ)."""
    specs = pf.constant_specs(o)
    c_specs = lib.constant_specs(blob)
    for index in range(1, o.num_inputs):
        want = specs.get(index)
        expect = (want[0], math.prod(want[1])) if want else (None, 0)
        got = c_specs[index]
        if (got.dtype, got.elements) != expect:
            raise FuzzFailure(f"PatchExecConstantSpec of input {index}: {got}, expected {expect}")


def stage_macs(o: pf.PatchOptions) -> int:
    """Multiply-accumulates of a patch-by-patch run (every layer over its ranges)."""
    total = 0
    for k, ly in enumerate(o.layers):
        t = o.tensors[k + 1]
        per = t.channels * ly.kernel[0] * ly.kernel[1]
        if ly.kind == pf.CONV:
            per *= o.tensors[ly.input0].channels
        rows = sum(hi - lo for lo, hi in t.rows)
        cols = sum(hi - lo for lo, hi in t.cols)
        total += per * rows * cols + per * t.height * t.width  # patches + the reference
    return total


def runnable(o: pf.PatchOptions) -> bool:
    """Small enough to run and compare (in a fuzzing loop)."""
    if stage_macs(o) > MAX_RUN_MACS:
        return False
    if any(t.height * t.width * t.channels > MAX_RUN_VALUES for t in o.tensors):
        return False
    if o.scratch_bytes > MAX_RUN_VALUES or o.num_inputs > 1024:
        return False
    for k, ly in enumerate(o.layers):  # the reference pads whole tensors: keep them small
        if ly.kind not in pf.WINDOW_KINDS:
            continue
        src, dst = o.tensors[ly.input0], o.tensors[k + 1]
        padded = dst.channels if ly.kind == pf.DEPTHWISE else src.channels
        for axis, (n_in, n_out) in enumerate(((src.height, dst.height), (src.width, dst.width))):
            extent = (n_out - 1) * ly.stride[axis] + (ly.kernel[axis] - 1) * ly.dilation[axis] + 1
            padded *= max(extent, (ly.pad_top, ly.pad_left)[axis] + n_in)
        if padded > MAX_RUN_VALUES:
            return False
    return all(int(np.prod(shape)) <= MAX_RUN_VALUES for _, shape in pf.constant_specs(o).values())


def random_constants(o: pf.PatchOptions, rng: np.random.Generator, extreme: bool = False
                     ) -> list[np.ndarray | None]:
    """Random constants for every operator input (entry 0 and unused inputs None):
    realistic multipliers/shifts, or with `extreme` anything PatchExecCheckConstants
    accepts."""
    specs = pf.constant_specs(o)
    consts: list[np.ndarray | None] = [None] * o.num_inputs
    roles: dict[int, set[str]] = {}
    for ly in o.layers:
        if ly.kind in pf.CONV_KINDS:
            for idx, role in ((ly.bias, "b"), (ly.multipliers, "m"), (ly.shifts, "s")):
                roles.setdefault(idx, set()).add(role)
    for idx, (dtype, shape) in specs.items():
        uses = roles.get(idx, set())
        arr: np.ndarray
        if dtype in ("int8", pf.RUNTIME_INT8):  # a runtime operand: any int8 values
            arr = rng.integers(-128, 128, shape, dtype=np.int8)
        elif {"m", "s"} <= uses:  # both a multiplier and a shift: valid as either
            arr = rng.integers(0, 31, shape).astype(np.int32)
        elif "m" in uses:
            low = 0 if extreme else 1 << 30
            arr = rng.integers(low, 1 << 31, shape, dtype=np.int64).astype(np.int32)
        elif "s" in uses:
            arr = rng.integers(-31, 31, shape) if extreme else rng.integers(-12, 2, shape)
            arr = arr.astype(np.int32)
        else:
            bound = (1 << 31) if extreme else (1 << 14)
            arr = rng.integers(-bound, bound, shape, dtype=np.int64).astype(np.int32)
        consts[idx] = arr
    return consts


def stage_reference(o: pf.PatchOptions, x: np.ndarray, consts: Sequence[np.ndarray | None]
                    ) -> np.ndarray | None:
    """The stage output computed on whole tensors with ref_ops (None where the reference
    does not apply: a pool window entirely in padding). `x` is operator input 0 ([1, C, H,
    W] with INPUT_NCHW); STREAM does not change the values."""
    t0 = o.tensors[0]
    if o.input_nchw:
        nhwc = np.asarray(x).reshape(1, t0.channels, t0.height, t0.width).transpose(0, 2, 3, 1)
    else:
        nhwc = np.asarray(x).reshape(1, t0.height, t0.width, t0.channels)
    values = [nhwc]
    for k, ly in enumerate(o.layers):
        src, dst = values[ly.input0], o.tensors[k + 1]
        try:
            values.append(_reference_layer(k, src, dst, values, consts, o))
        except ValueError:
            return None
    return values[-1]


def _reference_layer(k: int, src: np.ndarray, dst: pf.StageTensor,
                     values: Sequence[np.ndarray], consts: Sequence[np.ndarray | None],
                     o: pf.PatchOptions) -> Any:
    ly = o.layers[k]
    p = ly.p
    if ly.kind == pf.ADD:
        params = ref_ops.AddParams(p[0], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                                   p[1], p[2], p[3])
        other = values[ly.input1] if ly.input1 != pf.NONE else \
            np.asarray(consts[ly.weights]).reshape(1, dst.height, dst.width, dst.channels)
        return ref_ops.add(src, other, params)
    if ly.kind == pf.LUT:
        table = np.asarray(consts[ly.weights]).reshape(-1)
        at = p[4] if o.packed else 0
        return ref_ops.lut(src, table[at:at + pf.LUT_ENTRIES])
    if ly.kind == pf.CONCAT:
        return np.concatenate([src, values[ly.input1]], axis=-1)
    if ly.kind == pf.MUL:
        s = np.asarray(consts[ly.weights]).reshape(1, 1, 1, dst.channels)
        return ref_ops.mul(src, s, ref_ops.MulParams(p[0], p[4], p[5], p[6], p[1], p[2], p[3]))
    if ly.kind == pf.PAD:
        pads = ((0, 0), (ly.pad_top, dst.height - src.shape[1] - ly.pad_top),
                (ly.pad_left, dst.width - src.shape[2] - ly.pad_left), (0, 0))
        return ref_ops.pad(src, ref_ops.PadParams(pads, p[0]))
    if ly.kind in pf.POOL_KINDS:
        pp = ref_ops.PoolParams(ly.kernel[0], ly.kernel[1], ly.stride[0], ly.stride[1],
                                ly.pad_top, ly.pad_left, dst.height, dst.width, p[2], p[3])
        fn = ref_ops.average_pool if ly.kind == pf.AVERAGE_POOL else ref_ops.max_pool
        return fn(src, pp)
    w = np.asarray(consts[ly.weights]).reshape(pf.constant_uses(o, k)[0][2])
    b = None if ly.bias == pf.NONE else np.asarray(consts[ly.bias]).reshape(-1)
    mult = tuple(int(v) for v in np.asarray(consts[ly.multipliers]).reshape(-1))
    shift = tuple(int(v) for v in np.asarray(consts[ly.shifts]).reshape(-1))
    cp = ref_ops.ConvParams(p[0], p[1], mult, shift, ly.stride[0], ly.stride[1],
                            ly.dilation[0], ly.dilation[1], ly.pad_top, ly.pad_left,
                            dst.height, dst.width, p[2], p[3])
    if ly.kind == pf.CONV:
        return ref_ops.conv2d(src, w, b, cp)
    dp = ref_ops.DepthwiseConvParams(**{**cp.__dict__, "depth_multiplier":
                                        ly.depth_multiplier})
    return ref_ops.depthwise_conv2d(src, w, b, dp)


# ------------------------------------------------------------------ the check


@dataclass
class FuzzStats:
    inputs: int = 0
    accepted: int = 0
    runs: int = 0
    compared: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)  # of the accepted blobs

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.statuses.most_common())
        v2 = ", ".join(f"{k} {self.features[k]}" for k in ("version 2", "INPUT_NCHW", "STREAM",
                                                             "CACHE_COLS"))
        return (f"{self.inputs} inputs, {self.accepted} accepted by both validators ({v2}), "
                f"{self.runs} runs ({self.compared} compared with the reference); "
                f"C statuses: {top}")


def check_blob(lib: Any, blob: bytes, rng: np.random.Generator, stats: FuzzStats) -> None:
    """The invariant on one input (FuzzFailure when it breaks)."""
    stats.inputs += 1
    got = lib.validate(blob)
    stats.statuses[got.status.name] += 1
    try:
        options: pf.PatchOptions | None = pf.decode(blob)
        py_error = ""
    except pf.OptionsError as e:
        options, py_error = None, str(e)
    except Exception as e:  # the Python decoder must only ever raise OptionsError
        raise FuzzFailure(f"patch_format.decode raised {type(e).__name__}: {e}") from e
    if got.ok != (options is not None):
        raise FuzzFailure(f"validators disagree: C {got.status.name} ({got.message}), Python "
                          f"{'accepts' if options is not None else 'rejects: ' + py_error}")
    if options is None:
        return
    stats.accepted += 1
    stats.features["version 2"] += options.version == 2
    stats.features["INPUT_NCHW"] += options.input_nchw
    stats.features["STREAM"] += any(ly.stream for ly in options.layers)
    stats.features["CACHE_COLS"] += any(t.cached for t in options.tensors)
    if lib.scratch_bytes(blob) != pf.scratch_bytes(blob):
        raise FuzzFailure("PatchExecScratchBytes differs from patch_format.scratch_bytes")
    _specs_agree(lib, blob, options)
    if runnable(options):
        _run_and_compare(lib, blob, options, rng, stats)


def _run_and_compare(lib: Any, blob: bytes, o: pf.PatchOptions, rng: np.random.Generator,
                     stats: FuzzStats) -> None:
    consts = random_constants(o, rng, extreme=bool(rng.integers(2)))
    x = random_stage_input(o, rng)
    try:
        out = lib.run(blob, x, consts)
    except TflmPatchError as e:
        raise FuzzFailure(f"the core refused a valid blob: {e}") from e
    stats.runs += 1
    want = stage_reference(o, x, consts)
    if want is None:
        return
    stats.compared += 1
    if not np.array_equal(out, want):
        diff = int(np.abs(out.astype(np.int64) - want.astype(np.int64)).max())
        raise FuzzFailure(f"the core's output differs from the reference (max |diff| {diff})")


# ------------------------------------------------------------------ corpus, engines


def load_corpus(path: Path = DEFAULT_CORPUS) -> list[bytes]:
    files = sorted(p for p in Path(path).glob("*.bin") if p.is_file())
    if not files:
        raise FuzzFailure(f"no seed corpus (*.bin) in {path}")
    return [p.read_bytes() for p in files]


def _save_failure(blob: bytes, artifacts: Path) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="patch_exec_crash-", suffix=".bin", dir=artifacts)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    return Path(name)


def fuzz_builtin(lib: Any, corpus: Sequence[bytes], seconds: float, seed: int,
                 artifacts: Path) -> FuzzStats:
    """Mutation loop for `seconds`: seeds, synthetic stages and accepted mutants."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    stats = FuzzStats()
    pool = list(corpus)
    deadline = time.monotonic() + seconds
    for blob in corpus:  # every seed once, unmutated
        _checked(lib, blob, nrng, stats, artifacts)
    while time.monotonic() < deadline:
        fresh = rng.random() < 0.1
        blob = pf.encode(random_stage(rng)) if fresh else mutate(rng.choice(pool), rng, pool)
        accepted_before = stats.accepted
        _checked(lib, blob, nrng, stats, artifacts)
        if stats.accepted > accepted_before and len(pool) < 4096:
            pool.append(blob)  # valid mutants are good seeds for deeper mutations
    return stats


def _checked(lib: Any, blob: bytes, rng: np.random.Generator, stats: FuzzStats,
             artifacts: Path) -> None:
    try:
        check_blob(lib, blob, rng, stats)
    except FuzzFailure as e:
        path = _save_failure(blob, artifacts)
        raise FuzzFailure(f"{e} (input saved to {path})") from e


def replay(lib: Any, corpus: Sequence[bytes], seed: int, artifacts: Path) -> FuzzStats:
    """Every input once (e.g. what atheris found, against the ASan build)."""
    stats = FuzzStats()
    nrng = np.random.default_rng(seed)
    for blob in corpus:
        _checked(lib, blob, nrng, stats, artifacts)
    return stats


def fuzz_atheris(lib: Any, work: Path, seconds: float, seed: int, artifacts: Path) -> None:
    """libFuzzer through atheris on the corpus directory `work` (it adds what it finds
    there); coverage feedback from the Python decoder, our mutator as a custom mutator.
    Exits the process (atheris does) when the time is up or on a failure."""
    import importlib

    import atheris

    global pf  # re-imported with coverage instrumentation
    sys.modules.pop(pf.__name__, None)
    with atheris.instrument_imports(include=[pf.__name__]):
        pf = importlib.import_module(pf.__name__)
    stats = FuzzStats()
    nrng = np.random.default_rng(seed)
    pool = load_corpus(work)

    def test_one(data: bytes) -> None:
        check_blob(lib, data, nrng, stats)

    def mutator(data: bytes, max_size: int, mseed: int) -> bytes:
        r = random.Random(mseed)
        if r.random() < 0.3:
            return bytes(atheris.Mutate(data, max_size))
        if r.random() < 0.05:
            return pf.encode(random_stage(r))[:max_size]
        return mutate(data, r, pool)[:max_size]

    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={max(1, round(seconds))}", f"-seed={seed}",
            "-max_len=65536", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            str(work)]
    atheris.Setup(argv, test_one, custom_mutator=mutator)
    atheris.Fuzz()


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def add_parser(sub: Any) -> None:
    f = sub.add_parser("fuzz", help="fuzz the options decoder (C vs Python, ASan + UBSan)")
    f.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    f.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto",
                   help="auto: atheris when installed, else builtin")
    f.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) /
                   "tflm_patch_fuzz", help="where failing inputs are saved")
    f.add_argument("--phase", choices=("main", "builtin", "atheris", "replay"), default="main",
                   help=argparse.SUPPRESS)  # child processes


def _child_args(args: argparse.Namespace, phase: str, corpus: Path) -> list[str]:
    return ["fuzz", "--phase", phase, "--seconds", str(args.seconds), "--seed", str(args.seed),
            "--corpus", str(corpus), "--artifacts", str(args.artifacts)]


def _relay(run: Any) -> int:
    sys.stderr.write(run.stderr[-20000:])
    if run.report is not None:
        log.error("sanitizer report: %s", run.report)
        return run.returncode or 1
    return int(run.returncode)


def _orchestrate(args: argparse.Namespace, engine: str) -> int:
    """Builtin: one ASan child. Atheris: a UBSan child explores (atheris cannot get
    coverage where GCC's libasan is preloaded: its weak __sanitizer_cov_* hooks shadow
    libFuzzer's), then an ASan child replays everything it kept."""
    if engine == "builtin":
        return _relay(run_sanitized(_child_args(args, "builtin", args.corpus),
                                    timeout=args.seconds * 3 + 300))
    work = Path(tempfile.mkdtemp(prefix="patch_exec_fuzz_"))
    try:
        for i, blob in enumerate(load_corpus(args.corpus)):
            (work / f"seed{i:03d}.bin").write_bytes(blob)
        native.build("ubsan")
        env = {**os.environ, "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
               "OPENBLAS_NUM_THREADS": "1"}
        cmd = child_command(_child_args(args, "atheris", work))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                              timeout=args.seconds * 3 + 300)
        sys.stderr.write(proc.stderr[-20000:])
        if proc.returncode != 0:
            log.error("atheris phase failed (exit code %d)", proc.returncode)
            return proc.returncode
        kept = len(list(work.glob("*")))
        log.info("atheris kept %d inputs; replaying them under ASan + UBSan", kept)
        return _relay(run_sanitized(_child_args(args, "replay", work),
                                    timeout=args.seconds * 3 + 300))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    if args.phase == "main":
        engine = args.engine
        if engine == "auto":
            engine = "atheris" if atheris_available() else "builtin"
        log.info("fuzzing the options decoder for %.0f s (%s engine, seed %d)", args.seconds,
                 engine, args.seed)
        return _orchestrate(args, engine)
    if args.phase == "atheris":
        fuzz_atheris(native.load("ubsan"), args.corpus, args.seconds, args.seed, args.artifacts)
        return 0
    lib = native.load("asan")
    try:
        if args.phase == "replay":
            stats = replay(lib, _corpus_files(args.corpus), args.seed, args.artifacts)
        else:
            stats = fuzz_builtin(lib, load_corpus(args.corpus), args.seconds, args.seed,
                                 args.artifacts)
    except FuzzFailure as e:
        log.error("FUZZ FAILURE: %s", e)
        return 1
    log.info("fuzz ok (%s, asan): %s", args.phase, stats.summary())
    return 0


def _corpus_files(path: Path) -> list[bytes]:
    """Every file of a libFuzzer corpus directory (any name)."""
    return [p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()]

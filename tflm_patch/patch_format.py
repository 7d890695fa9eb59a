"""The PATCH_EXEC options blob, versions 1 to 3 (docs/patch_exec.md): encode, decode,
validate. Version 2 adds the header flag INPUT_NCHW (a folded TRANSPOSE), the layer flag
STREAM (a CONV_2D and the depthwise after it run channel by channel) and the tensor flag
CACHE_COLS with the cache table (halo reuse between horizontally adjacent patches).
Version 3 adds the header flag PACKED: a conv layer's constants are (operator input,
element offset in p[4..7]), so many layers share a few constant tensors.

`encode(options)` writes the little-endian blob; `decode(blob)` parses it and checks every
rule of the document, raising `OptionsError` that names the field. The numpy reference
(`patch_ref.py`) runs only decoded (hence validated) options; the C++ core implements the
same checks.
"""

from __future__ import annotations

import functools
import math
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tflm_patch.errors import TflmPatchError
from tflm_patch.receptive_field import _window_axis

MAGIC = b"TPEX"
VERSION = 3  # the newest version this module reads and writes
VERSIONS = (1, 2, 3)
FLAG_INPUT_NCHW = 1  # header flags (version 2)
FLAG_CACHES = 2  # a cache table follows the layer records
FLAG_PACKED = 4  # version 3: a layer constant is (operator input, element offset p[4..7])
LAYER_STREAM = 1  # layer flags (version 2)
TENSOR_CACHE_COLS = 1  # tensor flags (version 2)
CACHE_BYTES = 8  # one cache table record
HEADER_BYTES = 32
TENSOR_BYTES = 16
RANGE_BYTES = 4
LAYER_BYTES = 80
NONE = 0xFFFF
EXTERNAL = 0xFFFFFFFF  # slot_offset of the stage input and output
MAX_LAYERS = 128
MAX_GRID = 256
NUM_P = 12
SLOT_ALIGNMENT = 4
MAX_TENSOR_BYTES = (1 << 31) - 1  # every stage tensor and constant (32-bit indexing)
MAX_SCRATCH_BYTES = (1 << 31) - 16  # TFLM aligns requests to 16 in 32-bit arithmetic
REGION_SLACK = 8  # alignment allowed per slot and cache when bounding scratch_bytes

CONV, DEPTHWISE, AVERAGE_POOL, MAX_POOL, PAD, ADD = 1, 2, 3, 4, 5, 6
LUT = 7  # a unary int8 op as a 256-entry int8 table (a constant input)
MUL = 8  # by a runtime per-channel tensor (squeeze-and-excitation)
CONCAT = 9  # CONCATENATION of input0 and input1 along channels (a copy)
LUT_ENTRIES = 256
KIND_NAMES = {CONV: "CONV_2D", DEPTHWISE: "DEPTHWISE_CONV_2D", AVERAGE_POOL: "AVERAGE_POOL_2D",
              MAX_POOL: "MAX_POOL_2D", PAD: "PAD", ADD: "ADD", LUT: "LUT",
              MUL: "MUL", CONCAT: "CONCATENATION"}
RUNTIME_INT8 = "runtime int8"  # constant_uses' dtype of a MUL's per-channel side input
CONV_KINDS = (CONV, DEPTHWISE)
POOL_KINDS = (AVERAGE_POOL, MAX_POOL)
WINDOW_KINDS = CONV_KINDS + POOL_KINDS

_HEADER = struct.Struct("<4sHHIHHHHIHHI")
_TENSOR = struct.Struct("<HHHHII")
_RANGE = struct.Struct("<HH")
_CACHE = struct.Struct("<II")
_LAYER = struct.Struct("<BBHH" + "H" * 13 + "i" * NUM_P)
assert _HEADER.size == HEADER_BYTES and _TENSOR.size == TENSOR_BYTES
assert _LAYER.size == LAYER_BYTES


class OptionsError(TflmPatchError):
    """A PATCH_EXEC options blob breaks a rule of docs/patch_exec.md."""


Range = tuple[int, int]  # [lo, hi)


@dataclass(frozen=True)
class StageTensor:
    """One stage tensor: its size, its scratch slot and its range per band."""

    height: int
    width: int
    channels: int
    rows: tuple[Range, ...]  # one per grid row band
    cols: tuple[Range, ...]  # one per grid column band
    slot_offset: int = EXTERNAL
    slot_bytes: int = 0
    flags: int = 0  # TENSOR_CACHE_COLS
    cache_offset: int = EXTERNAL
    cache_bytes: int = 0

    @property
    def cached(self) -> bool:
        return bool(self.flags & TENSOR_CACHE_COLS)

    def overlap(self, j: int) -> int:
        """Columns patch column j (> 0) shares with patch column j - 1 (0 for j = 0)."""
        return max(0, self.cols[j - 1][1] - self.cols[j][0]) if j > 0 else 0

    def computed_cols(self, j: int) -> Range:
        """The columns patch column j computes: its range, less what the cache holds."""
        lo, hi = self.cols[j]
        return (max(lo, self.cols[j - 1][1]), hi) if self.cached and j > 0 else (lo, hi)

    def cache_need(self) -> int:
        """The bytes the cache must hold: the widest overlap, every row, every channel."""
        ov = max((self.overlap(j) for j in range(1, len(self.cols))), default=0)
        return max(hi - lo for lo, hi in self.rows) * ov * self.channels

    def max_patch_bytes(self) -> int:
        return (max(hi - lo for lo, hi in self.rows) * max(hi - lo for lo, hi in self.cols)
                * self.channels)


@dataclass(frozen=True)
class Layer:
    """One layer; field meanings per kind as in docs/patch_exec.md."""

    kind: int
    input0: int
    input1: int = NONE
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad_top: int = 0
    pad_left: int = 0
    depth_multiplier: int = 1
    weights: int = NONE
    bias: int = NONE
    multipliers: int = NONE
    shifts: int = NONE
    p: tuple[int, ...] = field(default=(0,) * NUM_P)
    flags: int = 0  # LAYER_STREAM

    @property
    def stream(self) -> bool:
        return bool(self.flags & LAYER_STREAM)

    @property
    def name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind {self.kind}")

    @property
    def act_min(self) -> int:
        return self.p[2]

    @property
    def act_max(self) -> int:
        return self.p[3]


@dataclass(frozen=True)
class PatchOptions:
    tensors: tuple[StageTensor, ...]
    layers: tuple[Layer, ...]
    grid: tuple[int, int]
    scratch_bytes: int
    num_inputs: int
    flags: int = 0  # FLAG_INPUT_NCHW

    @property
    def input_nchw(self) -> bool:
        return bool(self.flags & FLAG_INPUT_NCHW)

    @property
    def packed(self) -> bool:
        """Version 3: constants are (input, element offset); an input holds at least what
        each use reads, and several layers may read parts of one input."""
        return bool(self.flags & FLAG_PACKED)

    @property
    def version(self) -> int:
        """The lowest version that expresses these options (the one `encode` writes)."""
        if self.packed:
            return 3
        return 2 if self.flags or any(ly.flags for ly in self.layers) or \
            any(t.flags for t in self.tensors) else 1

    @property
    def output(self) -> StageTensor:
        return self.tensors[-1]

    def has_slot(self, k: int) -> bool:
        """Does stage tensor k live in the scratch? (Tensor 0 only with INPUT_NCHW.)"""
        return 0 < k < len(self.tensors) - 1 or (k == 0 and self.input_nchw)

    def slot_need(self, k: int) -> int:
        """The bytes tensor k's slot must hold: its largest patch, one channel of it for
        the output of a STREAM layer."""
        t = self.tensors[k]
        streamed = 0 < k <= len(self.layers) and self.layers[k - 1].stream
        return t.max_patch_bytes() // t.channels if streamed else t.max_patch_bytes()

    def lifetimes(self) -> list[tuple[int, int]]:
        """(first, last) layer index of every tensor's life (producer .. last reader)."""
        return lifetimes(self.layers)


def lifetimes(layers: tuple[Layer, ...] | list[Layer]) -> list[tuple[int, int]]:
    """(first, last) layer of every tensor's life; a STREAM layer k reads its inputs
    until layer k + 1 (the pair runs channel by channel)."""
    life = [(-1, -1)] + [(k, k) for k in range(len(layers))]
    for k, layer in enumerate(layers):
        until = k + 1 if layer.stream else k
        for t in (layer.input0, layer.input1):
            if t != NONE:
                life[t] = (life[t][0], max(life[t][1], until))
    return life


def blob_size(num_layers: int, grid: tuple[int, int], caches: bool = False) -> int:
    t = num_layers + 1
    return HEADER_BYTES + TENSOR_BYTES * t + RANGE_BYTES * t * (grid[0] + grid[1]) \
        + LAYER_BYTES * num_layers + (CACHE_BYTES * t if caches else 0)


# ---------------------------------------------------------------------------- encode
_FIELD_RANGES = {"B": (0, 0xFF), "H": (0, 0xFFFF), "I": (0, 0xFFFFFFFF),
                 "i": (-(1 << 31), (1 << 31) - 1)}


def _pack(st: struct.Struct, what: str, *values: Any) -> bytes:
    """st.pack, with an OptionsError naming the field instead of struct.error when a
    value does not fit its field."""
    try:
        return st.pack(*values)
    except struct.error:
        pass
    codes = [c for c in st.format.lstrip("<") if not c.isdigit()]
    for position, (code, value) in enumerate(zip(codes, values, strict=False)):
        lo, hi = _FIELD_RANGES.get(code, (None, None))
        if lo is not None and not (hasattr(value, "__index__") and lo <= value <= hi):
            raise OptionsError(f"PATCH_EXEC options: {what}, field {position}: {value} is "
                               f"outside the field's range {lo}..{hi}")
    raise OptionsError(f"PATCH_EXEC options: {what}: the values {values} do not fit")


def encode(options: PatchOptions) -> bytes:
    """The blob; raises OptionsError when the options break a rule (checked by decoding)."""
    n, m = options.grid
    caches = bool(options.flags & FLAG_CACHES)
    parts = [_pack(_HEADER, "header", MAGIC, options.version, HEADER_BYTES,
                   blob_size(len(options.layers), (n, m), caches), len(options.tensors),
                   len(options.layers), n, m, options.scratch_bytes,
                   options.num_inputs, options.flags, 0)]
    for k, t in enumerate(options.tensors):
        parts.append(_pack(_TENSOR, f"tensor {k}", t.height, t.width, t.channels, t.flags,
                           t.slot_offset, t.slot_bytes))
    for k, t in enumerate(options.tensors):
        for lo, hi in (*t.rows, *t.cols):
            parts.append(_pack(_RANGE, f"tensor {k} range", lo, hi))
    for k, ly in enumerate(options.layers):
        parts.append(_pack(_LAYER, f"layer {k}", ly.kind, ly.flags, ly.input0, ly.input1,
                           *ly.kernel, *ly.stride, *ly.dilation, ly.pad_top, ly.pad_left,
                           ly.depth_multiplier, ly.weights, ly.bias, ly.multipliers, ly.shifts,
                           *ly.p))
    if caches:
        parts.extend(_pack(_CACHE, f"tensor {k} cache", t.cache_offset, t.cache_bytes)
                     for k, t in enumerate(options.tensors))
    blob = b"".join(parts)
    decode(blob)  # never hand out a blob the kernel would reject
    return blob


# ---------------------------------------------------------------------------- decode
def scratch_bytes(blob: bytes) -> int:
    """The header's scratch_bytes (the blob fully validated first)."""
    return decode(blob).scratch_bytes


def decode(blob: bytes) -> PatchOptions:
    """Parse and validate a blob (every rule of docs/patch_exec.md). The result is
    immutable and cached by content (the planner predicts thousands of arenas, each
    reading every PATCH_EXEC's scratch size)."""
    return _decode(bytes(blob))


@functools.lru_cache(maxsize=4096)
def _decode(blob: bytes) -> PatchOptions:
    if len(blob) < HEADER_BYTES:
        raise OptionsError(f"options are {len(blob)} bytes, shorter than the "
                           f"{HEADER_BYTES}-byte header")
    (magic, version, header_bytes, total, num_t, num_l, n, m, scratch, num_inputs, flags,
     r1) = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise OptionsError(f"bad magic {magic!r} (expected {MAGIC!r}): not PATCH_EXEC options")
    if version not in VERSIONS:
        raise OptionsError(f"options format version {version} is not supported "
                           f"(this build reads versions 1, 2 and 3)")
    if header_bytes != HEADER_BYTES or r1 or (version == 1 and flags):
        raise OptionsError(f"header_bytes {header_bytes} != {HEADER_BYTES} or reserved "
                           "fields not 0")
    if flags & ~(FLAG_INPUT_NCHW | FLAG_CACHES | FLAG_PACKED) or \
            bool(flags & FLAG_PACKED) != (version == 3):
        raise OptionsError(f"unknown header flags 0x{flags:04x}, or PACKED without version 3 "
                           "or version 3 without PACKED")
    if not 1 <= num_l <= MAX_LAYERS:
        raise OptionsError(f"num_layers {num_l} outside [1, {MAX_LAYERS}]")
    if num_t != num_l + 1:
        raise OptionsError(f"num_tensors {num_t} != num_layers + 1 = {num_l + 1}")
    if not (1 <= n <= MAX_GRID and 1 <= m <= MAX_GRID):
        raise OptionsError(f"grid {n}x{m} outside [1, {MAX_GRID}]")
    caches = bool(flags & FLAG_CACHES)
    expect = blob_size(num_l, (n, m), caches)
    if total != expect or len(blob) != expect:
        raise OptionsError(f"total_bytes {total}, blob length {len(blob)}, expected {expect} "
                           f"for {num_l} layers and a {n}x{m} grid")
    if num_inputs < 1:
        raise OptionsError("num_inputs is 0 (input 0 is the stage input)")
    tensors = _decode_tensors(blob, num_t, n, m, version, caches)
    layers_at = HEADER_BYTES + num_t * (TENSOR_BYTES + RANGE_BYTES * (n + m))
    layers = _decode_layers(blob, layers_at, num_l, version)
    if caches:
        at = layers_at + LAYER_BYTES * num_l
        tensors = [replace(t, cache_offset=c[0], cache_bytes=c[1]) for t, c in zip(
            tensors, (_CACHE.unpack_from(blob, at + CACHE_BYTES * k) for k in range(num_t)),
            strict=True)]
    options = PatchOptions(tuple(tensors), tuple(layers), (n, m), scratch, num_inputs, flags)
    validate(options)
    return options


def _decode_tensors(blob: bytes, num_t: int, n: int, m: int, version: int,
                    caches: bool) -> list[StageTensor]:
    heads = [_TENSOR.unpack_from(blob, HEADER_BYTES + TENSOR_BYTES * k) for k in range(num_t)]
    pos = HEADER_BYTES + TENSOR_BYTES * num_t
    tensors: list[StageTensor] = []
    for h, w, c, flags, offset, nbytes in heads:
        if version == 1 and flags:
            raise OptionsError(f"tensor {len(tensors)}: reserved field is {flags}")
        if flags & ~TENSOR_CACHE_COLS or (flags and not caches):
            raise OptionsError(f"tensor {len(tensors)}: flags 0x{flags:04x} unknown or "
                               "CACHE_COLS without the header flag CACHES")
        ranges = [_RANGE.unpack_from(blob, pos + RANGE_BYTES * k) for k in range(n + m)]
        pos += RANGE_BYTES * (n + m)
        tensors.append(StageTensor(h, w, c, tuple(ranges[:n]), tuple(ranges[n:]), offset,
                                   nbytes, flags))
    return tensors


def _decode_layers(blob: bytes, pos: int, num_l: int, version: int) -> list[Layer]:
    layers = []
    for k in range(num_l):
        v = _LAYER.unpack_from(blob, pos + LAYER_BYTES * k)
        kind, flags, in0, in1, kh, kw, sh, sw, dh, dw, pt, pl, dm, wi, bi, mi, si = v[:17]
        if version == 1 and flags:
            raise OptionsError(f"layer {k}: reserved byte is {flags}")
        if flags & ~LAYER_STREAM:
            raise OptionsError(f"layer {k}: unknown flags 0x{flags:02x}")
        layers.append(Layer(kind, in0, in1, (kh, kw), (sh, sw), (dh, dw), pt, pl, dm, wi, bi,
                            mi, si, tuple(v[17:]), flags))
    return layers


# -------------------------------------------------------------------------- validate
def validate(o: PatchOptions) -> None:
    n, m = o.grid
    out = o.output
    if n > out.height or m > out.width:
        raise OptionsError(f"grid {n}x{m} is finer than the {out.height}x{out.width} output")
    for k, t in enumerate(o.tensors):
        _check_tensor(o, k, t)
    _check_tiling(out.rows, out.height, "row")
    _check_tiling(out.cols, out.width, "column")
    for k, layer in enumerate(o.layers):
        _check_layer(o, k, layer)
    _check_slots(o)
    _check_scratch_bytes(o)
    constant_specs(o)


def scratch_bound(o: PatchOptions) -> tuple[int, int]:
    """(bytes, regions): the slots and caches laid end to end, REGION_SLACK bytes of
    alignment each; rule 10 bounds scratch_bytes by it."""
    needs = [o.slot_need(k) for k in range(len(o.tensors)) if o.has_slot(k)]
    needs += [t.cache_need() for t in o.tensors if t.cached]
    return sum(needs) + REGION_SLACK * len(needs), len(needs)


def _check_scratch_bytes(o: PatchOptions) -> None:
    """Rule 10: scratch_bytes is at most what the slots and caches need and at most
    MAX_SCRATCH_BYTES."""
    if o.scratch_bytes > MAX_SCRATCH_BYTES:
        raise OptionsError(f"scratch_bytes {o.scratch_bytes} is more than {MAX_SCRATCH_BYTES} "
                           "(2^31 - 16)")
    need, regions = scratch_bound(o)
    if o.scratch_bytes > need:
        raise OptionsError(f"scratch_bytes {o.scratch_bytes} is more than the {need} bytes its "
                           f"{regions} slots and caches need laid end to end ({REGION_SLACK} "
                           "bytes of alignment each)")


def constant_uses(o: PatchOptions, k: int) -> list[tuple[int, str, tuple[int, ...]]]:
    """(operator input, dtype, shape) of each constant layer k reads: weights
    [Cout, KH, KW, Cin] (CONV_2D) or [1, KH, KW, Cout] (DEPTHWISE_CONV_2D) first, then
    bias, multipliers and shifts [Cout]; for MUL its side input, a runtime (non-constant)
    int8 tensor of C elements (dtype RUNTIME_INT8); nothing for other kinds."""
    return [(index, dtype, shape) for index, dtype, shape, _ in constant_slices(o, k)]


def constant_slices(o: PatchOptions, k: int) -> list[tuple[int, str, tuple[int, ...], int]]:
    """constant_uses with each use's element offset in its input (version 3: p[4..7] for
    weights, bias, multipliers, shifts; 0 in versions 1 and 2)."""
    ly = o.layers[k]
    if ly.kind == MUL:
        return [(ly.weights, RUNTIME_INT8, (o.tensors[k + 1].channels,), 0)]
    if ly.kind == ADD and ly.weights != NONE:  # a runtime addend, the output's shape
        t = o.tensors[k + 1]
        return [(ly.weights, RUNTIME_INT8, (t.height, t.width, t.channels), 0)]
    if ly.kind == LUT:  # the table; its element offset in p[4] (version 3)
        return [(ly.weights, "int8", (LUT_ENTRIES,), ly.p[4] if o.packed else 0)]
    if ly.kind not in CONV_KINDS:
        return []
    cout = o.tensors[k + 1].channels
    kh, kw = ly.kernel
    w = (cout, kh, kw, o.tensors[ly.input0].channels) if ly.kind == CONV else (1, kh, kw, cout)
    at = ly.p[4:8] if o.packed else (0, 0, 0, 0)
    uses: list[tuple[int, str, tuple[int, ...], int]] = [(ly.weights, "int8", w, at[0])]
    uses += [(i, "int32", (cout,), off) for i, off in zip(
        (ly.bias, ly.multipliers, ly.shifts), at[1:], strict=True) if i != NONE]
    return uses


def constant_specs(o: PatchOptions) -> dict[int, tuple[str, tuple[int, ...]]]:
    """Operator input -> (dtype, shape) for every constant the layers read: the shape of
    its first use (versions 1 and 2: every use reads the whole input), or with PACKED
    (version 3) `(n,)`, n the most elements a use reads up to (offset + count), the least
    the input must hold. OptionsError when an input is used with another type (or, before
    version 3, element count), or a use ends past 2^31 - 1 bytes (validation rule 5)."""
    seen: dict[int, tuple[str, tuple[int, ...]]] = {}
    for k, ly in enumerate(o.layers):
        for index, dtype, shape, offset in constant_slices(o, k):
            end = offset + math.prod(shape)
            use = (dtype, (end,) if o.packed else shape)
            first = seen.setdefault(index, use)
            size = 4 if dtype == "int32" else 1
            if first[0] != dtype or end * size > MAX_TENSOR_BYTES or \
                    (not o.packed and math.prod(first[1]) != end):
                raise OptionsError(f"layer {k} ({ly.name}): operator input {index} is used "
                                   "with another type or size, or is over 2^31 - 1 bytes")
            if o.packed and end > first[1][0]:
                seen[index] = use
    return seen


def constant_count_ok(o: PatchOptions, elements: int, need: int) -> bool:
    """Does a constant input of `elements` elements satisfy the options' `need`
    (constant_specs)? Exactly before version 3; at least with PACKED."""
    return elements >= need if o.packed else elements == need


def _check_tensor(o: PatchOptions, k: int, t: StageTensor) -> None:
    where = f"tensor {k}"
    if min(t.height, t.width, t.channels) < 1:
        raise OptionsError(f"{where}: size {t.height}x{t.width}x{t.channels} has a zero")
    nbytes = t.height * t.width * t.channels
    if nbytes > MAX_TENSOR_BYTES:
        raise OptionsError(f"{where}: {t.height}x{t.width}x{t.channels} is {nbytes} bytes, "
                           "more than 2^31 - 1")
    for what, ranges, size in (("row", t.rows, t.height), ("column", t.cols, t.width)):
        for b, (lo, hi) in enumerate(ranges):
            if not 0 <= lo <= hi <= size:
                raise OptionsError(f"{where}: {what} range {b} [{lo}, {hi}) is outside "
                                   f"[0, {size})")
    _check_cache(o, k, t, where)
    if not o.has_slot(k):
        if t.slot_offset != EXTERNAL or t.slot_bytes != 0:
            raise OptionsError(f"{where} is the stage {'input' if k == 0 else 'output'}: "
                               "it has no scratch slot")
        return
    if t.slot_offset == EXTERNAL or t.slot_offset + t.slot_bytes > o.scratch_bytes:
        raise OptionsError(f"{where}: slot [{t.slot_offset}, +{t.slot_bytes}) is outside the "
                           f"{o.scratch_bytes}-byte scratch")
    if t.slot_bytes < o.slot_need(k):
        raise OptionsError(f"{where}: slot of {t.slot_bytes} bytes < the largest patch "
                           f"{o.slot_need(k)}")


def _check_cache(o: PatchOptions, k: int, t: StageTensor, where: str) -> None:
    """Rule 9 for CACHE_COLS and the cache table record."""
    if not t.cached:
        if t.cache_offset != EXTERNAL or t.cache_bytes != 0:
            raise OptionsError(f"{where}: has a cache but not the flag CACHE_COLS")
        return
    streamed = 0 < k <= len(o.layers) and o.layers[k - 1].stream
    if not 0 < k < len(o.tensors) - 1 or streamed:
        raise OptionsError(f"{where}: CACHE_COLS only on an intermediate tensor that is not "
                           "the output of a STREAM layer")
    if any(hi <= lo for lo, hi in t.cols):
        raise OptionsError(f"{where}: CACHE_COLS needs every column range non-empty")
    for j in range(1, len(t.cols)):
        if t.cols[j][0] < t.cols[j - 1][0] or t.cols[j][1] < t.cols[j - 1][1]:
            raise OptionsError(f"{where}: CACHE_COLS needs column ranges moving right "
                               f"(band {j} [{t.cols[j][0]}, {t.cols[j][1]}) after "
                               f"[{t.cols[j - 1][0]}, {t.cols[j - 1][1]}))")
    if t.cache_offset == EXTERNAL or t.cache_offset + t.cache_bytes > o.scratch_bytes:
        raise OptionsError(f"{where}: cache [{t.cache_offset}, +{t.cache_bytes}) is outside "
                           f"the {o.scratch_bytes}-byte scratch")
    if t.cache_bytes < t.cache_need():
        raise OptionsError(f"{where}: cache of {t.cache_bytes} bytes < the widest overlap "
                           f"{t.cache_need()}")


def _check_tiling(ranges: tuple[Range, ...], size: int, what: str) -> None:
    expect = 0
    for b, (lo, hi) in enumerate(ranges):
        if lo != expect or hi <= lo:
            raise OptionsError(f"output {what} band {b} [{lo}, {hi}) does not continue the "
                               f"tiling at {expect}")
        expect = hi
    if expect != size:
        raise OptionsError(f"output {what} bands end at {expect}, not at {size}")


def _check_layer(o: PatchOptions, k: int, ly: Layer) -> None:
    where = f"layer {k} ({ly.name})"
    if ly.kind not in KIND_NAMES:
        raise OptionsError(f"layer {k}: unknown kind {ly.kind}")
    if not ly.input0 < k + 1:
        raise OptionsError(f"{where}: input0 {ly.input0} is not produced before it")
    if ly.kind == ADD:
        if (ly.input1 == NONE) == (ly.weights == NONE) or \
                (ly.input1 != NONE and not ly.input1 < k + 1):
            raise OptionsError(f"{where}: input1 {ly.input1} is not produced before it, or "
                               "input1 and a runtime addend (weights) are not exactly one")
    elif ly.kind == CONCAT:
        if not ly.input1 < k + 1:
            raise OptionsError(f"{where}: input1 {ly.input1} is not produced before it")
    elif ly.input1 != NONE:
        raise OptionsError(f"{where}: input1 must be NONE")
    consts = (ly.weights, ly.bias, ly.multipliers, ly.shifts)
    for name, idx in zip(("weights", "bias", "multipliers", "shifts"), consts, strict=True):
        if idx != NONE and not 0 < idx < o.num_inputs:
            raise OptionsError(f"{where}: {name} input {idx} outside [1, {o.num_inputs})")
    if ly.kind in CONV_KINDS and NONE in (ly.weights, ly.multipliers, ly.shifts):
        raise OptionsError(f"{where}: needs weights, multipliers and shifts")
    if ly.kind == MUL and (ly.weights == NONE or consts[1:] != (NONE,) * 3):
        raise OptionsError(f"{where}: needs its side input in weights and nothing else")
    if ly.kind == LUT and (ly.weights == NONE or consts[1:] != (NONE,) * 3):
        raise OptionsError(f"{where}: needs its table in weights and nothing else")
    if ly.kind == ADD and consts[1:] != (NONE,) * 3:
        raise OptionsError(f"{where}: has constant inputs but is not a convolution")
    if ly.kind not in (*CONV_KINDS, MUL, LUT, ADD) and consts != (NONE,) * 4:
        raise OptionsError(f"{where}: has constant inputs but is not a convolution")
    if min(*ly.kernel, *ly.stride, *ly.dilation, ly.depth_multiplier) < 1:
        raise OptionsError(f"{where}: kernel, stride, dilation and depth multiplier must "
                           "be >= 1")
    if ly.kind != DEPTHWISE and ly.depth_multiplier != 1:
        raise OptionsError(f"{where}: depth multiplier must be 1")
    if ly.kind not in CONV_KINDS and ly.dilation != (1, 1):
        raise OptionsError(f"{where}: dilation must be 1")
    if ly.kind in (PAD, ADD, LUT, MUL, CONCAT) and (ly.kernel, ly.stride) != ((1, 1), (1, 1)):
        raise OptionsError(f"{where}: kernel and stride must be 1")
    if ly.stream:
        _check_stream(o, k, ly, where)
    _check_params(where, ly, o.packed)
    _check_shapes(o, k, ly, where)
    _check_halo(o, k, ly, where)


def stream_candidates(layers: Sequence[Layer]) -> list[int]:
    """The layers that may be flagged STREAM (validation rule 9): a CONV_2D followed by a
    depthwise conv with multiplier 1 that alone reads its output."""
    readers = Counter(t for ly in layers for t in (ly.input0, ly.input1) if t != NONE)
    return [k for k in range(len(layers) - 1)
            if layers[k].kind == CONV and layers[k + 1].kind == DEPTHWISE
            and layers[k + 1].depth_multiplier == 1 and layers[k + 1].input0 == k + 1
            and readers[k + 1] == 1]


def _check_stream(o: PatchOptions, k: int, ly: Layer, where: str) -> None:
    """Rule 9: a STREAM CONV_2D is followed by the depthwise (multiplier 1) that alone
    reads its output."""
    nxt = o.layers[k + 1] if k + 1 < len(o.layers) else None
    if (ly.kind != CONV or nxt is None or nxt.kind != DEPTHWISE or nxt.depth_multiplier != 1
            or nxt.input0 != k + 1):
        raise OptionsError(f"{where}: STREAM needs a CONV_2D followed by the "
                           "DEPTHWISE_CONV_2D (depth multiplier 1) that reads its output")
    readers = [j for j, other in enumerate(o.layers)
               if j != k + 1 and k + 1 in (other.input0, other.input1)]
    if readers:
        raise OptionsError(f"{where}: STREAM output tensor {k + 1} is also read by layer "
                           f"{readers[0]}")


def _check_params(where: str, ly: Layer, packed: bool) -> None:
    p = ly.p
    if ly.kind != PAD and not -128 <= p[2] <= p[3] <= 127:
        raise OptionsError(f"{where}: activation range [{p[2]}, {p[3]}] is not within int8")
    if ly.kind == PAD and not -128 <= p[0] <= 127:
        raise OptionsError(f"{where}: pad value {p[0]} is not int8")
    if ly.kind in (*CONV_KINDS, ADD, MUL) and not (-255 <= p[0] <= 255 and
                                                   -255 <= p[1] <= 255):
        raise OptionsError(f"{where}: offsets {p[0]}, {p[1]} outside [-255, 255]")
    if ly.kind == MUL and not (-255 <= p[4] <= 255 and p[5] >= 0 and -31 <= p[6] <= 30):
        raise OptionsError(f"{where}: input2 offset {p[4]}, multiplier {p[5]} or shift "
                           f"{p[6]} out of range")
    if ly.kind == ADD:
        if not -255 <= p[4] <= 255 or not 0 <= p[5] <= 30:
            raise OptionsError(f"{where}: input2 offset {p[4]} or left shift {p[5]} out of "
                               "range")
        for mult, shift in ((p[6], p[7]), (p[8], p[9]), (p[10], p[11])):
            if mult < 0 or not -31 <= shift <= 31:
                raise OptionsError(f"{where}: multiplier {mult} / shift {shift} out of range")
    used = {CONV: 4, DEPTHWISE: 4, AVERAGE_POOL: 4, MAX_POOL: 4, PAD: 1, ADD: 12,
            LUT: 0, MUL: 7, CONCAT: 0}[ly.kind]
    if ly.kind == LUT and packed:
        used = 5
        if p[4] < 0:
            raise OptionsError(f"{where}: table offset {p[4]} is negative")
    if ly.kind == LUT and any(p[:4]):
        raise OptionsError(f"{where}: unused parameters are not 0")
    if ly.kind in CONV_KINDS and packed:
        used = 8
        if min(p[4:8]) < 0 or (ly.bias == NONE and p[5]):
            raise OptionsError(f"{where}: constant offsets {list(p[4:8])} negative, or a bias "
                               "offset without a bias")
    if ly.kind in POOL_KINDS and (p[0] or p[1]):
        raise OptionsError(f"{where}: unused parameters are not 0")
    if any(p[used:]):
        raise OptionsError(f"{where}: unused parameters are not 0")


def _check_shapes(o: PatchOptions, k: int, ly: Layer, where: str) -> None:
    src, dst = o.tensors[ly.input0], o.tensors[k + 1]
    if ly.kind in WINDOW_KINDS:
        for axis, (n_in, n_out) in enumerate(((src.height, dst.height),
                                              (src.width, dst.width))):
            pad = (ly.pad_top, ly.pad_left)[axis]
            if (n_out - 1) * ly.stride[axis] - pad >= n_in:
                raise OptionsError(f"{where}: {n_out} outputs along axis {axis} start past "
                                   f"the {n_in} inputs")
        expect_c = src.channels * ly.depth_multiplier if ly.kind == DEPTHWISE else (
            dst.channels if ly.kind == CONV else src.channels)
        if dst.channels != expect_c:
            raise OptionsError(f"{where}: {dst.channels} output channels, expected {expect_c}")
    elif ly.kind == PAD:
        if (dst.height - src.height - ly.pad_top < 0 or dst.width - src.width - ly.pad_left < 0
                or dst.channels != src.channels):
            raise OptionsError(f"{where}: output {dst.height}x{dst.width}x{dst.channels} is "
                               f"not the padded {src.height}x{src.width}x{src.channels}")
    elif ly.kind in (MUL, LUT):
        if (src.height, src.width, src.channels) != (dst.height, dst.width, dst.channels):
            raise OptionsError(f"{where}: input and output shapes differ")
    elif ly.kind == CONCAT:
        other = o.tensors[ly.input1]
        if (src.height, src.width) != (dst.height, dst.width) or \
                (other.height, other.width) != (dst.height, dst.width) or \
                src.channels + other.channels != dst.channels:
            raise OptionsError(f"{where}: output {dst.height}x{dst.width}x{dst.channels} is "
                               f"not the channels of {src.height}x{src.width}x{src.channels} "
                               f"and {other.height}x{other.width}x{other.channels} joined")
    else:
        other = o.tensors[ly.input1] if ly.input1 != NONE else dst  # runtime addend: dst's
        shapes = {(t.height, t.width, t.channels) for t in (src, other, dst)}
        if len(shapes) != 1:
            raise OptionsError(f"{where}: input and output shapes differ: {sorted(shapes)}")


def needed_range(ly: Layer, axis: int, out: Range, n_in: int) -> Range | None:
    """The in-image input positions [lo, hi) along `axis` that output range `out` reads,
    or None when it reads none."""
    o0, o1 = out
    if o1 <= o0:
        return None
    if ly.kind in WINDOW_KINDS:
        pad = (ly.pad_top, ly.pad_left)[axis]
        return _window_axis(o0, o1, n_in, ly.kernel[axis], ly.stride[axis],
                            ly.dilation[axis], pad)
    shift = (ly.pad_top, ly.pad_left)[axis] if ly.kind == PAD else 0
    lo, hi = max(o0 - shift, 0), min(o1 - shift, n_in)
    return (lo, hi) if lo < hi else None


def _check_halo(o: PatchOptions, k: int, ly: Layer, where: str) -> None:
    dst = o.tensors[k + 1]
    two = ly.kind == CONCAT or (ly.kind == ADD and ly.input1 != NONE)
    inputs = [ly.input0] + ([ly.input1] if two else [])
    for t in inputs:
        src = o.tensors[t]
        for axis, (out_ranges, in_ranges, n_in) in enumerate(
                ((dst.rows, src.rows, src.height), (dst.cols, src.cols, src.width))):
            for b, (out_r, in_r) in enumerate(zip(out_ranges, in_ranges, strict=True)):
                if axis == 1:
                    out_r = dst.computed_cols(b)
                need = needed_range(ly, axis, out_r, n_in)
                if need is not None and not (in_r[0] <= need[0] and need[1] <= in_r[1]):
                    what = "row" if axis == 0 else "column"
                    raise OptionsError(
                        f"{where}: {what} band {b} reads [{need[0]}, {need[1]}) of tensor {t} "
                        f"but only [{in_r[0]}, {in_r[1]}) is kept (halo too small)")


def _check_slots(o: PatchOptions) -> None:
    life = o.lifetimes()
    inner = [k for k in range(len(o.tensors)) if o.has_slot(k)]
    for a in inner:
        for b in inner:
            if b <= a:
                continue
            ta, tb = o.tensors[a], o.tensors[b]
            if life[a][1] < life[b][0] or life[b][1] < life[a][0]:
                continue
            if ta.slot_offset < tb.slot_offset + tb.slot_bytes and \
                    tb.slot_offset < ta.slot_offset + ta.slot_bytes:
                raise OptionsError(f"tensors {a} and {b} are live together but their scratch "
                                   "slots overlap")
    # caches live for the whole run: they overlap no slot and no other cache
    regions = [(t.slot_offset, t.slot_bytes, f"the slot of tensor {k}")
               for k, t in enumerate(o.tensors) if o.has_slot(k)]
    regions += [(t.cache_offset, t.cache_bytes, f"the cache of tensor {k}")
                for k, t in enumerate(o.tensors) if t.cached]
    for k, t in enumerate(o.tensors):
        if not t.cached:
            continue
        for off, size, what in regions:
            if what != f"the cache of tensor {k}" and size > 0 and t.cache_bytes > 0 and \
                    off < t.cache_offset + t.cache_bytes and t.cache_offset < off + size:
                raise OptionsError(f"the cache of tensor {k} overlaps {what}")

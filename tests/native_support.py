"""Helpers of the native-core tests: skips with the reason, patched stages, the
malformed blobs with the status the C validator must give."""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from native_fuzz import with_version2

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.model import Model, OperatorInfo, TensorInfo, load_model, model_from_object
from tflm_patch.native import Status
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import band_ranges, make_schedule
from tflm_patch.stage import StageGraph, build_stage
from tflm_patch.zoo import ensure_model


@functools.cache
def _unavailable(variant: str) -> str | None:
    return native.unavailable_reason(variant)


def core(variant: str = "release") -> native.CoreLibrary:
    """The core library (built if needed); skips the test, saying why, when it cannot be
    built here (no compiler, no sanitizer runtime)."""
    reason = _unavailable(variant)
    if reason is not None:
        pytest.skip(f"PATCH_EXEC core ({variant}) unavailable: {reason}")
    return native.load(variant)


def require_asan() -> None:
    reason = _unavailable("asan")
    if reason is not None:
        pytest.skip(f"PATCH_EXEC core (asan) unavailable: {reason}")


@functools.cache
def zoo(name: str) -> Model:
    return load_model(ensure_model(name))


@dataclass(frozen=True)
class PatchedStage:
    model: Model  # the original
    patched: Model
    op: OperatorInfo  # the PATCH_EXEC operator of `patched`
    graph: StageGraph

    @property
    def blob(self) -> bytes:
        return self.op.custom_options or b""


def patched_stage(model: Model, first: int, last: int, grid: tuple[int, int], *,
                  cache: bool = False) -> PatchedStage:
    """The stage converted with an n x m grid; `cache`: with halo caches (CACHE_COLS)."""
    graph = build_stage(model, first, last)
    sched = make_schedule(graph, grid, cache=cache)
    patched = model_from_object(replace_stage(model, graph, sched))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    return PatchedStage(model, patched, op, graph)


def random_input(model: Model, seed: int) -> np.ndarray:
    shape = model.tensors[model.inputs[0]].shape
    return np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)


def assert_stage_equals_model(model: Model, last: int, grid: tuple[int, int],
                              cache: bool) -> None:
    """Operators 0..last as one stage with `grid`: the numpy reference and the C core
    (release and portable builds) give the model's own stage output, byte for byte."""
    from tflm_patch.native import run_patch_exec_native
    from tflm_patch.patch_ref import run_patch_exec
    from tflm_patch.ref_params import run_graph

    core()
    s = patched_stage(model, 0, last, grid, cache=cache)
    values = run_graph(model, [random_input(model, sum(grid))])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    np.testing.assert_array_equal(run_patch_exec(s.patched, s.op, stage_in), want)
    for variant in ("release", "portable"):
        np.testing.assert_array_equal(
            run_patch_exec_native(s.patched, s.op, stage_in, variant=variant), want)


def assert_converted_bit_identical(model: Model, ops: set[int], seed: int) -> None:
    """The default plan puts operators `ops` inside its stages, and the patched model is
    bit-identical with the original in x86 TFLM with the C++ kernel (skips without it)."""
    from tflm_patch import api
    from tflm_patch.tflm_build import kernel_or_reason

    kernel, reason = kernel_or_reason()
    if kernel is None:
        pytest.skip(f"the PATCH_EXEC kernel cannot be built here: {reason}")
    result = api.plan(model.raw)
    inside = {i for st in result.stages for i in range(st.first_op, st.last_op + 1)}
    assert ops <= inside, f"operators {sorted(ops - inside)} outside the stages"
    cmp = api.validate(model.raw, result.patched, seed=seed)
    assert cmp.identical and "C++ kernel" in cmp.executor, cmp.executor


def stage_end_before_mean(model: Model) -> int:
    """The last operator before the global pooling: ops 0..it form one stage."""
    return next(op.index for op in model.operators if op.name == "MEAN") - 1


def assert_clean_under_asan(model: Model, last: int, grids: Sequence[tuple[int, int]],
                            bad: Sequence[tuple[str, bytes]]) -> None:
    """Operators 0..last as one stage on every grid (with and without halo caches), and the
    malformed blobs `bad` (case, blob), in the core built with AddressSanitizer + UBSan: no
    report, the model's bytes."""
    from native_sanitize import NativeJob, RunCase, ValidateCase, run_job_sanitized

    from tflm_patch.ref_params import run_graph

    require_asan()
    lib = native.load("release")
    runs = []
    for grid in grids:
        for cache in (False, True):
            s = patched_stage(model, 0, last, grid, cache=cache)
            values = run_graph(model, [random_input(model, sum(grid))])
            consts = tuple(native.model_constants(s.patched, s.op, lib))
            runs.append(RunCase(f"{grid} cache={cache}", s.blob, values[s.graph.input], consts,
                                values[s.graph.output]))
    job = NativeJob("asan", validate=tuple(ValidateCase(c, b, None) for c, b in bad),
                    run=tuple(runs))
    result = run_job_sanitized(job, timeout=900)
    assert result.report is None, f"sanitizer report: {result.report}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, result.stderr[-4000:]


def assert_stage_checksum_on_m4(model: Model, last: int, grid: tuple[int, int],
                                directory: Path, label: str) -> None:
    """Operators 0..last as one stage: its output checksum on QEMU (Cortex-M4, DSP
    kernels) equals the numpy reference's (skips without the toolchain)."""
    import m4

    from tflm_patch.ref_params import run_graph

    reason = m4.toolchain_reason(qemu=True)
    if reason:
        pytest.skip(reason)
    s = patched_stage(model, 0, last, grid, cache=grid != (1, 1))
    stage_in = run_graph(model, [random_input(model, 3)])[s.graph.input]
    cases = m4.make_cases(s.patched, stage_in, [s.op.index])
    run = m4.run_qemu(m4.build_harness(s.patched, cases, directory, label).elf)
    assert run.checksums()[s.op.index] == f"{cases[0].checksum:08x}", run.output


# ------------------------------------------------------------------ version 2


def version2_op(s: PatchedStage, *, nchw: bool, stream: bool, bias: bool = True
                ) -> OperatorInfo:
    """The stage's PATCH_EXEC operator with INPUT_NCHW set or not and STREAM on every
    conv -> depthwise pair (or on none), slots packed anew; without `bias`, no conv
    layer reads a bias (then only the options' own semantics apply: compare with
    patch_ref, not with the original model)."""
    o = with_version2(pf.decode(s.blob), nchw=nchw, stream=stream)
    if not bias:
        o = replace(o, layers=tuple(replace(ly, bias=pf.NONE) if ly.kind in pf.CONV_KINDS
                                    else ly for ly in o.layers))
    assert o.input_nchw == nchw and any(ly.stream for ly in o.layers) == stream
    return replace(s.op, custom_options=pf.encode(o))


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class ArrayModel(Model):
    """A model holding one PATCH_EXEC operator whose constant inputs are numpy arrays:
    patch_ref.run_patch_exec on synthetic options."""

    arrays: tuple[np.ndarray | None, ...] = ()

    def constant(self, tensor_index: int) -> np.ndarray:
        arr = self.arrays[tensor_index]
        assert arr is not None
        return arr


def array_model(o: pf.PatchOptions, consts: Sequence[np.ndarray | None]
                ) -> tuple[Model, OperatorInfo]:
    """(model, operator) for patch_ref.run_patch_exec: tensor i is operator input i
    (constants from `consts`), tensor num_inputs the output."""
    tensors = []
    for i, arr in enumerate(consts):
        if i == 0 or arr is None:
            tensors.append(TensorInfo(i, f"t{i}", (1,), "int8", 0, False, False, None, 1))
        else:
            tensors.append(TensorInfo(i, f"t{i}", tuple(arr.shape), str(arr.dtype), 0, True,
                                      False, None, arr.nbytes))
    out = len(consts)
    op = OperatorInfo(0, CUSTOM_CODE, None, tuple(range(out)), (out,), None, pf.encode(o))
    model = ArrayModel(tuple(tensors), (op,), (0,), (out,), 1, b"", None, tuple(consts))
    return model, op


def _window(n: int, k: int, s: int, same: bool) -> tuple[int, int]:
    """(pad before, outputs) of TFLite's SAME or VALID padding along one axis."""
    if not same:
        return 0, (n - k) // s + 1
    out = -(-n // s)
    return max((out - 1) * s + k - n, 0) // 2, out


def stream_stage(*, stride: int, bias: bool, same: bool, grid: tuple[int, int], nchw: bool,
                 tail: bool, seed: int) -> pf.PatchOptions:
    """A conv (3x3 SAME or 1x1 VALID) -> depthwise (3x3, `stride`, SAME or VALID) pair
    of 18 channels flagged STREAM, optionally followed by a 1x1 conv (`tail`: the pair's
    output is then a scratch tensor, else the stage output)."""
    rng = random.Random(seed)
    shapes = [(13, 11, 3)]
    layers: list[pf.Layer] = []
    specs = [(3 if same else 1, 1, 18, pf.CONV), (3, stride, 18, pf.DEPTHWISE)]
    if tail:
        specs.append((1, 1, 5, pf.CONV))
    for k, (kernel, s, cout, kind) in enumerate(specs):
        h, w, _ = shapes[-1]
        top, oh = _window(h, kernel, s, same)
        left, ow = _window(w, kernel, s, same)
        p = (rng.randrange(-127, 129), rng.randrange(-128, 128), -128 + 10 * k, 127) + (0,) * 8
        first = 1 + 4 * k
        layers.append(pf.Layer(kind, k, kernel=(kernel, kernel), stride=(s, s), pad_top=top,
                               pad_left=left, weights=first,
                               bias=first + 1 if bias else pf.NONE, multipliers=first + 2,
                               shifts=first + 3, p=p))
        shapes.append((oh, ow, cout))
    rows = band_ranges(layers, shapes, 0, grid[0])
    cols = band_ranges(layers, shapes, 1, grid[1])
    tensors = tuple(pf.StageTensor(h, w, c, tuple(rows[t]), tuple(cols[t]))
                    for t, (h, w, c) in enumerate(shapes))
    o = pf.PatchOptions(tensors, tuple(layers), grid, 0, 1 + 4 * len(layers))
    return with_version2(o, nchw=nchw, stream=True)


# ------------------------------------------------------------------ malformed blobs


@functools.cache
def base_blob(version: int = 1) -> bytes:
    """The blob of tests/test_patch_format.py's fixture: odd_stride2 ops 0..3, grid 3x2,
    as version 1, or as version 2 (INPUT_NCHW, layers 0 and 2 STREAM)."""
    from test_patch_format import base_options

    return pf.encode(base_options(version))


def _bad_cases() -> dict[str, tuple[Callable[[pf.PatchOptions, bytearray], bytes], str]]:
    from test_patch_format import BAD, BAD_V2

    return {**BAD, **BAD_V2}


# C status of each malformed case of test_patch_format.BAD
BAD_STATUS: dict[str, Status] = {
    "empty": Status.TRUNCATED, "truncated": Status.TRUNCATED, "trailing byte": Status.COUNTS,
    "bad magic": Status.MAGIC, "version 4": Status.VERSION,
    "version 3 without PACKED": Status.COUNTS, "header size": Status.VERSION,
    "total bytes": Status.COUNTS, "tensor count": Status.COUNTS, "zero layers": Status.COUNTS,
    "huge grid": Status.COUNTS, "zero grid": Status.COUNTS, "no inputs": Status.COUNTS,
    "reserved": Status.COUNTS, "zero height": Status.TENSOR,
    "slot past scratch": Status.TENSOR, "slot too small": Status.TENSOR,
    "input has a slot": Status.TENSOR, "range past tensor": Status.RANGE,
    "output gap": Status.RANGE, "halo too small": Status.HALO, "unknown kind": Status.LAYER,
    "reads the future": Status.LAYER, "conv without weights": Status.LAYER,
    "weights index": Status.LAYER, "input 0 as weights": Status.LAYER,
    "zero stride": Status.LAYER, "activation range": Status.LAYER,
    "unused parameter": Status.LAYER, "channel mismatch": Status.SHAPE,
    "pool with dilation": Status.LAYER, "constant of two types": Status.LAYER,
    # test_patch_format.BAD_V2 (version 2: INPUT_NCHW, STREAM)
    "v2 unknown header flag": Status.COUNTS, "v2 header flag in version 1": Status.COUNTS,
    "v2 layer flag in version 1": Status.LAYER, "v2 unknown layer flag": Status.LAYER,
    "v2 stream on a depthwise": Status.LAYER, "v2 stream on the last layer": Status.LAYER,
    "v2 stream partner with depth multiplier 2": Status.LAYER,
    "v2 stream partner reads another tensor": Status.LAYER,
    "v2 stream output read twice": Status.LAYER, "v2 stream output slot too small": Status.TENSOR,
    "v2 input without a slot": Status.TENSOR, "v2 input slot too small": Status.TENSOR,
    "v2 input slot overlaps tensor 1": Status.SLOT_OVERLAP,
    "v2 stream input lives until the depthwise": Status.SLOT_OVERLAP,
}


# ------------------------------------------------------------------ halo caches

# test_halo_cache.CASES: real stages converted with caches (make_schedule(cache=True))
CACHE_CASES = [
    ("mbv2_035_144", 0, 9, (3, 3)), ("mbv2_035_144", 0, 20, (2, 5)),
    ("mbv1_025_96", 0, 10, (2, 4)), ("pools_dilated", 0, 7, (2, 3)),
    ("mcunet_dw57", 0, 12, (2, 4)), ("odd_stride2", 0, 4, (3, 3)),
    ("nchw_input", 0, 10, (2, 3)),
]


def cached_stage(name: str, first: int, last: int, grid: tuple[int, int]) -> PatchedStage:
    s = patched_stage(zoo(name), first, last, grid, cache=True)
    assert any(t.cached for t in pf.decode(s.blob).tensors)
    return s


@functools.cache
def cache_options() -> pf.PatchOptions:
    """test_halo_cache's fixture: mbv2_035_144 ops 0..9, grid 3x3, with caches."""
    return pf.decode(cached_stage("mbv2_035_144", 0, 9, (3, 3)).blob)


# C status of each malformed case of test_halo_cache.MALFORMED
CACHE_BAD_STATUS: dict[str, Status] = {
    "cache on the stage input": Status.TENSOR, "cache on a STREAM output": Status.TENSOR,
    "cache too small": Status.TENSOR, "cache outside the scratch": Status.TENSOR,
    "cache over a slot": Status.SLOT_OVERLAP, "columns moving left": Status.TENSOR,
    "empty column range": Status.TENSOR, "cache record without the flag": Status.TENSOR,
    "unknown tensor flag": Status.TENSOR,
}


def cache_bad_blob(case: str) -> tuple[bytes, str]:
    """(blob, Python message pattern) of a test_halo_cache.MALFORMED case (written
    without validation)."""
    from test_halo_cache import MALFORMED

    breaker, message = MALFORMED[case]
    return encode_raw(breaker(cache_options())), message


def _cached(o: pf.PatchOptions) -> list[int]:
    return [k for k, t in enumerate(o.tensors) if t.cached]


def _set_tensor(o: pf.PatchOptions, k: int, **changes: int) -> pf.PatchOptions:
    tensors = list(o.tensors)
    tensors[k] = replace(tensors[k], **changes)  # type: ignore[arg-type]
    return replace(o, tensors=tuple(tensors))


def _without_table(blob: bytes, num_t: int, version: int, flags: int) -> bytes:
    b = bytearray(blob[:len(blob) - pf.CACHE_BYTES * num_t])
    struct.pack_into("<HH", b, 4, version, pf.HEADER_BYTES)
    struct.pack_into("<I", b, 8, len(b))
    struct.pack_into("<H", b, 26, flags)
    return bytes(b)


def extra_cache_cases() -> dict[str, tuple[bytes, Status, str]]:
    """More malformed cache blobs: (blob, C status, Python message pattern)."""
    o = cache_options()
    blob = pf.encode(o)
    num_t = len(o.tensors)
    first, second = _cached(o)[:2]
    a, b = o.tensors[first], o.tensors[second]
    scratch = max(o.scratch_bytes, a.cache_offset + b.cache_bytes)
    return {
        "cache flag in version 1": (_without_table(blob, num_t, 1, 0), Status.TENSOR,
                                    "reserved field"),
        "CACHE_COLS without the header flag CACHES": (
            _without_table(blob, num_t, 2, o.flags & ~pf.FLAG_CACHES), Status.TENSOR,
            "without the header flag CACHES"),
        "CACHES without its table": (_without_table(blob, num_t, 2, o.flags), Status.COUNTS,
                                     "total_bytes"),
        "cache table truncated": (blob[:-1], Status.TRUNCATED, "total_bytes"),
        "unknown header flag 0x0004": (_poke(blob, "<H", 26, o.flags | 4), Status.COUNTS,
                                       f"unknown header flags 0x{o.flags | 4:04x}"),
        "cache over another cache": (
            encode_raw(replace(_set_tensor(o, second, cache_offset=a.cache_offset),
                               scratch_bytes=scratch)),
            Status.SLOT_OVERLAP, f"the cache of tensor {first} overlaps the cache of tensor"),
        "flag cleared: the whole range reads past the halo": (
            encode_raw(_set_tensor(o, first, flags=0, cache_offset=pf.EXTERNAL,
                                   cache_bytes=0)), Status.HALO, "halo too small"),
        "cache offset EXTERNAL": (encode_raw(_set_tensor(o, first, cache_offset=pf.EXTERNAL)),
                                  Status.TENSOR, "outside the"),
        "cache offset + bytes wraps 32 bits": (
            encode_raw(_set_tensor(o, first, cache_offset=0xFFFFFF00, cache_bytes=0x200)),
            Status.TENSOR, "outside the"),
        "cache on the stage output": (
            encode_raw(_set_tensor(o, num_t - 1, flags=pf.TENSOR_CACHE_COLS,
                                   cache_offset=0, cache_bytes=0)),
            Status.TENSOR, "only on an intermediate tensor"),
    }


def encode_raw(o: pf.PatchOptions) -> bytes:
    """pf.encode without its final validation (malformed options)."""
    saved = pf.decode
    pf.decode = lambda blob: o
    try:
        return pf.encode(o)
    finally:
        pf.decode = saved


def bad_blob(case: str) -> tuple[bytes, str]:
    """(blob, Python message pattern) of a test_patch_format.BAD or BAD_V2 case."""
    mutate, message = _bad_cases()[case]
    blob = base_blob(2 if case.startswith("v2 ") else 1)
    return mutate(pf.decode(blob), bytearray(blob)), message


def _poke(blob: bytes, fmt: str, offset: int, *values: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def _tensor_offset(t: int) -> int:
    return pf.HEADER_BYTES + pf.TENSOR_BYTES * t


def _layer_offset(o: pf.PatchOptions, k: int) -> int:
    num_t = len(o.tensors)
    return pf.HEADER_BYTES + pf.TENSOR_BYTES * num_t + pf.RANGE_BYTES * num_t * sum(o.grid) \
        + pf.LAYER_BYTES * k


def overlapping_slots(blob: bytes) -> bytes:
    """Tensor 2 moved onto tensor 1's slot (layer 1 reads 1 and writes 2: both live)."""
    o = pf.decode(blob)
    t1, t2 = o.tensors[1], o.tensors[2]
    b = _poke(blob, "<I", _tensor_offset(2) + 8, t1.slot_offset)
    return _poke(b, "<I", 20, max(o.scratch_bytes, t1.slot_offset + t2.slot_bytes))


def extra_cases() -> dict[str, tuple[bytes, Status | None]]:
    """More malformed (or borderline) blobs: expected C status, or None where only the
    agreement with Python is required."""
    blob = base_blob()
    o = pf.decode(blob)
    last = _layer_offset(o, len(o.layers) - 1)
    huge_l, huge_n = pf.MAX_LAYERS, pf.MAX_GRID
    huge_total = pf.blob_size(huge_l, (huge_n, huge_n))
    cases: dict[str, tuple[bytes, Status | None]] = {
        "version 0": (_poke(blob, "<H", 4, 0), Status.VERSION),
        "version 0xFFFF": (_poke(blob, "<H", 4, 0xFFFF), Status.VERSION),
        "max counts, consistent total": (
            _poke(blob, "<IHHHH", 8, huge_total, huge_l + 1, huge_l, huge_n, huge_n),
            Status.TRUNCATED),
        "max counts, total 2^32-1": (
            _poke(blob, "<IHHHH", 8, 0xFFFFFFFF, huge_l + 1, huge_l, huge_n, huge_n),
            Status.COUNTS),
        "num_layers 0xFFFF": (_poke(blob, "<HH", 12, 0, 0xFFFF), Status.COUNTS),
        "slot offset + bytes wraps 32 bits": (
            _poke(blob, "<II", _tensor_offset(1) + 8, 0xFFFFFF00, 0x200), Status.TENSOR),
        "inner tensor without a slot": (
            _poke(blob, "<I", _tensor_offset(1) + 8, pf.EXTERNAL), Status.TENSOR),
        "range lo > hi": (_poke(blob, "<HH", pf.HEADER_BYTES + pf.TENSOR_BYTES * len(o.tensors),
                                5, 4), Status.RANGE),
        "input0 NONE": (_poke(blob, "<H", last + 2, pf.NONE), Status.LAYER),
        "huge stride": (_poke(blob, "<H", _layer_offset(o, 0) + 10, 0xFFFF), Status.SHAPE),
        "huge kernel": (_poke(blob, "<HH", _layer_offset(o, 0) + 6, 0xFFFF, 0xFFFF), None),
        "huge dilation": (_poke(blob, "<HH", _layer_offset(o, 0) + 14, 0xFFFF, 0xFFFF), None),
        "huge padding": (_poke(blob, "<HH", _layer_offset(o, 0) + 18, 0xFFFF, 0xFFFF), None),
        "depth multiplier on a conv": (_poke(blob, "<H", _layer_offset(o, 0) + 22, 2),
                                       Status.LAYER),
        "conv turned into ADD": (_poke(blob, "<B", _layer_offset(o, 0), pf.ADD), Status.LAYER),
        "overlapping live slots": (overlapping_slots(blob), Status.SLOT_OVERLAP),
    }
    shared_slots = _shared_slot_blob(o)
    if shared_slots is not None:
        cases["slots of tensors never live together share bytes"] = (shared_slots, Status.OK)
    cases.update(_extra_v2_cases())
    return cases


def _extra_v2_cases() -> dict[str, tuple[bytes, Status | None]]:
    from test_patch_format import _share_fresh_slot

    blob = base_blob(2)
    o = pf.decode(blob)
    b = bytearray(blob)
    return {
        "v2 version 1 blob read as version 2": (_poke(base_blob(1), "<H", 4, 2), Status.OK),
        "v2 input slot shares with a later tensor": (_share_fresh_slot(0, 3)(o, b), Status.OK),
        "v2 header flags 0x8000": (_poke(blob, "<H", 26, 0x8001), Status.COUNTS),
        "v2 layer flags 0x80": (_poke(blob, "<B", _layer_offset(o, 0) + 1, 0x81), Status.LAYER),
        "v2 stream output slot wraps 32 bits": (
            _poke(blob, "<II", _tensor_offset(1) + 8, 0xFFFFFF00, 0x200), Status.TENSOR),
        "v2 no header flags: tensor 0 keeps a slot": (_poke(blob, "<H", 26, 0), Status.TENSOR),
    }


def _shared_slot_blob(o: pf.PatchOptions) -> bytes | None:
    life = o.lifetimes()
    inner = range(1, len(o.tensors) - 1)
    pairs = [(a, b) for a in inner for b in inner if a < b and life[a][1] < life[b][0]]
    if not pairs:
        return None
    a, b = pairs[0]
    tensors = list(o.tensors)
    tensors[b] = replace(tensors[b], slot_offset=tensors[a].slot_offset)
    scratch = max(o.scratch_bytes, tensors[a].slot_offset + tensors[b].slot_bytes)
    return pf.encode(replace(o, tensors=tuple(tensors), scratch_bytes=scratch))


def python_accepts(blob: bytes) -> bool:
    try:
        pf.decode(blob)
    except pf.OptionsError:
        return False
    return True

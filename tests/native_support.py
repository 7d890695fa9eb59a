"""Helpers of the native-core tests: skips with the reason, patched stages, the
malformed blobs with the status the C validator must give."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.model import Model, OperatorInfo, load_model, model_from_object
from tflm_patch.native import Status
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.schedule import make_schedule
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


def patched_stage(model: Model, first: int, last: int, grid: tuple[int, int]) -> PatchedStage:
    graph = build_stage(model, first, last)
    patched = model_from_object(replace_stage(model, graph, make_schedule(graph, grid)))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    return PatchedStage(model, patched, op, graph)


def random_input(model: Model, seed: int) -> np.ndarray:
    shape = model.tensors[model.inputs[0]].shape
    return np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)


# ------------------------------------------------------------------ malformed blobs


@functools.cache
def base_blob() -> bytes:
    """The blob of tests/test_patch_format.py's fixture: odd_stride2 ops 0..3, grid 3x2."""
    return patched_stage(zoo("odd_stride2"), 0, 3, (3, 2)).blob


def _bad_cases() -> dict[str, tuple[Callable[[pf.PatchOptions, bytearray], bytes], str]]:
    from test_patch_format import BAD

    return BAD


# C status of each malformed case of test_patch_format.BAD
BAD_STATUS: dict[str, Status] = {
    "empty": Status.TRUNCATED, "truncated": Status.TRUNCATED, "trailing byte": Status.COUNTS,
    "bad magic": Status.MAGIC, "version 2": Status.VERSION, "header size": Status.VERSION,
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
}


def bad_blob(case: str) -> tuple[bytes, str]:
    """(blob, Python message pattern) of a test_patch_format.BAD case."""
    mutate, message = _bad_cases()[case]
    blob = base_blob()
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
    return cases


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

"""Fuzzing the options decoder (issue 4, item 4): the C validator (ASan + UBSan build)
must agree with patch_format on every mutated blob, and accepted blobs must run like the
numpy reference. Time-bounded: $TFLM_PATCH_FUZZ_SECONDS per engine (default 10; the
command line default is 60: ``python tools/native_child.py fuzz``)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import native_fuzz
import numpy as np
import pytest
from native_fuzz import (
    DEFAULT_CORPUS,
    FuzzFailure,
    FuzzStats,
    atheris_available,
    check_blob,
    load_corpus,
    mutate,
)
from native_sanitize import child_command
from native_support import BAD_STATUS, core, require_asan

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.native import Status, Validation

SECONDS = float(os.environ.get("TFLM_PATCH_FUZZ_SECONDS", "10"))


def test_seed_corpus_is_small_and_covers_the_cases() -> None:
    names = {p.stem for p in DEFAULT_CORPUS.glob("*.bin")}
    assert {f"bad_{c.replace(' ', '_')}" for c in BAD_STATUS} <= names
    assert any(n.startswith("real_") for n in names)
    assert any(n.startswith("synthetic_") for n in names)
    assert all(p.stat().st_size <= 4096 for p in DEFAULT_CORPUS.glob("*.bin"))
    valid = [o for o in map(_decoded, load_corpus()) if o is not None]
    assert any(o.version == 1 for o in valid)
    assert any(o.input_nchw for o in valid) and any(ly.stream for o in valid for ly in o.layers)
    assert any(t.cached for o in valid for t in o.tensors)
    assert {f"bad_v2_cache_{n}" for n in ("cache_too_small", "cache_over_a_slot",
                                          "columns_moving_left")} <= names


def _decoded(blob: bytes) -> pf.PatchOptions | None:
    try:
        return pf.decode(blob)
    except pf.OptionsError:
        return None


def test_seed_corpus_replays() -> None:
    lib = core()
    stats = FuzzStats()
    rng = np.random.default_rng(0)
    for blob in load_corpus():
        check_blob(lib, blob, rng, stats)
    assert stats.accepted > 0 and stats.compared > 0
    assert stats.statuses[Status.OK.name] < stats.inputs


def test_mutations_are_seeded() -> None:
    corpus = load_corpus()
    a = [mutate(corpus[i % len(corpus)], random.Random(i), corpus) for i in range(200)]
    b = [mutate(corpus[i % len(corpus)], random.Random(i), corpus) for i in range(200)]
    assert a == b
    assert sum(x != corpus[i % len(corpus)] for i, x in enumerate(a)) > 150


@pytest.mark.slow
def test_mutations_reach_version2_flags() -> None:
    """Mutants (flag toggles among them) are version 2 with INPUT_NCHW or a STREAM set,
    valid and not: the fuzzer reaches rules 8 and 9 from both sides."""
    corpus = load_corpus()
    mutants = [mutate(corpus[i % len(corpus)], random.Random(i), corpus) for i in range(3000)]
    flagged = [m for m in mutants if len(m) >= 32 and m[4:6] == b"\x02\x00" and
               (m[26] & pf.FLAG_INPUT_NCHW or _any_stream(m))]
    valid = sum(_decoded(m) is not None for m in flagged)
    assert valid > 10 and len(flagged) - valid > 100


@pytest.mark.slow
def test_mutations_reach_halo_caches() -> None:
    """Mutants with the header flag CACHES and a CACHE_COLS tensor, valid and not: the
    fuzzer reaches the cache rules from both sides."""
    corpus = load_corpus()
    mutants = [mutate(corpus[i % len(corpus)], random.Random(i), corpus) for i in range(3000)]
    flagged = [m for m in mutants if len(m) >= 32 and m[4:6] == b"\x02\x00" and
               m[26] & pf.FLAG_CACHES]
    valid = [o for o in map(_decoded, flagged) if o is not None]
    assert sum(any(t.cached for t in o.tensors) for o in valid) > 10
    assert len(flagged) - len(valid) > 100


@dataclass
class _LenientCore:
    """A broken validator (accepts everything) wrapped around the real core."""

    real: native.CoreLibrary

    def validate(self, blob: bytes) -> Validation:
        return Validation(Status.OK, "")

    def __getattr__(self, name: str) -> Callable[..., object]:
        return getattr(self.real, name)  # type: ignore[no-any-return]


def test_a_disagreement_is_a_failure() -> None:
    lib = core()
    blob = next(b for b in load_corpus() if not _accepts(b))
    with pytest.raises(FuzzFailure, match="validators disagree"):
        check_blob(_LenientCore(lib), blob, np.random.default_rng(0), FuzzStats())


def _any_stream(blob: bytes) -> bool:
    o = _decoded(blob)
    return o is not None and any(ly.stream for ly in o.layers)


def _accepts(blob: bytes) -> bool:
    try:
        pf.decode(blob)
    except pf.OptionsError:
        return False
    return True


def _fuzz(engine: str) -> subprocess.CompletedProcess[str]:
    cmd = child_command(["fuzz", "--engine", engine,
                         "--seconds", str(SECONDS), "--seed", "1"])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS * 4 + 300,
                          check=False)


@pytest.mark.slow
def test_builtin_fuzzer_under_asan() -> None:
    require_asan()
    proc = _fuzz("builtin")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fuzz ok (builtin, asan)" in proc.stderr
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr


@pytest.mark.slow
def test_atheris_fuzzer_then_asan_replay() -> None:
    require_asan()
    if not atheris_available():
        pytest.skip("atheris is not installed (pip install atheris; it is in the dev extras)")
    proc = _fuzz("atheris")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DONE" in proc.stderr and "fuzz ok (replay, asan)" in proc.stderr
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr


def test_cache_record_mutation_stays_in_range_on_huge_tensors() -> None:
    """The mutator's guessed cache size fits its uint32 field even for 65535-sized
    tensors (it once overflowed struct.pack and stopped the fuzzer)."""
    blobs = [b for b in load_corpus() if native_fuzz._has_caches(b)]
    assert blobs
    for blob in blobs[:8]:
        b = bytearray(blob)
        num_t = struct.unpack_from("<H", b, 12)[0]
        for t in range(num_t):
            struct.pack_into("<HHH", b, pf.HEADER_BYTES + pf.TENSOR_BYTES * t,
                             0xFFFF, 0xFFFF, 0xFFFF)
        for seed in range(64):
            native_fuzz._toggle_cache_cols(bytearray(b), random.Random(seed))

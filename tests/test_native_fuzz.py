"""Fuzzing the options decoder (issue 4, item 4): the C validator (ASan + UBSan build)
must agree with patch_format on every mutated blob, and accepted blobs must run like the
numpy reference. Time-bounded: $TFLM_PATCH_FUZZ_SECONDS per engine (default 10; the
command line default is 60: ``python -m tflm_patch.native fuzz``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from native_support import BAD_STATUS, core, require_asan

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.native import Status, Validation
from tflm_patch.native_fuzz import (
    DEFAULT_CORPUS,
    FuzzFailure,
    FuzzStats,
    atheris_available,
    check_blob,
    load_corpus,
    mutate,
)

SECONDS = float(os.environ.get("TFLM_PATCH_FUZZ_SECONDS", "10"))


def test_seed_corpus_is_small_and_covers_the_cases() -> None:
    names = {p.stem for p in DEFAULT_CORPUS.glob("*.bin")}
    assert {f"bad_{c.replace(' ', '_')}" for c in BAD_STATUS} <= names
    assert any(n.startswith("real_") for n in names)
    assert any(n.startswith("synthetic_") for n in names)
    assert all(p.stat().st_size <= 4096 for p in DEFAULT_CORPUS.glob("*.bin"))


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


def _accepts(blob: bytes) -> bool:
    try:
        pf.decode(blob)
    except pf.OptionsError:
        return False
    return True


def _fuzz(engine: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tflm_patch.native", "fuzz", "--engine", engine,
           "--seconds", str(SECONDS), "--seed", "1"]
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

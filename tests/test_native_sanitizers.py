"""The core built with AddressSanitizer + UndefinedBehaviorSanitizer, in child processes
(the ASan runtime must be preloaded into Python): validation of every malformed blob and
runs of real and synthetic stages; any sanitizer report fails the test."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import shared_model_path
from native_support import (
    BAD_STATUS,
    PatchedStage,
    bad_blob,
    base_blob,
    extra_cases,
    patched_stage,
    random_input,
    require_asan,
    zoo,
)

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.native import NativeJob, RunCase, Status, ValidateCase
from tflm_patch.native_fuzz import random_constants, random_stage, stage_reference
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.ref_params import run_graph


def _run(job: NativeJob) -> None:
    require_asan()
    result = native.run_job_sanitized(job, timeout=900)
    assert result.report is None, f"sanitizer report: {result.report}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{len(job.validate)} validate and {len(job.run)} run cases, 0 failures" in \
        result.stderr


def test_a_heap_overflow_is_reported() -> None:
    """The harness works: an output buffer one byte short ends in an ASan report."""
    require_asan()
    result = native.run_sanitized(["canary"], timeout=300)
    assert result.returncode != 0
    assert result.report is not None and "heap-buffer-overflow" in result.report


def test_validate_malformed_blobs_under_asan() -> None:
    blob = base_blob()
    cases = [ValidateCase(f"BAD {c}", bad_blob(c)[0], s) for c, s in BAD_STATUS.items()]
    cases += [ValidateCase(c, b, s) for c, (b, s) in extra_cases().items() if s is not None]
    cases += [ValidateCase(f"truncated to {n}", blob[:n], Status.TRUNCATED)
              for n in range(len(blob))]
    cases += [ValidateCase("valid", blob, Status.OK)]
    rng = random.Random(0)
    for i in range(300):  # random bytes after a valid header prefix
        data = bytearray(blob[:rng.randrange(len(blob) + 1)])
        data += bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        accepted = True
        try:
            pf.decode(bytes(data))
        except pf.OptionsError:
            accepted = False
        cases.append(ValidateCase(f"random tail {i}", bytes(data),
                                  Status.OK if accepted else None))
    _run(NativeJob("asan", validate=tuple(cases)))


def _stage_case(label: str, s: PatchedStage, seed: int) -> RunCase:
    lib = native.load("release")
    x = random_input(s.model, seed)
    values = run_graph(s.model, [x])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    assert np.array_equal(run_patch_exec(s.patched, s.op, stage_in), want)
    consts = tuple(native.model_constants(s.patched, s.op, lib))
    return RunCase(label, s.blob, stage_in, consts, want)


ZOO_RUNS = [("odd_stride2", 0, 4, (3, 2)), ("pools_dilated", 0, 7, (2, 2)),
            ("mbv2_035_144", 0, 9, (5, 5)), ("mcunet_dw57", 0, 12, (3, 3)),
            ("mbv1_025_96", 0, 3, (8, 8)), ("odd_stride2", 0, 4, (1, 1))]


def test_zoo_stages_run_under_asan() -> None:
    require_asan()
    cases = [_stage_case(f"{n} {f}..{la} {g}", patched_stage(zoo(n), f, la, g), seed=f + la)
             for n, f, la, g in ZOO_RUNS]
    _run(NativeJob("asan", run=tuple(cases)))


def test_person_detect_stages_run_under_asan() -> None:
    require_asan()
    model = load_model(shared_model_path("person_detect"))
    cases = [_stage_case(f"person_detect 0..{last} {grid}", patched_stage(model, 0, last, grid),
                         seed=last) for last, grid in ((7, (4, 4)), (12, (3, 2)))]
    _run(NativeJob("asan", run=tuple(cases)))


def test_synthetic_stages_run_under_asan() -> None:
    """Depth multipliers, dilations, PAD, ADD, pools, extreme constants."""
    require_asan()
    cases = []
    for seed in range(24):
        options = random_stage(random.Random(seed))
        rng = np.random.default_rng(seed)
        t0 = options.tensors[0]
        x = rng.integers(-128, 128, (1, t0.height, t0.width, t0.channels), dtype=np.int8)
        consts = random_constants(options, rng, extreme=seed % 2 == 1)
        want = stage_reference(options, x, consts)
        assert want is not None
        cases.append(RunCase(f"synthetic {seed}", pf.encode(options), x, tuple(consts), want))
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.parametrize("case", ["huge dilation", "huge padding"])
def test_windows_far_outside_the_image_run_under_asan(case: str) -> None:
    """Valid blobs whose windows mostly (or only) read padding: same output as the
    release build, no report."""
    require_asan()
    blob, status = extra_cases()[case]
    assert native.load("release").validate(blob).ok and status is None
    options = pf.decode(blob)
    rng = np.random.default_rng(0)
    consts = random_constants(options, rng)
    t0 = options.tensors[0]
    x = rng.integers(-128, 128, (1, t0.height, t0.width, t0.channels), dtype=np.int8)
    want = native.load("release").run(blob, x, consts)
    _run(NativeJob("asan", run=(RunCase(case, blob, x, tuple(consts), want),)))

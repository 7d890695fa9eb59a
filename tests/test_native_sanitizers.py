"""The core built with AddressSanitizer + UndefinedBehaviorSanitizer, in child processes
(the ASan runtime must be preloaded into Python): validation of every malformed blob and
runs of real and synthetic stages; any sanitizer report fails the test."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import shared_model_path
from native_fuzz import (
    random_constants,
    random_stage,
    random_stage_input,
    stage_reference,
)
from native_sanitize import NativeJob, RunCase, ValidateCase, run_job_sanitized, run_sanitized
from native_support import (
    BAD_STATUS,
    CACHE_BAD_STATUS,
    CACHE_CASES,
    PatchedStage,
    bad_blob,
    base_blob,
    cache_bad_blob,
    cached_stage,
    extra_cache_cases,
    extra_cases,
    patched_stage,
    random_input,
    require_asan,
    stream_stage,
    to_nchw,
    version2_op,
    zoo,
)

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.native import Status
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.ref_params import run_graph


def _run(job: NativeJob) -> None:
    require_asan()
    result = run_job_sanitized(job, timeout=900)
    assert result.report is None, f"sanitizer report: {result.report}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{len(job.validate)} validate and {len(job.run)} run cases, 0 failures" in \
        result.stderr


def test_a_heap_overflow_is_reported() -> None:
    """The harness works: an output buffer one byte short ends in an ASan report."""
    require_asan()
    result = run_sanitized(["canary"], timeout=300)
    assert result.returncode != 0
    assert result.report is not None and "heap-buffer-overflow" in result.report


@pytest.mark.slow
def test_validate_malformed_blobs_under_asan() -> None:
    cases = [ValidateCase(f"BAD {c}", bad_blob(c)[0], s) for c, s in BAD_STATUS.items()]
    cases += [ValidateCase(c, b, s) for c, (b, s) in extra_cases().items() if s is not None]
    for version in (1, 2):
        blob = base_blob(version)
        cases += [ValidateCase(f"v{version} truncated to {n}", blob[:n], Status.TRUNCATED)
                  for n in range(len(blob))]
        cases += [ValidateCase(f"v{version} valid", blob, Status.OK)]
    rng = random.Random(0)
    for i in range(300):  # random bytes after a valid header prefix
        blob = base_blob(1 + i % 2)
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


def _stage_case(label: str, s: PatchedStage, seed: int, version2: tuple[bool, bool] | None = None
                ) -> RunCase:
    """A run of the stage, as the converter wrote it or with (INPUT_NCHW, STREAM)."""
    lib = native.load("release")
    x = random_input(s.model, seed)
    values = run_graph(s.model, [x])
    stage_in, want = values[s.graph.input], values[s.graph.output]
    op = s.op
    if version2 is not None:
        op = version2_op(s, nchw=version2[0], stream=version2[1])
        stage_in = to_nchw(stage_in) if version2[0] else stage_in
    assert np.array_equal(run_patch_exec(s.patched, op, stage_in), want)
    consts = tuple(native.model_constants(s.patched, op, lib))
    return RunCase(label, op.custom_options or b"", stage_in, consts, want)


ZOO_RUNS = [("odd_stride2", 0, 4, (3, 2)), ("pools_dilated", 0, 7, (2, 2)),
            ("mbv2_035_144", 0, 9, (5, 5)), ("mcunet_dw57", 0, 12, (3, 3)),
            ("mbv1_025_96", 0, 3, (8, 8)), ("odd_stride2", 0, 4, (1, 1))]


@pytest.mark.slow
def test_zoo_stages_run_under_asan() -> None:
    require_asan()
    cases = [_stage_case(f"{n} {f}..{la} {g}", patched_stage(zoo(n), f, la, g), seed=f + la)
             for n, f, la, g in ZOO_RUNS]
    _run(NativeJob("asan", run=tuple(cases)))


V2_RUNS = [("odd_stride2", 0, 4, (3, 2), True, True), ("odd_stride2", 0, 1, (8, 8), True, True),
           ("mbv2_035_144", 0, 9, (5, 5), True, True), ("mcunet_dw57", 0, 12, (3, 3), False, True),
           ("mbv1_025_96", 0, 10, (3, 1), True, True), ("pools_dilated", 0, 7, (2, 2), True, False)]


@pytest.mark.slow
def test_version2_zoo_stages_run_under_asan() -> None:
    """INPUT_NCHW gathers and STREAM pairs on real stages."""
    require_asan()
    cases = [_stage_case(f"v2 {n} {f}..{la} {g} nchw={c} stream={st}",
                         patched_stage(zoo(n), f, la, g), seed=f + la, version2=(c, st))
             for n, f, la, g, c, st in V2_RUNS]
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.slow
def test_stream_pairs_run_under_asan() -> None:
    """Synthetic STREAM pairs: stride 1 and 2, with and without bias and padding, the
    pair's output in the scratch or the stage output, with and without INPUT_NCHW."""
    require_asan()
    cases = []
    for i, (stride, bias, same) in enumerate([(1, True, True), (2, False, True),
                                              (2, True, False), (1, False, False)]):
        for grid in ((1, 1), (3, 2), (4, 4)):
            o = stream_stage(stride=stride, bias=bias, same=same, grid=grid, nchw=i % 2 == 0,
                             tail=grid[0] > 1, seed=i)
            rng = np.random.default_rng(i)
            x = random_stage_input(o, rng)
            consts = random_constants(o, rng, extreme=grid == (3, 2))
            want = stage_reference(o, x, consts)
            assert want is not None
            cases.append(RunCase(f"stream {stride} {bias} {same} {grid}", pf.encode(o), x,
                                 tuple(consts), want))
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.slow
def test_person_detect_stages_run_under_asan() -> None:
    require_asan()
    model = load_model(shared_model_path("person_detect"))
    cases = [_stage_case(f"person_detect 0..{last} {grid}", patched_stage(model, 0, last, grid),
                         seed=last) for last, grid in ((7, (4, 4)), (12, (3, 2)))]
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.slow
def test_synthetic_stages_run_under_asan() -> None:
    """Depth multipliers, dilations, PAD, ADD, pools, extreme constants, INPUT_NCHW and
    STREAM pairs (version 2)."""
    require_asan()
    cases = []
    for seed in range(24):
        options = random_stage(random.Random(seed))
        rng = np.random.default_rng(seed)
        x = random_stage_input(options, rng)
        consts = random_constants(options, rng, extreme=seed % 2 == 1)
        want = stage_reference(options, x, consts)
        assert want is not None
        cases.append(RunCase(f"synthetic {seed}", pf.encode(options), x, tuple(consts), want))
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.slow
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


@pytest.mark.slow
def test_cached_stages_run_under_asan() -> None:
    """Halo caches (CACHE_COLS) on real stages: restores, computed columns, saves."""
    require_asan()
    lib = native.load("release")
    cases = []
    for name, first, last, grid in CACHE_CASES:
        s = cached_stage(name, first, last, grid)
        values = run_graph(s.model, [random_input(s.model, first + last)])
        x, want = values[s.graph.input], values[s.graph.output]
        assert np.array_equal(run_patch_exec(s.patched, s.op, x), want)
        consts = tuple(native.model_constants(s.patched, s.op, lib))
        cases.append(RunCase(f"cached {name} {first}..{last} {grid}", s.blob, x, consts, want))
    for seed in range(300):  # synthetic stages with caches
        o = random_stage(random.Random(seed))
        if not any(t.cached for t in o.tensors):
            continue
        rng = np.random.default_rng(seed)
        x = random_stage_input(o, rng)
        consts = random_constants(o, rng, extreme=seed % 2 == 1)
        want = stage_reference(o, x, consts)
        assert want is not None
        cases.append(RunCase(f"cached synthetic {seed}", pf.encode(o), x, tuple(consts), want))
    _run(NativeJob("asan", run=tuple(cases)))


@pytest.mark.slow
def test_validate_malformed_cache_blobs_under_asan() -> None:
    cases = [ValidateCase(f"cache {c}", cache_bad_blob(c)[0], s)
             for c, s in CACHE_BAD_STATUS.items()]
    cases += [ValidateCase(c, b, s) for c, (b, s, _) in extra_cache_cases().items()]
    blob = cached_stage("mbv2_035_144", 0, 9, (3, 3)).blob
    cases += [ValidateCase(f"cached truncated to {n}", blob[:n], Status.TRUNCATED)
              for n in range(len(blob))]
    cases.append(ValidateCase("cached valid", blob, Status.OK))
    _run(NativeJob("asan", validate=tuple(cases)))

"""Model-level fuzzing of PATCH_EXEC in x86 TFLM with the kernel built with ASan + UBSan.

Crafted models (one per finding: scratch_bytes near 2^32, a constant output, constant
buffers shorter than their shape, shapes whose element count overflows, variable
constants, misaligned int32 constants; buffers moved to the end of the file) and seeded
mutations of a patched model run each in its own process of a sanitized TFLM child
(tflm_runner.run_isolated). The outcome must be a clean refusal (at AllocateTensors with
a `PATCH_EXEC: ...` message for the crafted cases) or outputs equal to the numpy
reference's, never a sanitizer report, a signal or a silent difference; the numpy
reference (the split path of `validate`) refuses whatever TFLM refuses. The longer run
is `python tools/fuzz_models.py --seconds N`. Needs the TFLM headers (TFLM_ROOT,
TFLM_EXTRA_INCLUDES) and the compiler's ASan/UBSan runtimes; skips with the reason.
"""

from __future__ import annotations

import collections
import functools
import re

import model_fuzz_cases as mf
import pytest

from tflm_patch import tflm_build

pytestmark = pytest.mark.tflm

MUTATIONS = 150  # seeded mutated models per run (about 25 s of child time here)


@pytest.fixture(scope="module")
def kernel() -> tflm_build.KernelLibrary:
    lib, reason = mf.sanitized_kernel()
    if lib is None:
        pytest.skip(reason)
    return lib


@functools.cache
def _verdicts(kernel: tflm_build.KernelLibrary) -> dict[str, mf.Verdict]:
    """Every crafted case, the unmodified model and the seeded mutations, run once."""
    base = mf.Crafted("unmodified", mf.base_bytes())
    mutated = [c for c in (mf.mutated_case(seed) for seed in range(MUTATIONS)) if c is not None]
    cases = [base, *mf.crafted_cases().values(), *mf.valid_cases().values(), *mutated]
    return {v.case.name: v for v in mf.run_cases(cases, kernel, mf.base_input())}


@pytest.mark.slow
def test_unmodified_model_runs_like_the_reference(kernel: tflm_build.KernelLibrary) -> None:
    """The crafted cases start from a model that runs, bit-exact with the numpy reference."""
    v = _verdicts(kernel)["unmodified"]
    assert v.outcome == mf.RAN_EQUAL, v


@pytest.mark.slow
@pytest.mark.parametrize("case", mf.VALID_NAMES)
def test_valid_odd_model_runs_like_the_reference(kernel: tflm_build.KernelLibrary, case: str
                                                 ) -> None:
    """Slots at odd offsets, scratch_bytes exactly at rule 10's bound, every constant at
    the end of the file: allowed, and bit-exact."""
    v = _verdicts(kernel)[case]
    assert v.outcome == mf.RAN_EQUAL, v


def test_every_crafted_case_is_named() -> None:
    assert sorted(mf.crafted_cases()) == sorted(mf.CRAFTED_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(mf.CRAFTED_NAMES))
def test_crafted_model_is_refused_in_prepare(kernel: tflm_build.KernelLibrary, case: str
                                             ) -> None:
    v = _verdicts(kernel)[case]
    assert v.outcome == mf.REFUSED_PREPARE, v
    assert re.search(v.case.expect, v.detail), v.detail
    assert v.numpy_message, "the numpy reference must refuse it too"
    if v.case.verify:  # unverified files: the numpy path's verifier refuses them first
        # the same message, without the glue's "invalid options (status N): " prefix
        same = re.sub(r"^invalid options \\\(status \d+\\\): ", "", v.case.expect)
        assert re.search(same, v.numpy_message), v.numpy_message


@pytest.mark.slow
def test_mutated_models_are_refused_or_run_like_the_reference(
        kernel: tflm_build.KernelLibrary) -> None:
    verdicts = [v for v in _verdicts(kernel).values() if v.case.name.startswith("seed ")]
    counts = collections.Counter(v.outcome for v in verdicts)
    bad = [f"{v.case.name}: {v.outcome}: {v.detail} | {v.numpy_message}"
           for v in verdicts if v.bad]
    assert not bad, "\n".join(bad)
    assert len(verdicts) >= MUTATIONS * 9 // 10, counts
    assert counts[mf.REFUSED_PREPARE] > 0 and counts[mf.RAN_EQUAL] > 0, counts

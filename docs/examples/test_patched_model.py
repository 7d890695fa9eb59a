"""Host tests for a patched model: copy this file into your own test suite.

ORIGINAL is your converter's model (a path, or the bytes of `converter.convert()`; here a
model of tflm-patch's zoo) and OPTIONS the options your post-processing script passes to
`tflm_patch.convert`. The tests check that the patched model gives the original's outputs
byte for byte, and that it runs in the x86 TFLM interpreter with the PATCH_EXEC kernel
(that one skips, with the reason, where the TFLM headers are not configured).
"""

from __future__ import annotations

import numpy as np
import pytest

import tflm_patch

ORIGINAL = "zoo:odd_stride2"
OPTIONS = {"objective": "memory"}


@pytest.fixture(scope="module")
def patched() -> bytes:
    return tflm_patch.convert(ORIGINAL, **OPTIONS)


def test_model_is_patched() -> None:
    result = tflm_patch.plan(ORIGINAL, **OPTIONS)
    assert result.changed, result.reason
    assert result.arena_after < result.arena_before


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patched_model_is_bit_identical(patched: bytes, seed: int) -> None:
    comparison = tflm_patch.validate(ORIGINAL, patched, seed=seed)
    assert comparison.identical, f"max |diff| {comparison.max_abs_diff} ({comparison.executor})"


def test_patched_model_runs_in_tflm(patched: bytes) -> None:
    try:
        interp = tflm_patch.interpreter(patched)
    except tflm_patch.TflmBuildUnavailable as e:
        pytest.skip(f"the PATCH_EXEC kernel cannot be built here: {e}")
    details = interp.get_input_details(0)
    image = np.random.default_rng(0).integers(-128, 128, details["shape"], dtype=np.int8)
    interp.set_input(image, 0)
    interp.invoke()
    want = tflm_patch.validate(ORIGINAL, patched, inputs=image).original[0]
    assert interp.get_output(0).reshape(want.shape).tobytes() == want.tobytes()

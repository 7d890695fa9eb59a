"""The Python API (tflm_patch.plan/convert/validate/interpreter): its public names and
signatures are pinned, and each function is checked on a zoo model."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tflm_patch
from tflm_patch.arena import predict_arena
from tflm_patch.errors import TflmPatchError, UsageError
from tflm_patch.model import load_model
from tflm_patch.tflm_build import kernel_or_reason
from tflm_patch.validate import TFLM_KERNEL
from tflm_patch.zoo import ensure_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zoo:odd_stride2"  # plans in a second
MEMORY = {"objective": "memory"}  # patches it (1x7 grid, 1.67x smaller)
ODD_STRIDE2_ARENA = 60_272  # predicted x86_64 TFLM arena of the unpatched model

PUBLIC = ["Comparison", "PlanError", "PlanResult", "Stage", "TflmBuildUnavailable",
          "TflmPatchError", "__version__", "convert", "interpreter", "plan", "validate"]
SIGNATURES = {
    "plan": "(model: 'ModelSource', **options: 'Any') -> 'PlanResult'",
    "convert": "(model: 'ModelSource', **options: 'Any') -> 'bytes'",
    "validate": "(original: 'ModelSource', patched: 'ModelSource', inputs: "
                "'np.ndarray | Sequence[np.ndarray] | None' = None, seed: 'int' = 0) -> "
                "'Comparison'",
    "interpreter": "(model: 'ModelSource', arena_size: 'int | None' = None) -> 'Any'",
}
PLAN_RESULT_FIELDS = ["arena_before", "arena_after", "macs_before", "macs_after",
                      "instruction_ratio", "stages", "reason", "patched", "seconds", "plan"]
COMPARISON_FIELDS = ["label", "original", "patched", "executor"]


def test_public_names() -> None:
    assert sorted(tflm_patch.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(tflm_patch, name), name


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name: str) -> None:
    assert str(inspect.signature(getattr(tflm_patch, name))) == SIGNATURES[name]


def test_result_fields() -> None:
    assert [f.name for f in dataclasses.fields(tflm_patch.PlanResult)] == PLAN_RESULT_FIELDS
    assert [f.name for f in dataclasses.fields(tflm_patch.Comparison)] == COMPARISON_FIELDS
    assert [f.name for f in dataclasses.fields(tflm_patch.Stage)] == [
        "first_op", "last_op", "grid", "kind"]


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


def test_importing_the_package_stays_light() -> None:
    # the x86 TFLM child process and the zoo builder import the package
    code = ("import sys, tflm_patch\n"
            "print(sorted(m for m in sys.modules if m.startswith('tflm_patch')))")
    assert _fresh_python(code) == "['tflm_patch']"


def test_validate_stays_the_function_after_its_module_is_imported() -> None:
    code = ("import tflm_patch.validate, tflm_patch.cli\n"
            "from tflm_patch.validate import compare\n"
            "print(callable(tflm_patch.validate), type(tflm_patch.validate).__name__, "
            "tflm_patch.validate is __import__('tflm_patch.api').api.validate)")
    assert _fresh_python(code) == "True function True"


def test_every_public_function_is_documented() -> None:
    for name in ("plan", "convert", "validate", "interpreter"):
        assert inspect.getdoc(getattr(tflm_patch, name)), name
    assert issubclass(tflm_patch.PlanError, tflm_patch.TflmPatchError)
    assert issubclass(tflm_patch.TflmBuildUnavailable, tflm_patch.TflmPatchError)


@pytest.fixture(scope="module")
def original() -> bytes:
    return ensure_model(MODEL[4:]).read_bytes()


@pytest.fixture(scope="module")
def memory_plan(original: bytes) -> tflm_patch.PlanResult:
    return tflm_patch.plan(original, **MEMORY)


def test_plan_reports_the_patched_model(memory_plan: tflm_patch.PlanResult) -> None:
    r = memory_plan
    assert r.changed
    assert r.arena_before == ODD_STRIDE2_ARENA
    patched = load_model(r.patched)
    assert sum(op.name == "PATCH_EXEC" for op in patched.operators) == len(r.stages)
    assert r.stages[0].kind == "main"
    # the figures are the patched model's: its own prediction and its stored plan
    assert predict_arena(patched).total == r.arena_after < r.arena_before
    assert r.plan is not None
    assert r.plan["predicted"]["arena_after"] == r.arena_after
    assert r.plan["predicted"]["macs_after"] == r.macs_after
    assert r.plan["stage"] == {"first_op": r.stages[0].first_op,
                               "last_op": r.stages[0].last_op}
    assert r.instruction_ratio == pytest.approx(r.plan["predicted"]["m4_instruction_ratio"],
                                                abs=1e-6)
    assert r.arena_ratio == r.arena_before / r.arena_after


def test_convert_returns_the_plans_bytes(original: bytes,
                                         memory_plan: tflm_patch.PlanResult) -> None:
    path = ensure_model(MODEL[4:])
    assert tflm_patch.convert(original, **MEMORY) == memory_plan.patched
    assert tflm_patch.convert(path, **MEMORY) == memory_plan.patched
    assert tflm_patch.convert(str(path), **MEMORY) == memory_plan.patched


def test_unchanged_model_comes_back_as_is_with_the_reason(original: bytes) -> None:
    r = tflm_patch.plan(original, min_saving=0.99)  # no plan saves 99%
    assert not r.changed
    assert r.patched == original
    assert (r.arena_after, r.macs_after, r.stages, r.plan) == (r.arena_before, r.macs_before,
                                                               (), None)
    assert r.reason.startswith("no plan makes the arena at least 99% smaller")
    assert r.reason.endswith("the model stays as it is")
    assert tflm_patch.convert(original, min_saving=0.99) == original


def test_unknown_option_is_refused(original: bytes) -> None:
    with pytest.raises(UsageError, match=r"^unknown plan option 'max_grids'; options: "):
        tflm_patch.plan(original, max_grids=4)


def test_forced_plan_that_cannot_work_raises(original: bytes) -> None:
    with pytest.raises(tflm_patch.PlanError, match="grid 99x1 is finer than the stage output"):
        tflm_patch.convert(original, split_op=0, grid=[99, 1])


def test_not_a_model_raises_a_package_error() -> None:
    with pytest.raises(TflmPatchError, match="not a TFLite model"):
        tflm_patch.convert(b"not a model at all")


def test_validate_random_inputs(original: bytes, memory_plan: tflm_patch.PlanResult) -> None:
    c = tflm_patch.validate(original, memory_plan.patched, seed=3)
    assert c.identical and c.max_abs_diff == 0
    assert c.label == "random seed 3"
    kernel, reason = kernel_or_reason()
    assert c.executor == (TFLM_KERNEL if kernel is not None else
                          f"numpy reference, split at PATCH_EXEC ({reason})")
    model = load_model(original)
    assert [a.shape for a in c.patched] == [tuple(model.tensors[t].shape)
                                            for t in model.outputs]
    assert [a.dtype for a in c.patched] == [np.dtype(np.int8)] * len(model.outputs)


def test_validate_given_inputs(original: bytes, memory_plan: tflm_patch.PlanResult) -> None:
    model = load_model(original)
    x = np.random.default_rng(5).integers(-128, 128, model.tensors[model.inputs[0]].shape,
                                          dtype=np.int8)
    c = tflm_patch.validate(original, memory_plan.patched, inputs=x)
    assert c.identical and c.label == "given inputs"
    # the same inputs as a list, flattened: the same outputs
    again = tflm_patch.validate(original, memory_plan.patched, inputs=[x.ravel()])
    assert [a.tobytes() for a in again.patched] == [a.tobytes() for a in c.patched]


def test_validate_refuses_wrong_inputs(original: bytes,
                                       memory_plan: tflm_patch.PlanResult) -> None:
    with pytest.raises(UsageError, match=r"needs int8 \[1, 97, 97, 3\], got float32"):
        tflm_patch.validate(original, memory_plan.patched,
                            inputs=np.zeros((1, 97, 97, 3), np.float32))
    with pytest.raises(UsageError, match=r"the model has 1 input\(s\), got 2"):
        tflm_patch.validate(original, memory_plan.patched, inputs=[np.zeros(1), np.zeros(1)])


def test_validate_refuses_unrelated_models(original: bytes) -> None:
    with pytest.raises(TflmPatchError, match="not an original and its patched version"):
        tflm_patch.validate(original, ensure_model("pools_dilated"))


@pytest.mark.tflm
def test_interpreter_runs_patch_exec_in_tflm(original: bytes,
                                             memory_plan: tflm_patch.PlanResult) -> None:
    kernel, reason = kernel_or_reason()
    if kernel is None:
        pytest.skip(f"the PATCH_EXEC kernel cannot be built here: {reason}")
    interp = tflm_patch.interpreter(memory_plan.patched)
    model = load_model(original)
    x = np.random.default_rng(9).integers(-128, 128, model.tensors[model.inputs[0]].shape,
                                          dtype=np.int8)
    interp.set_input(x, 0)
    interp.invoke()
    want = tflm_patch.validate(original, memory_plan.patched, inputs=x).original[0]
    got = np.asarray(interp.get_output(0)).reshape(want.shape)
    assert got.tobytes() == want.tobytes()


def test_interpreter_without_headers_says_why(monkeypatch: pytest.MonkeyPatch,
                                              memory_plan: tflm_patch.PlanResult) -> None:
    from tflm_patch import api, tflm_build

    monkeypatch.delenv("TFLM_ROOT", raising=False)
    caches = (api._load_kernel, tflm_build._kernel_or_reason)
    for cache in caches:
        cache.cache_clear()
    try:
        with pytest.raises(tflm_patch.TflmBuildUnavailable, match=r"^TFLM_ROOT not set"):
            tflm_patch.interpreter(memory_plan.patched)
    finally:
        for cache in caches:
            cache.cache_clear()


def _post_processing_example(text: str) -> str:
    """The first ```python block of a document that calls converter.convert()."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    return next(b for b in blocks if "converter.convert()" in b)


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_post_processing_example_runs(doc: str, original: bytes, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code = _post_processing_example((ROOT / doc).read_text())
    assert len(code.strip().splitlines()) <= 5

    class Converter:
        def convert(self) -> bytes:
            return original

    monkeypatch.chdir(tmp_path)
    exec(code, {"converter": Converter()})  # the example as a user runs it
    written = sorted(tmp_path.iterdir())
    assert len(written) == 1
    assert written[0].read_bytes() == tflm_patch.convert(original)


@pytest.mark.slow
def test_docs_pytest_example_passes() -> None:
    example = ROOT / "docs" / "examples" / "test_patched_model.py"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(example)], capture_output=True, text=True, timeout=1200,
                         check=False, cwd=example.parent)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert re.search(r"\b5 passed\b|\b4 passed, 1 skipped\b", run.stdout), run.stdout[-500:]

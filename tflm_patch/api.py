"""The Python API: plan and convert a model, validate it, run it in TFLM with PATCH_EXEC.

For a converter post-processing script::

    tflite_model = converter.convert()
    patched = tflm_patch.convert(tflite_model)
    open("model_patched.tflite", "wb").write(patched)

and for host unit tests::

    comparison = tflm_patch.validate(original, patched, seed=0)
    assert comparison.identical
    interp = tflm_patch.interpreter(patched)  # tflite-micro runtime.Interpreter

A model is given as its bytes, a path, or ``"zoo:NAME"`` (a model of the project's zoo).
Every error is a `tflm_patch.errors.TflmPatchError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tflm_patch.dilate import fold_model
from tflm_patch.errors import TflmPatchError, UsageError
from tflm_patch.evaluate import Candidate
from tflm_patch.fuse import unit_grid
from tflm_patch.model import Model, load_model
from tflm_patch.planner import PlanError, PlanRequest, patched_model_object
from tflm_patch.planner import PlanResult as PlannerResult
from tflm_patch.planner import plan as run_planner
from tflm_patch.rewrite import to_checked_bytes

if TYPE_CHECKING:
    from tflm_patch.validate import Comparison

# validate, tflm_build, tflm_runner and zoo are imported by the functions that run TFLM or
# build zoo models: `plan` and `convert` (a converter post-processing script) do without
# them, ~0.14 s less start-up

ModelSource = bytes | bytearray | memoryview | str | os.PathLike[str]
ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class Stage:
    """One PATCH_EXEC of a plan: operators `first_op..last_op` of the original model run
    patch by patch on a `grid` (rows, columns). `kind`: "main" (the stage the plan is
    built around), "patched" (a further patched stage) or "fused" (a 1x1-grid stage that
    folds PADs and keeps requantization data in flash)."""

    first_op: int
    last_op: int
    grid: tuple[int, int]
    kind: str


@dataclass(frozen=True)
class PlanResult:
    """The planner's decision for one model (predicted for `target`, x86_64 by default).

    `patched` holds the bytes `convert` returns: the rewritten model, or the original
    bytes unchanged when no plan pays (then `changed` is False and `reason` says why).
    """

    arena_before: int  # predicted smallest TFLM arena of the original model, bytes
    arena_after: int  # ... of the patched model (= arena_before when unchanged)
    macs_before: int
    macs_after: int
    # estimated Cortex-M4 instructions per Invoke, patched / original (None: no estimate)
    instruction_ratio: float | None
    stages: tuple[Stage, ...]  # empty when unchanged
    reason: str  # why this plan, or why the model stays as it is
    patched: bytes
    seconds: float  # planning time
    plan: dict[str, Any] | None  # the plan as stored in the model's 'tflm_patch.plan' metadata

    @property
    def changed(self) -> bool:
        """True when the model was rewritten (at least one PATCH_EXEC)."""
        return bool(self.stages)

    @property
    def arena_ratio(self) -> float:
        """arena_before / arena_after (1.0 when unchanged)."""
        return self.arena_before / self.arena_after

    @property
    def mac_overhead(self) -> float:
        """Extra MACs of the patched model as a fraction of the original's."""
        return self.macs_after / self.macs_before - 1.0 if self.macs_before else 0.0


def _request_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(PlanRequest))


def _request(options: dict[str, Any]) -> PlanRequest:
    """A planner.PlanRequest from keyword options (its field names)."""
    unknown = sorted(set(options) - _request_fields())
    if unknown:
        raise UsageError(f"unknown plan option {unknown[0]!r}; options: "
                         f"{', '.join(sorted(_request_fields()))}")
    if options.get("grid") is not None:
        options = {**options, "grid": tuple(options["grid"])}
    return PlanRequest(**options)


def _load(model: ModelSource) -> Model:
    if isinstance(model, str) and model.startswith(ZOO_PREFIX):
        from tflm_patch.zoo import ensure_model

        return load_model(ensure_model(model[len(ZOO_PREFIX):]))
    return load_model(model)


def _stages(c: Candidate, model: Model) -> tuple[Stage, ...]:
    return (Stage(c.first, c.last, c.grid, "main"),
            *(Stage(a, b, g, "patched") for a, b, g in c.extra),
            *(Stage(a, b, unit_grid(model, a, b), "fused") for a, b in c.fused))


def _ratio(result: PlannerResult, c: Candidate) -> float | None:
    return float(result.latency_ratio(c)) if result.cost is not None else None


def plan(model: ModelSource, **options: Any) -> PlanResult:
    """Plan a model and build the patched bytes.

    `options` are the planner's (`tflm_patch.planner.PlanRequest`, as the CLI options):
    ``budget`` (bytes), ``objective`` ("latency" or "memory"), ``max_latency``,
    ``max_overhead``, ``min_saving`` (fractions), ``split_op``, ``grid`` ((rows, cols)),
    ``max_grid``, ``target`` ("x86_64" or "cortex_m"), ``multi_stage``, ``jobs``
    (planning processes; default: the CPUs available, at most 4; the plan is the same).
    ``int8_io=True`` first removes a float32 (or uint8) input QUANTIZE and output
    DEQUANTIZE (`tflm_patch.interface`): the result takes and gives int8; the plan's
    "interface" (and the model's metadata 'tflm_patch.interface') say what was removed;
    ``split_op`` counts in the given model, the plan's operator indices in the stripped one.
    Raises `PlanError` (a `TflmPatchError`) when a forced stage or grid cannot be used.
    """
    from tflm_patch.int8_io import map_split_op, prepare, record

    int8_io = bool(options.pop("int8_io", False))
    request = _request(options)
    prepared = prepare(fold_model(_load(model)), int8_io)  # dilated convs: bit-exact
    request = replace(request, split_op=map_split_op(prepared, request.split_op))
    m = prepared.model
    removed = prepared.strip.removed if prepared.strip is not None else ()
    result = run_planner(m, request)
    c = result.chosen
    if c is None:
        if request.split_op is not None or request.grid is not None:
            raise PlanError(f"the requested plan is not used: {result.message}")
        return PlanResult(result.arena_before, result.arena_before, result.macs_before,
                          result.macs_before, 1.0 if result.cost is not None else None, (),
                          result.message, m.raw, result.seconds, None)
    obj = patched_model_object(m, result)
    record(obj, prepared)
    plan_doc = result.to_json(c) | ({"interface": prepared.interface} if removed else {})
    return PlanResult(result.arena_before, c.arena, result.macs_before, c.macs,
                      _ratio(result, c), _stages(c, m), result.message, to_checked_bytes(obj),
                      result.seconds, plan_doc)


def convert(model: ModelSource, **options: Any) -> bytes:
    """The patched model's bytes: the memory-heavy stages as PATCH_EXEC operators. The
    input bytes come back unchanged when no plan pays (`plan` says why; with
    ``int8_io=True`` the model with its float interface removed). Options: `plan`."""
    return plan(model, **options).patched


def _input_list(model: Model, inputs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if len(arrays) != len(model.inputs):
        raise UsageError(f"the model has {len(model.inputs)} input(s), got {len(arrays)}")
    out = []
    for t, a in zip(model.inputs, arrays, strict=True):
        info = model.tensors[t]
        a = np.asarray(a)
        if a.size != info.numel or a.dtype.name != info.dtype:
            raise UsageError(f"input tensor {t} needs {info.dtype} {list(info.shape)}, got "
                             f"{a.dtype.name} {list(a.shape)}")
        out.append(a.reshape(info.shape))
    return out


def validate(original: ModelSource, patched: ModelSource,
             inputs: np.ndarray | Sequence[np.ndarray] | None = None, seed: int = 0) -> Comparison:
    """Run both models on the same inputs (one array per model input; None: seeded random
    inputs: int8, or float drawn in the input's quantized range) and compare every output
    byte. When `patched` was converted with ``int8_io=True``, `original` is compared with
    its interface stripped the same way. Returns a `Comparison`:
    ``identical``, ``max_abs_diff``, ``original``/``patched`` (all outputs) and
    ``executor`` (whether PATCH_EXEC ran in x86 TFLM as the C++ kernel, or the numpy
    reference between TFLM segments when the kernel cannot be built here, and why)."""
    from tflm_patch.validate import compare, matched_original, pair_checked, random_inputs

    b = _load(patched)
    a = matched_original(_load(original), b)[0]  # stripped when `patched` is int8-io
    pair_checked(a, b)
    arrays = random_inputs(a, seed) if inputs is None else _input_list(a, inputs)
    label = f"random seed {seed}" if inputs is None else "given inputs"
    return compare(a, b, arrays, label)


@functools.cache
def _load_kernel() -> str:
    """The PATCH_EXEC library `validate` uses (built once per process), loaded RTLD_GLOBAL."""
    from tflm_patch.tflm_build import TflmBuildUnavailable, kernel_or_reason

    kernel, reason = kernel_or_reason()
    if kernel is None:
        raise TflmBuildUnavailable(reason)
    try:
        ctypes.CDLL(str(kernel.path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise TflmPatchError(f"cannot load the PATCH_EXEC kernel {kernel.path}: {e}") from None
    return kernel.registerer


def interpreter(model: ModelSource, arena_size: int | None = None) -> Any:
    """A tflite-micro ``runtime.Interpreter`` for `model` with PATCH_EXEC registered, in
    this process (``set_input``, ``invoke``, ``get_output``).

    The C++ kernel is built as `validate` builds it (TFLM headers from ``TFLM_ROOT`` and
    ``TFLM_EXTRA_INCLUDES``; `tflm_patch.tflm_build.TflmBuildUnavailable` says what is
    missing), cached, and loaded once per process. `arena_size` defaults to a generous
    arena (max(16 MiB, 10 x the model size)). Unlike `validate`, which runs TFLM in a
    child process, a TFLM abort here ends this process: the model is verified first.
    """
    data = _load(model).raw  # verified
    registerer = _load_kernel()
    from tflite_micro.python.tflite_micro import runtime

    from tflm_patch.tflm_runner import default_arena_size

    size = arena_size if arena_size is not None else default_arena_size(data)
    try:
        # Interpreter.__init__ print()s the number of resource variables
        with contextlib.redirect_stdout(io.StringIO()):
            return runtime.Interpreter.from_bytes(data, custom_op_registerers=[registerer],
                                                  arena_size=size)
    except RuntimeError as e:
        raise TflmPatchError(f"TFLM cannot create the interpreter: {e}") from None

"""What an operator without an arena-table entry allocates, measured once in x86 TFLM.

`arena_tail.OP_TAIL` and `arena_head.SCRATCH_REGISTRY` describe the operators whose
allocations are known from TFLM's source. For any other operator (one the pinned wheel
runs) the arena model asks this module, which measures it in the wheel's interpreter:

1. A one-operator model is cut out of the model: the same operator code, options,
   input/output shapes, types and quantization, constant inputs copied; the other
   inputs become graph inputs, the outputs graph outputs (`probe_model`).
2. Eleven more probes add known operators after it (RESIZE_NEAREST_NEIGHBOR, whose 2-byte
   option struct moves the tail by 2 bytes at a time, and RELU6, whose 8-byte Init data
   is the first kernel allocation unless the operator's own Init allocates), so that
   every even alignment residue of the tail is seen.
3. All probes of all unknown operators of a model run in ONE child process
   (`tflm_runner.allocation_reports`: each probe in its own forked process), and
   RecordingMicroAllocator's report of each is read: tail and head bytes and the
   "Persistent buffer data" record (requested bytes and count of the kernel allocations).
4. The operator's description (`MeasuredOp`) is fitted: the kernel allocations are one
   first allocation (the only one whose alignment padding depends on what came before:
   every later kernel allocation starts 16-byte aligned), in Init or Prepare, plus the
   16-byte-aligned bytes of the others; scratch requests from the table, or from the
   head of the one-operator model. The description must replay every probe's measured
   tail and head exactly with `arena_tail`'s own rules, or the operator counts as not
   measurable (with the reason).

Results are cached in memory (per `Model`) and on disk
(`~/.cache/tflm_patch/arena_measure/`, `$TFLM_PATCH_MEASURE_DIR` overrides), keyed by the
one-operator model's bytes, this module's version and the wheel's version; no child
process starts when every operator is in the tables or cached. Struct sizes are the x86_64
build's; the `cortex_m` target takes the same bytes (no smaller on 32 bits) and is not exact.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tflm_patch import arena_head as ah
from tflm_patch import arena_tail as at
from tflm_patch.arena_measured import MEASURE_VERSION, MEMO_KEY, MeasuredOp
from tflm_patch.errors import TflmPatchError, UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo, builtin_op_codes, load_model, model_to_bytes
from tflm_patch.schema import schema

log = logging.getLogger(__name__)

ENV_CACHE = "TFLM_PATCH_MEASURE_DIR"
RESIDUE_PROBES = 8  # the operator + 0..7 RESIZE_NEAREST_NEIGHBOR: every even residue
PHASE_PROBES = 4  # the operator + RELU6 + 0..3 RESIZE_NEAREST_NEIGHBOR
MAX_SCRATCH = 4  # scratch-request counts tried for an operator without a table entry
KERNEL_ALIGNMENT = 16
_INT8, _INT32, _FLOAT32 = 9, 2, 0  # schema TensorType


# Operators the wheel registers whose allocations cannot be measured one at a time.
NOT_MEASURABLE = {
    **dict.fromkeys(("IF", "WHILE", "CALL_ONCE"),
                    "it runs other subgraphs; the arena model handles one-subgraph models"),
    **dict.fromkeys(("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"),
                    "resource variables: their persistent buffers are not modeled"),
}


def needs_measurement(op: OperatorInfo) -> bool:
    return op.name not in at.OP_TAIL or op.name not in ah.SCRATCH_REGISTRY


def ensure_measured(model: Model) -> dict[int, MeasuredOp]:
    """Every operator of `model` without a table entry measured (once per model; what
    arena_measured.measured_op reads), by operator index."""
    return model.memo(MEMO_KEY, lambda: measure_model(model))


def unpredicted(model: Model) -> tuple[str, ...]:
    """Why the arena of `model` is not predicted: one line per operator whose allocations
    could not be measured (the prediction leaves them out); () when it is."""
    if not any(needs_measurement(op) for op in model.operators):
        return ()
    return tuple(f"operator {i} ({model.operators[i].name}): {m.error}"
                 for i, m in sorted(ensure_measured(model).items()) if m.error)


def measure_model(model: Model) -> dict[int, MeasuredOp]:
    """MeasuredOp of every operator of `model` that needs one, by operator index."""
    out: dict[int, MeasuredOp] = {}
    pending: dict[str, tuple[list[bytes], list[int]]] = {}
    for op in model.operators:
        if not needs_measurement(op):
            continue
        if op.name in NOT_MEASURABLE:
            out[op.index] = MeasuredOp(error=NOT_MEASURABLE[op.name])
            continue
        try:
            base = _one_op(model, op)
        except UnsupportedModelError as e:
            out[op.index] = MeasuredOp(error=str(e))
            continue
        first = model_to_bytes(base)
        key = cache_key(first)
        cached = _cache_get(key)
        if cached is not None:
            out[op.index] = cached
        elif key in pending:
            pending[key][1].append(op.index)
        else:
            pending[key] = ([first, *_variants(base)], [op.index])
    if pending:
        out.update(_measure(pending))
    return out


def _measure(pending: dict[str, tuple[list[bytes], list[int]]]) -> dict[int, MeasuredOp]:
    from tflm_patch import tflm_runner

    everything = [p for probes, _ in pending.values() for p in probes]
    log.info("measuring %d operator(s) in x86 TFLM (%d probe models)", len(pending),
             len(everything))
    try:
        reports: list[Any] = tflm_runner.allocation_reports(everything)
    except (TflmPatchError, ImportError, OSError) as e:
        reports = [f"x86 TFLM cannot run: {e}"] * len(everything)
    out: dict[int, MeasuredOp] = {}
    k = 0
    for key, (probes, indices) in pending.items():
        got = reports[k:k + len(probes)]
        k += len(probes)
        result = fit(probes, got)
        if not result.error:
            _cache_put(key, result)
        for i in indices:
            out[i] = result
    return out


# ------------------------------------------------------------------------ probe models
def probe_models(model: Model, op: OperatorInfo) -> list[bytes]:
    """The one-operator model and its variants (module docstring, steps 1-2)."""
    base = _one_op(model, op)
    return [model_to_bytes(base), *_variants(base)]


def _variants(base: Any) -> list[bytes]:
    probes = []
    for relu, count in ([(False, j) for j in range(1, RESIDUE_PROBES)]
                        + [(True, j) for j in range(PHASE_PROBES)]):
        obj = copy.copy(base)
        obj.subgraphs = [copy.copy(base.subgraphs[0])]
        obj.buffers = list(base.buffers)
        obj.operatorCodes = list(base.operatorCodes)
        sg = obj.subgraphs[0]
        sg.tensors, sg.operators = list(sg.tensors), list(sg.operators)
        if relu:
            _add_relu6(obj)
        for _ in range(count):
            _add_resize(obj)
        probes.append(model_to_bytes(obj))
    return probes


def _one_op(model: Model, op: OperatorInfo) -> Any:
    if model.num_subgraphs != 1:
        raise UnsupportedModelError("the model has several subgraphs")
    fb = schema()
    src = model.obj
    src_op = src.subgraphs[0].operators[op.index]
    obj = fb.ModelT()
    obj.version = 3
    obj.buffers = [fb.BufferT()]
    obj.operatorCodes = [copy.copy(src.operatorCodes[src_op.opcodeIndex])]
    sg = fb.SubGraphT()
    sg.tensors = []
    index: dict[int, int] = {}
    for t in dict.fromkeys(x for x in (*op.inputs, *op.outputs, *op.intermediates) if x >= 0):
        info = model.tensors[t]
        tensor = copy.copy(src.subgraphs[0].tensors[t])
        tensor.name = f"t{len(sg.tensors)}"
        tensor.buffer = 0
        raw = model.buffer_bytes(t) if info.is_constant else None
        if raw:
            tensor.buffer = _add_buffer(obj, raw)
        index[t] = len(sg.tensors)
        sg.tensors.append(tensor)
    new_op = copy.copy(src_op)
    new_op.opcodeIndex = 0

    def remap(seq: Sequence[int]) -> list[int]:
        return [index[t] if t >= 0 else -1 for t in seq]

    new_op.inputs, new_op.outputs = remap(op.inputs), remap(op.outputs)
    new_op.intermediates = remap(op.intermediates) if op.intermediates else None
    sg.operators = [new_op]
    sg.inputs = [index[t] for t in dict.fromkeys(op.inputs) if t >= 0
                 and not model.tensors[t].is_constant and not model.tensors[t].is_variable]
    sg.outputs = [index[t] for t in dict.fromkeys(op.outputs) if t >= 0]
    obj.subgraphs = [sg]
    return obj


def _add_buffer(obj: Any, raw: bytes) -> int:
    buf = schema().BufferT()
    buf.data = np.frombuffer(raw, dtype=np.uint8)
    obj.buffers.append(buf)
    return len(obj.buffers) - 1


def _add_tensor(obj: Any, shape: list[int], dtype: int, raw: bytes | None = None) -> int:
    t = schema().TensorT()
    t.shape, t.type = shape, dtype
    t.buffer = _add_buffer(obj, raw) if raw else 0
    sg = obj.subgraphs[0]
    t.name = f"t{len(sg.tensors)}"
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _opcode(obj: Any, name: str) -> int:
    code = builtin_op_codes()[name]
    for i, c in enumerate(obj.operatorCodes):
        if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == code:
            return i
    c = schema().OperatorCodeT()
    c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
    obj.operatorCodes.append(c)
    return len(obj.operatorCodes) - 1


def _add_op(obj: Any, name: str, inputs: list[int], outputs: list[int],
            options: tuple[int, Any] | None = None) -> None:
    op = schema().OperatorT()
    op.opcodeIndex = _opcode(obj, name)
    op.inputs, op.outputs = inputs, outputs
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options
    obj.subgraphs[0].operators.append(op)


def _add_resize(obj: Any) -> None:
    """RESIZE_NEAREST_NEIGHBOR of a constant 1x1x1x1 int8 tensor: option struct only."""
    fb = schema()
    x = _add_tensor(obj, [1, 1, 1, 1], _INT8, b"\x00")
    size = _add_tensor(obj, [2], _INT32, np.array([1, 1], "<i4").tobytes())
    y = _add_tensor(obj, [1, 1, 1, 1], _INT8)
    _add_op(obj, "RESIZE_NEAREST_NEIGHBOR", [x, size], [y],
            (fb.BuiltinOptions.ResizeNearestNeighborOptions,
             fb.ResizeNearestNeighborOptionsT()))


def _add_relu6(obj: Any) -> None:
    """RELU6 of a constant float: an 8-byte Relu6OpData from Init, nothing else."""
    x = _add_tensor(obj, [1], _FLOAT32, np.zeros(1, "<f4").tobytes())
    y = _add_tensor(obj, [1], _FLOAT32)
    _add_op(obj, "RELU6", [x], [y])


# ------------------------------------------------------------------------------- fitting
def fit(probes: Sequence[bytes], reports: Sequence[Any]) -> MeasuredOp:
    """The MeasuredOp that replays every probe's measured tail and head (step 4)."""
    failed = next((r for r in reports if isinstance(r, str)), None)
    if failed is not None:
        return MeasuredOp(error=f"x86 TFLM cannot run it alone: {failed}")
    models = [load_model(p) for p in probes]
    record = reports[0].record("Persistent buffer data")
    m0 = models[0]
    count = (record.count if record else 0) - 2  # minus the input and output arrays
    requested = (record.requested_bytes if record else 0) - 8 * (len(m0.inputs)
                                                                 + len(m0.outputs))
    for candidate in _candidates(m0, reports[0], count, requested):
        if all(_replays(m, r, candidate) for m, r in zip(models, reports, strict=True)):
            if candidate.scratch and len(candidate.scratch) > 1 and candidate.scratch[0]:
                return MeasuredOp(error=f"it requests {len(candidate.scratch)} scratch "
                                  "buffers whose sizes the measurement cannot tell apart")
            return candidate
    return MeasuredOp(error="its measured allocations fit no description the arena model "
                      f"replays ({count} kernel allocation(s) of {requested} B)")


def _candidates(m0: Model, report: Any, count: int, requested: int) -> list[MeasuredOp]:
    """Descriptions to try, each with `rest` fitted to the one-operator model's tail."""
    op = m0.operators[0]
    scratch_options: list[tuple[int, ...] | None] = [None]
    if op.name not in ah.SCRATCH_REGISTRY:
        total = report.head - _head(m0, ())
        scratch_options = [()] if total == 0 else []
        scratch_options += [(total,) + (0,) * (n - 1) for n in range(1, MAX_SCRATCH + 1)]
    shapes: list[tuple[int, str]] = [(0, "")]
    if count > 0:
        # only the residue mod 16 of the first size shows, and only at even residues of
        # the tail: among equal fits prefer multiples of 4, then of 2 (struct and int32
        # array sizes)
        firsts = [requested] if count == 1 else [
            m or 16 for m in sorted(range(16), key=lambda m: (m % 4 != 0, m % 2, m))]
        shapes = [(f, p) for p in ("init", "prepare") for f in firsts]
    out = []
    for scratch in scratch_options:
        for first, phase in shapes:
            c = MeasuredOp(first, phase, 0, max(count - 1, 0), scratch)
            rest = report.tail - _tail(m0, c)
            if rest < 16 * c.rest_count or rest % KERNEL_ALIGNMENT or (rest and not c.rest_count):
                continue
            out.append(MeasuredOp(first, phase, rest, c.rest_count, scratch))
    return out


def _replays(model: Model, report: Any, m: MeasuredOp) -> bool:
    scratch = m.scratch
    if scratch is None:
        scratch = tuple(ah.scratch_requests(model, model.operators[0]))
    return _tail(model, m) == report.tail and _head(model, scratch) == report.head


def _tail(model: Model, m: MeasuredOp) -> int:
    t = at.X86_64
    first = model.operators[0]
    ops = [at.measured_allocations(model, first, t, m)]
    ops += [at.op_allocations(model, op, t) for op in model.operators[1:]]
    scratch = m.scratch if m.scratch is not None else ah.scratch_requests(model, first)
    n_scratch = len(scratch) + sum(len(ah.scratch_requests(model, op))
                                   for op in model.operators[1:])
    allocs, _ = at.assemble_tail(t, 1, len(model.tensors), ops, n_scratch,
                                 at.model_allocations(model, t))
    used = at.replay(allocs)
    return used[-1] if used else 0


def _head(model: Model, scratch: Sequence[int]) -> int:
    """The head of a probe: its tensors, then the operator's scratch buffers (the
    probes' added operators request none)."""
    tensors = ah._tensor_allocations(model)
    size, _ = ah.greedy_plan([(a.nbytes, a.first, a.last) for a in tensors]
                             + [(s, 1, 1) for s in scratch])
    return size


# --------------------------------------------------------------------------------- cache
@cache
def _wheel_version() -> str:
    from importlib import metadata  # only when an operator is measured: slow to import

    try:
        return metadata.version("tflite-micro")
    except metadata.PackageNotFoundError:
        return "absent"


def cache_key(one_op_model: bytes) -> str:
    h = hashlib.sha256()
    h.update(f"{MEASURE_VERSION} {_wheel_version()}\n".encode())
    h.update(one_op_model)
    return h.hexdigest()[:32]


def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "tflm_patch" / "arena_measure"


_MEMORY: dict[str, MeasuredOp] = {}


def _cache_get(key: str) -> MeasuredOp | None:
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_root() / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        doc = json.loads(path.read_text())
        if doc.get("scratch") is not None:
            doc["scratch"] = tuple(doc["scratch"])
        _MEMORY[key] = MeasuredOp(**doc)
        return _MEMORY[key]
    return None


def _cache_put(key: str, m: MeasuredOp) -> None:
    _MEMORY[key] = m
    root = cache_root()
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(m)))
        os.replace(tmp, root / f"{key}.json")

"""Run a patched model and compare it with the original, byte for byte.

The original runs on x86 TFLM. The patched model runs whole in x86 TFLM with the C++
PATCH_EXEC kernel when that can be built here (`tflm_build`: TFLM headers configured,
core present); otherwise split at its PATCH_EXEC operators: every run of other
operators is cut out as a small model and run on x86 TFLM, every PATCH_EXEC by the
numpy reference (`patch_ref`). `Executor.description` says which path ran.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tflm_patch import tflm_build, tflm_runner
from tflm_patch.errors import InputFileError, TflmPatchError
from tflm_patch.io_checks import read_image_bytes, read_npy, shown
from tflm_patch.model import Model, OperatorInfo, load_model, model_to_bytes
from tflm_patch.patch_ref import run_patch_exec
from tflm_patch.rewrite import CUSTOM_CODE, prune

log = logging.getLogger(__name__)


def segment_model(model: Model, ops: Sequence[int], inputs: Sequence[int],
                  outputs: Sequence[int]) -> bytes:
    """A standalone model of operators `ops` with the given graph inputs and outputs."""
    obj = copy.deepcopy(model.obj)
    sg = obj.subgraphs[0]
    sg.operators = [sg.operators[i] for i in ops]
    sg.inputs, sg.outputs = list(inputs), list(outputs)
    obj.signatureDefs = None
    obj.metadata = None  # offline plans etc. describe the whole model
    obj.metadataBuffer = None
    prune(obj)
    return model_to_bytes(obj)


def _segments(model: Model) -> list[tuple[str, list[int]]]:
    """Consecutive operators grouped: ("tflm", [ops]) or ("patch", [op])."""
    segs: list[tuple[str, list[int]]] = []
    for op in model.operators:
        if op.name == CUSTOM_CODE:
            segs.append(("patch", [op.index]))
        elif segs and segs[-1][0] == "tflm":
            segs[-1][1].append(op.index)
        else:
            segs.append(("tflm", [op.index]))
    return segs


TFLM_KERNEL = "PATCH_EXEC ran in x86 TFLM (C++ kernel)"
NUMPY_SPLIT = "numpy reference, split at PATCH_EXEC"


@dataclass(frozen=True)
class Executor:
    """How PATCH_EXEC runs: the C++ kernel inside x86 TFLM (`kernel`), or, when it is
    None, the numpy reference between x86 TFLM segments (`reason`: why)."""

    kernel: tflm_build.KernelLibrary | None
    reason: str = ""

    @property
    def description(self) -> str:
        return TFLM_KERNEL if self.kernel is not None else f"{NUMPY_SPLIT} ({self.reason})"


def default_executor() -> Executor:
    """The C++ kernel in x86 TFLM if it can be built here, else the numpy reference."""
    kernel, reason = tflm_build.kernel_or_reason()
    return Executor(kernel, reason)


class PatchRunner(Protocol):
    """Runs one PATCH_EXEC (patch_ref.run_patch_exec, native.run_patch_exec_native):
    `side` holds the values of its runtime inputs (SE scales, residual addends) by tensor."""

    def __call__(self, model: Model, op: OperatorInfo, stage_input: np.ndarray, *,
                 side: Mapping[int, np.ndarray] | None = None) -> np.ndarray: ...


def run_patched(model: Model, inputs: Sequence[np.ndarray],
                executor: Executor | None = None,
                patch_runner: PatchRunner | None = None) -> list[np.ndarray]:
    """Outputs of a patched model: whole in x86 TFLM with the C++ kernel, or TFLM between
    PATCH_EXECs and the numpy reference for them (`executor`, default: the kernel when it
    can be built). `patch_runner` forces the split path with that PATCH_EXEC runner
    (e.g. native.run_patch_exec_native: the C++ core through ctypes)."""
    if len(inputs) != len(model.inputs):
        raise TflmPatchError(f"the model has {len(model.inputs)} input(s), got {len(inputs)}")
    kernel = None if patch_runner is not None else (executor or default_executor()).kernel
    if kernel is not None:
        data = model.raw or model_to_bytes(model.obj)
        outs = tflm_runner.run_model(data, list(inputs), **kernel.runner_kwargs())
        return [np.asarray(v).reshape(model.tensors[t].shape)
                for v, t in zip(outs, model.outputs, strict=True)]
    env: dict[int, np.ndarray] = {}
    for t, x in zip(model.inputs, inputs, strict=True):
        env[t] = np.asarray(x).reshape(model.tensors[t].shape)
    segs = _segments(model)
    for k, (kind, ops) in enumerate(segs):
        if kind == "patch":
            op = model.operators[ops[0]]
            runner = patch_runner or run_patch_exec
            # runtime inputs besides the stage input (SE scales, residual addends)
            side = {t: env[t] for t in model.activation_inputs(op)[1:] if t in env}
            env[op.outputs[0]] = runner(model, op, env[op.inputs[0]], side=side)
            continue
        produced = {t for i in ops for t in model.operators[i].outputs}
        seg_in = []
        for i in ops:
            for t in model.activation_inputs(model.operators[i]):
                if t not in produced and t not in seg_in:
                    seg_in.append(t)
        later = {t for _, rest in segs[k + 1:] for i in rest
                 for t in model.activation_inputs(model.operators[i])} | set(model.outputs)
        seg_out = [t for i in ops for t in model.operators[i].outputs if t in later]
        data = segment_model(model, ops, seg_in, seg_out)
        results = tflm_runner.run_model(data, [env[t] for t in seg_in])
        for t, value in zip(seg_out, results, strict=True):
            env[t] = np.asarray(value).reshape(model.tensors[t].shape)
    return [env[t] for t in model.outputs]


@dataclass(frozen=True)
class Comparison:
    label: str
    original: list[np.ndarray]
    patched: list[np.ndarray]
    executor: str = ""  # Executor.description of the patched run

    @property
    def max_abs_diff(self) -> int | float:
        """Largest |original - patched| over every output (a float for float outputs)."""
        return max((_max_diff(a, b) for a, b in zip(self.original, self.patched, strict=True)),
                   default=0)

    @property
    def identical(self) -> bool:
        return all(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                   for a, b in zip(self.original, self.patched, strict=True))


def compare(original: Model, patched: Model, inputs: Sequence[np.ndarray],
            label: str, executor: Executor | None = None) -> Comparison:
    executor = executor or default_executor()
    want = tflm_runner.run_model(original.raw, inputs)
    got = run_patched(patched, inputs, executor)
    want = [np.asarray(w).reshape(original.tensors[t].shape)
            for w, t in zip(want, original.outputs, strict=True)]
    return Comparison(label, want, got, executor.description)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int | float:
    if not a.size or a.shape != b.shape:
        return 0
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))


_INT_TYPES = ("int8", "uint8", "int16", "int32")


def input_quantizer(model: Model, t: int) -> tuple[float, int] | None:
    """(scale, zero point) of the int8 QUANTIZE that alone reads float input `t`, or None."""
    readers = model.consumers().get(t, [])
    if len(readers) != 1 or model.operators[readers[0]].name != "QUANTIZE":
        return None
    q = model.tensors[model.operators[readers[0]].outputs[0]]
    if q.dtype != "int8" or q.quantization is None or len(q.quantization.scale) != 1:
        return None
    zp = q.quantization.zero_point
    return q.quantization.scale[0], zp[0] if zp else 0


def dequantized(model: Model, t: int, values: np.ndarray) -> np.ndarray:
    """int8 `values` as the float32 data of float input `t`: (q - zero point) * scale,
    which the model's QUANTIZE maps back to `values` exactly (|q - zp| <= 255 and a
    float32 scale: the division lands within rounding distance of the integer)."""
    quant = input_quantizer(model, t)
    if quant is None:
        raise TflmPatchError(f"input tensor {t} is {model.tensors[t].dtype} and not read by an "
                             "int8 QUANTIZE alone: no quantized range to draw its values from")
    scale, zp = quant
    return ((values.astype(np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)


def random_inputs(model: Model, seed: int) -> list[np.ndarray]:
    """One seeded random array per model input: integers over the whole range of its type;
    a float32 input read by an int8 QUANTIZE gets dequantized random int8 values (inside
    its quantized range, so the QUANTIZE reproduces them exactly)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        info = model.tensors[t]
        if info.dtype in _INT_TYPES:
            limits = np.iinfo(info.dtype)
            arrays.append(rng.integers(limits.min, int(limits.max) + 1, size=info.shape,
                                       dtype=info.dtype))
        elif info.dtype == "float32":
            q = rng.integers(-128, 128, size=info.shape, dtype=np.int8)
            arrays.append(dequantized(model, t, q))
        else:
            raise TflmPatchError(f"input tensor {t} is {info.dtype}; random inputs are "
                                 f"integers or float32")
    return arrays


def load_input(model: Model, path: str | Path) -> list[np.ndarray]:
    """One input array from a file: .npy of the input's type (any shape with the right
    size), or an image (8-bit; pixel bytes reinterpreted as int8, as TFLM's
    generate_cc_arrays does; for a float32 input read by an int8 QUANTIZE, those int8
    values dequantized)."""
    p = Path(path)
    if len(model.inputs) != 1:
        raise TflmPatchError(f"--input gives one array; the model has {len(model.inputs)} inputs")
    t = model.inputs[0]
    info = model.tensors[t]
    is_npy = p.suffix.lower() == ".npy"
    arr = (read_npy if is_npy else read_image_bytes)(p, info.numel)
    if arr.size != info.numel:
        raise InputFileError(f"{shown(p)}: {arr.size} values, the input tensor "
                             f"{list(info.shape)} needs {info.numel}")
    if not is_npy and info.dtype == "float32" and arr.dtype == np.int8:
        arr = dequantized(model, t, arr)
    if arr.dtype.name != info.dtype:
        raise InputFileError(f"{shown(p)}: {arr.dtype} data; the model input is {info.dtype} "
                             "(.npy files of the input's type and 8-bit images are read)")
    return [arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(info.shape)]


def quantized(model: Model, t: int, values: np.ndarray) -> np.ndarray:
    """Float input `t`'s data as its int8 QUANTIZE computes it (TFLM's AffineQuantize:
    float32 division, rounded half away from zero, plus the zero point, clamped)."""
    quant = input_quantizer(model, t)
    if quant is None:
        raise TflmPatchError(f"input tensor {t} is not read by an int8 QUANTIZE alone")
    scale, zp = quant
    v = (values.astype(np.float32) / np.float32(scale)).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zp
    return np.clip(q, -128, 127).astype(np.int8)


def _zero_point(model: Model, t: int) -> int:
    q = model.tensors[t].quantization
    return q.zero_point[0] if q is not None and q.zero_point else 0


def _same_scale(a: Model, ta: int, b: Model, tb: int) -> bool:
    """Both tensors quantized per tensor with the same scale: a uint8 -> int8 QUANTIZE
    between them only moves the zero point (TFLM's requantization by 1.0 is exact)."""
    qa, qb = a.tensors[ta].quantization, b.tensors[tb].quantization
    return (qa is not None and qb is not None and len(qa.scale) == 1 == len(qb.scale)
            and qa.scale[0] == qb.scale[0])


def stripped_inputs(original: Model, stripped: Model,
                    arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Inputs made for `original` as its int8 I/O version `stripped` takes them: each
    float input quantized as its removed QUANTIZE would."""
    out = []
    for t, s, a in zip(original.inputs, stripped.inputs, arrays, strict=True):
        dtype = stripped.tensors[s].dtype
        if a.dtype.name == dtype:
            out.append(a)
        elif a.dtype == np.float32 and dtype == "int8":
            out.append(quantized(original, t, a))
        elif a.dtype == np.uint8 and dtype == "int8" and _same_scale(original, t, stripped, s):
            zp_u = _zero_point(original, t)
            zp_i = _zero_point(stripped, s)
            out.append(np.clip(a.astype(np.int32) - zp_u + zp_i, -128, 127).astype(np.int8))
        else:
            raise TflmPatchError(f"input tensor {t}: {a.dtype} data for the int8 I/O model's "
                                 f"{dtype} input; give {dtype} data")
    return out


def load_pair(original: str | Path, patched: str | Path) -> tuple[Model, Model]:
    a, b = load_model(original), load_model(patched)
    pair_checked(a, b)
    return a, b


def _signature(model: Model) -> list[list[tuple[tuple[int, ...], str]]]:
    return [[(model.tensors[t].shape, model.tensors[t].dtype) for t in ts]
            for ts in (model.inputs, model.outputs)]


def matched_original(original: Model, patched: Model) -> tuple[Model, str | None]:
    """`original` as `patched` should compare with it: itself, or, when `patched` is its
    `--int8-io` version (inputs/outputs as the interface pass would make them), the
    original with its interface stripped the same way, and a line saying so."""
    from tflm_patch.interface import interface_metadata, strip_float_interface

    if _signature(original) == _signature(patched):
        return original, None
    strip = strip_float_interface(original)
    if not strip.changed:
        return original, None
    stripped = load_model(strip.model)
    recorded = [r.to_json() for r in interface_metadata(patched)]
    if _signature(stripped) != _signature(patched) or recorded not in ([], strip.to_json()):
        return original, None
    return stripped, ("original: its float interface stripped as --int8-io does ("
                      f"{len(strip.removed)} conversions), compared with the int8 I/O model")


def pair_checked(a: Model, b: Model) -> None:
    """Refuse two models whose inputs or outputs differ in count, shape or type: not an
    original and its patched version (every output is compared)."""
    for kind, ta, tb in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        sig_a = [(a.tensors[t].shape, a.tensors[t].dtype) for t in ta]
        sig_b = [(b.tensors[t].shape, b.tensors[t].dtype) for t in tb]
        if sig_a != sig_b:
            raise TflmPatchError(f"the two models have different {kind}s ({_sig(sig_a)} vs "
                                 f"{_sig(sig_b)}): not an original and its patched version")


def _sig(sig: list[tuple[tuple[int, ...], str]]) -> str:
    return ", ".join(f"{dtype} {list(shape)}" for shape, dtype in sig) or "none"

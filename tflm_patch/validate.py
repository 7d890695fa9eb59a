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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


PatchRunner = Callable[[Model, OperatorInfo, np.ndarray], np.ndarray]


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
            env[op.outputs[0]] = (patch_runner or run_patch_exec)(model, op, env[op.inputs[0]])
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
    def max_abs_diff(self) -> int:
        return max((int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
                    if a.size else 0) for a, b in zip(self.original, self.patched, strict=True))

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


def random_inputs(model: Model, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        info = model.tensors[t]
        if info.dtype != "int8":
            raise TflmPatchError(f"input tensor {t} is {info.dtype}; random inputs are int8")
        arrays.append(rng.integers(-128, 128, size=info.shape, dtype=np.int8))
    return arrays


def load_input(model: Model, path: str | Path) -> list[np.ndarray]:
    """One input array from a file: .npy (any shape with the right size, int8), or an
    image (8-bit; pixel bytes reinterpreted as int8, as TFLM's generate_cc_arrays does)."""
    p = Path(path)
    if len(model.inputs) != 1:
        raise TflmPatchError(f"--input gives one array; the model has {len(model.inputs)} inputs")
    info = model.tensors[model.inputs[0]]
    read = read_npy if p.suffix.lower() == ".npy" else read_image_bytes
    arr = read(p, info.numel)
    if arr.size != info.numel:
        raise InputFileError(f"{shown(p)}: {arr.size} values, the input tensor "
                             f"{list(info.shape)} needs {info.numel}")
    if arr.dtype != np.int8 or info.dtype != "int8":
        raise InputFileError(f"{shown(p)}: {arr.dtype} data; the model input is {info.dtype} "
                             "(int8 .npy files and 8-bit images are read)")
    return [arr.reshape(info.shape)]


def load_pair(original: str | Path, patched: str | Path) -> tuple[Model, Model]:
    a, b = load_model(original), load_model(patched)
    pair_checked(a, b)
    return a, b


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

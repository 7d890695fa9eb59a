"""Every intermediate tensor of one x86 TFLM inference, for bit-exact comparisons.

TFLM normally reuses activation memory; with
`InterpreterConfig.kPreserveAllTensors` each tensor keeps its own buffer, so after
one Invoke every operator's inputs and output can be read back. The interpreter runs
in a child process (`tflm_patch.tflm_runner`), so that a TFLM abort or crash becomes
a `TflmRunError` instead of ending this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tflm_patch import tflm_runner
from tflm_patch.errors import TflmRunError
from tflm_patch.model import Model, OperatorInfo, load_model

log = logging.getLogger(__name__)


def run_all_tensors(model_bytes: bytes, inputs: Sequence[np.ndarray], *,
                    arena_size: int | None = None,
                    timeout: float = tflm_runner.DEFAULT_TIMEOUT) -> dict[int, np.ndarray]:
    """Invoke the model once on `inputs` (one array per model input, any shape with the
    right number of elements) in a child process; the value of every tensor of
    subgraph 0 afterwards, by tensor index, shaped as in the model."""
    model = load_model(model_bytes)
    arrays = _check_inputs(model, inputs)
    tensors = tflm_runner.run_all_tensors(model.raw, arrays, arena_size=arena_size,
                                          timeout=timeout)
    result: dict[int, np.ndarray] = {}
    for index, value in tensors.items():
        info = model.tensors[index]
        arr = np.asarray(value)
        if arr.size == info.numel and info.shape:
            arr = arr.reshape(info.shape)
        result[index] = arr
    missing = [t for op in model.operators for t in op.outputs if t >= 0 and t not in result]
    if missing:
        raise TflmRunError(f"TFLM returned no value for tensor(s) {missing[:5]}")
    return result


def _check_inputs(model: Model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(inputs) != len(model.inputs):
        raise TflmRunError(f"the model has {len(model.inputs)} input(s), got {len(inputs)}")
    arrays = []
    for t, x in zip(model.inputs, inputs, strict=True):
        info = model.tensors[t]
        arr = np.asarray(x)
        if arr.size != info.numel:
            raise TflmRunError(f"input tensor {t} ('{info.name}') has shape {info.shape}, "
                               f"got an array of shape {arr.shape}")
        if arr.dtype != np.dtype(info.dtype):
            raise TflmRunError(f"input tensor {t} ('{info.name}') is {info.dtype}, "
                               f"got {arr.dtype}")
        arrays.append(np.ascontiguousarray(arr.reshape(info.shape)))
    return arrays


@dataclass(frozen=True)
class Trace:
    """A model and the tensors of one TFLM inference."""

    model: Model
    tensors: dict[int, np.ndarray]

    def op_inputs(self, op: OperatorInfo) -> list[np.ndarray]:
        """TFLM's values of the op's activation (non-constant) inputs, in order."""
        return [self.tensors[t] for t in self.model.activation_inputs(op)]

    def op_output(self, op: OperatorInfo) -> np.ndarray:
        return self.tensors[op.outputs[0]]


def trace(model: Model | bytes | str | os.PathLike[str], inputs: Sequence[np.ndarray], *,
          arena_size: int | None = None,
          timeout: float = tflm_runner.DEFAULT_TIMEOUT) -> Trace:
    """`run_all_tensors` for a loaded model (or anything `load_model` accepts)."""
    m = model if isinstance(model, Model) else load_model(model)
    return Trace(m, run_all_tensors(m.raw, inputs, arena_size=arena_size, timeout=timeout))

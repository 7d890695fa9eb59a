"""Per-operator analysis: MACs, activation lifetimes and the layer-by-layer peak.

"Layer-by-layer" is how TFLM runs a model: one operator at a time, every
activation tensor alive from the operator that writes it (or the start, for graph
inputs) to the last operator that reads it (or the end, for graph outputs). The
working set of an operator is the sum of the activation tensors alive while it
runs; its maximum over the model is the layer-by-layer peak, the lower bound of
TFLM's head (the greedy planner can only add fragmentation to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tflm_patch.model import Model, OperatorInfo


@dataclass(frozen=True)
class Lifetime:
    tensor: int
    first: int  # index of the op that writes it; 0 for graph inputs
    last: int  # index of the last op that reads it; the last op for graph outputs
    nbytes: int


@dataclass(frozen=True)
class OpStats:
    index: int
    name: str
    output_shape: tuple[int, ...]
    input_bytes: int  # activation (non-constant) inputs
    output_bytes: int
    weight_bytes: int  # constant inputs
    macs: int
    live_bytes: int  # every activation tensor alive while the op runs
    live_tensors: tuple[int, ...]

    @property
    def in_out_bytes(self) -> int:
        return self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class Analysis:
    ops: tuple[OpStats, ...]
    lifetimes: tuple[Lifetime, ...]
    peak_op: int
    peak_bytes: int
    total_macs: int

    @property
    def peak(self) -> OpStats:
        return self.ops[self.peak_op]


def _spatial_out(model: Model, op: OperatorInfo) -> int:
    shape = model.tensors[op.outputs[0]].shape
    return int(np.prod(shape[:-1], dtype=np.int64)) if shape else 1


def _conv_macs(model: Model, op: OperatorInfo) -> int:
    # filter [out_c, kh, kw, in_c_per_group]; every output element reads kh*kw*in_c_per_group
    _, kh, kw, ic = model.tensors[op.inputs[1]].shape
    return model.tensors[op.outputs[0]].numel * kh * kw * ic


def _depthwise_macs(model: Model, op: OperatorInfo) -> int:
    # filter [1, kh, kw, out_c]; depth multiplier only changes out_c
    _, kh, kw, _ = model.tensors[op.inputs[1]].shape
    return model.tensors[op.outputs[0]].numel * kh * kw


def _fc_macs(model: Model, op: OperatorInfo) -> int:
    out_units, depth = model.tensors[op.inputs[1]].shape[-2:]
    rows = model.tensors[op.inputs[0]].numel // max(depth, 1)
    return rows * out_units * depth


def _pool_macs(model: Model, op: OperatorInfo) -> int:
    o = op.options
    return model.tensors[op.outputs[0]].numel * int(o.filterHeight) * int(o.filterWidth)


def _elementwise_macs(model: Model, op: OperatorInfo) -> int:
    return model.tensors[op.outputs[0]].numel


def _reduce_macs(model: Model, op: OperatorInfo) -> int:
    return model.tensors[op.inputs[0]].numel


_MACS: dict[str, Callable[[Model, OperatorInfo], int]] = {
    "CONV_2D": _conv_macs,
    "DEPTHWISE_CONV_2D": _depthwise_macs,
    "FULLY_CONNECTED": _fc_macs,
    "AVERAGE_POOL_2D": _pool_macs,
    "MAX_POOL_2D": _pool_macs,
    "ADD": _elementwise_macs,
    "MUL": _elementwise_macs,
    "MEAN": _reduce_macs,
    "SUM": _reduce_macs,
}


def op_macs(model: Model, op: OperatorInfo) -> int:
    """Multiply-accumulates (or equivalent element operations) of one op; 0 for data movement."""
    fn = _MACS.get(op.name)
    return int(fn(model, op)) if fn else 0


def lifetimes(model: Model) -> list[Lifetime]:
    """Lifetime of every activation (non-constant) tensor used by the graph."""
    last_op = max(len(model.operators) - 1, 0)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in model.inputs:
        first[t] = 0
        last[t] = 0
    for op in model.operators:
        for t in model.activation_inputs(op):
            first.setdefault(t, op.index)
            last[t] = op.index
        for t in op.outputs:
            if t >= 0:
                first.setdefault(t, op.index)
                last[t] = max(last.get(t, op.index), op.index)
    for t in model.outputs:
        first.setdefault(t, last_op)
        last[t] = last_op
    return [
        Lifetime(t, first[t], last[t], model.tensors[t].nbytes)
        for t in sorted(first)
        if not model.tensors[t].is_constant
    ]


def analyze(model: Model) -> Analysis:
    lives = lifetimes(model)
    ops: list[OpStats] = []
    for op in model.operators:
        live = tuple(lt.tensor for lt in lives if lt.first <= op.index <= lt.last)
        act_in = model.activation_inputs(op)
        outs = [t for t in op.outputs if t >= 0]
        consts = {t for t in op.inputs if t >= 0 and model.tensors[t].is_constant}
        ops.append(
            OpStats(
                index=op.index,
                name=op.name,
                output_shape=model.tensors[outs[0]].shape if outs else (),
                input_bytes=sum(model.tensors[t].nbytes for t in set(act_in)),
                output_bytes=sum(model.tensors[t].nbytes for t in outs),
                weight_bytes=sum(model.tensors[t].nbytes for t in consts),
                macs=op_macs(model, op),
                live_bytes=sum(model.tensors[t].nbytes for t in live),
                live_tensors=live,
            )
        )
    if not ops:
        return Analysis((), tuple(lives), 0, 0, 0)
    peak = max(ops, key=lambda s: (s.live_bytes, -s.index))
    return Analysis(
        ops=tuple(ops),
        lifetimes=tuple(lives),
        peak_op=peak.index,
        peak_bytes=peak.live_bytes,
        total_macs=sum(s.macs for s in ops),
    )

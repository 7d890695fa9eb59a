"""Operators the arena tables do not know, as measured in x86 TFLM: what `arena_head` and
`arena_tail` read for them.

`arena_measure` takes the measurements and keeps them on the `Model`
(`arena_measure.ensure_measured`, which `arena.predict_arena` and `arena.PatchedArena`
call before they predict); this module only reads them. So the tables, and the
measuring machinery that replays the tables, do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model, OperatorInfo

MEASURE_VERSION = 1
MEMO_KEY = ("arena_measure", MEASURE_VERSION)  # Model.memo: {operator index: MeasuredOp}


@dataclass(frozen=True)
class MeasuredOp:
    """An operator's allocations as measured: its first kernel allocation (`first` bytes,
    in `phase` "init" or "prepare"; "" when it makes none), `rest_count` more of
    `rest` bytes in all (a multiple of 16), its scratch requests (None: arena_head's
    table), or `error`: why it could not be measured."""

    first: int = 0
    phase: str = ""
    rest: int = 0
    rest_count: int = 0
    scratch: tuple[int, ...] | None = None
    error: str = ""


def measured_op(model: Model, op: OperatorInfo) -> MeasuredOp:
    """The measurement of `op`, one of `model`'s operators. One with an `error` counts as
    allocating nothing: `arena_measure.unpredicted` says so."""
    if not 0 <= op.index < len(model.operators) or model.operators[op.index] != op:
        raise UnsupportedModelError(
            f"operator {op.index} ({op.name}) is not the model's: the arena prediction "
            "measures only the model's own operators")
    found = model.memoized(MEMO_KEY)
    if found is None or op.index not in found:
        raise UnsupportedModelError(
            f"operator {op.index} ({op.name}) has no arena-table entry and was not "
            "measured (arena_measure.ensure_measured measures it)")
    return found[op.index]

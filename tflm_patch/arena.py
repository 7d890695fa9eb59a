"""The TFLM arena model: head (greedy plan of activations and scratch) + tail (persistent data).

`predict_arena` is built from TFLM's own allocation rules (see arena_head.py and
arena_tail.py); `measure_arena` runs the x86 TFLM interpreter (in a child process)
to find the smallest arena that really works.
"""

from __future__ import annotations

from dataclasses import dataclass

from tflm_patch.arena_head import HeadPlan, plan_head
from tflm_patch.arena_tail import TailPrediction, predict_tail
from tflm_patch.model import Model


@dataclass(frozen=True)
class ArenaPrediction:
    head: HeadPlan
    tail: TailPrediction
    target: str

    @property
    def total(self) -> int:
        return self.head.size + self.tail.total


def predict_arena(model: Model, target: str = "x86_64") -> ArenaPrediction:
    return ArenaPrediction(plan_head(model, target), predict_tail(model, target), target)

"""The TFLM arena model: head (greedy plan of activations and scratch) + tail (persistent data).

`predict_arena` is built from TFLM's own allocation rules (arena_head.py, arena_tail.py).
The smallest arena that works is the larger of
- head + tail after AllocateTensors, and
- the memory CommitStaticMemoryPlan needs while it plans (scratch requests, allocation
  info and the planner's arrays, in the head) + the tail allocated by then (everything
  but the input/output TfLiteTensors, which come after the plan);
the second only wins for tiny models (hello_world_int8). `tflm_runner.smallest_arena`
measures it on the x86 TFLM interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

from tflm_patch.arena_head import HeadPlan, plan_head, planning_head_bytes
from tflm_patch.arena_tail import TailPrediction, predict_tail
from tflm_patch.model import Model


@dataclass(frozen=True)
class ArenaPrediction:
    head: HeadPlan
    tail: TailPrediction
    planning_bytes: int
    target: str

    @property
    def after_allocation(self) -> int:
        """head + tail once AllocateTensors is done (RecordingMicroAllocator's total)."""
        return self.head.size + self.tail.total

    @property
    def during_planning(self) -> int:
        return self.planning_bytes + self.tail.before_io_tensors

    @property
    def total(self) -> int:
        """The smallest arena with which AllocateTensors succeeds."""
        return max(self.after_allocation, self.during_planning)


def predict_arena(model: Model, target: str = "x86_64",
                  tail: TailPrediction | None = None) -> ArenaPrediction:
    """`tail`: predict_tail(model, target) when the caller has it (it does not depend on
    the scratch sizes, so the patch planner computes it once per stage)."""
    head = plan_head(model, target)
    return ArenaPrediction(
        head,
        tail if tail is not None else predict_tail(model, target),
        planning_head_bytes(model, target, head),
        target,
    )

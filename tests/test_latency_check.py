"""PlanResult.latency_check (one float per stage, exact estimate only near the limit) answers
exactly as the rounded estimate `fits` uses, for every plan the multi-stage search judges."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from tflm_patch.cost import StageKey
from tflm_patch.model import load_model
from tflm_patch.planner import PlanRequest, PlanResult, plan
from tflm_patch.zoo import ensure_model

# plans under ~1 s whose searches judge plans on both sides of the latency limit
MODELS = ("pools_dilated", "mcunet_dw57")
Check = Callable[[StageKey, bool], bool | None]


@pytest.mark.parametrize("name", MODELS)
def test_latency_check_equals_the_rounded_estimate(name: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[tuple[PlanResult, list[StageKey], StageKey, bool]] = []
    fast = PlanResult.latency_check

    def record(self: PlanResult, stages: Sequence[StageKey]) -> Check:
        check = fast(self, stages)

        def recorded(key: StageKey, known_only: bool) -> bool | None:
            got = check(key, known_only)
            if got is not None:
                judged.append((self, list(stages), key, got))
            return got

        return recorded

    monkeypatch.setattr(PlanResult, "latency_check", record)
    # one process: the checks a child makes would not be recorded here
    plan(load_model(ensure_model(name)), PlanRequest(objective="latency", jobs=1))
    assert judged
    assert {got for *_, got in judged} == {True, False}  # both answers were given
    for r, stages, key, got in judged:
        assert r.cost is not None
        exact = r.cost.plan_instructions([*stages, key])
        assert abs(r.cost.unrounded + sum(map(r.cost.stage_change, [*stages, key]))
                   - exact) < 1.0
        limit = 1.0 + r.request.max_latency + 1e-12
        assert got == (exact / r.instructions_before <= limit), (stages, key)

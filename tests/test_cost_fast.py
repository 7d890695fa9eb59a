"""cost.PlanCost.plan_instructions (dense vectors, cached stage changes and fused-stage
sums) gives exactly the estimate of the features `plan_features` adds up, for every
candidate the latency objective judges and every candidate it keeps."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tflm_patch.cost import PlanCost, StageKey, estimate
from tflm_patch.model import load_model
from tflm_patch.planner import PlanRequest, plan, stage_keys
from tflm_patch.zoo import ensure_model

MODELS = ("odd_stride2", "pools_dilated", "mcunet_dw57", "nchw_input")  # plans under ~1 s


@pytest.mark.first_case_quick
@pytest.mark.parametrize("name", MODELS)
def test_plan_instructions_equal_the_features_estimate(name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[list[StageKey]] = []
    fast = PlanCost.plan_instructions

    def record(self: PlanCost, stages: Iterable[StageKey]) -> int:
        keys = list(stages)
        judged.append(keys)
        return fast(self, keys)

    monkeypatch.setattr(PlanCost, "plan_instructions", record)
    # one process: what a child judges would not be recorded here
    r = plan(load_model(ensure_model(name)), PlanRequest(objective="latency", jobs=1))
    assert r.cost is not None and judged
    keys_of = [*judged, *(stage_keys(c) for c in r.candidates)]
    assert any(any(k[4] for k in keys) for keys in keys_of)  # fused stages were judged too
    for keys in keys_of:
        assert fast(r.cost, keys) == estimate(r.cost.plan_features(keys)), keys

"""Planner: acceptance figures on the real models, never-worse on every model, objectives.

Most tests here check the memory objective (`--objective memory`: smallest arena within the
MAC limit, the planner's behaviour before the latency objective); the latency objective's
own tests are at the end."""

from __future__ import annotations

import re
from functools import cache

import pytest
from conftest import shared_model_path

from tflm_patch.arena import predict_arena
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.evaluate import StageEvaluator, UnitGraphs
from tflm_patch.model import Model, load_model
from tflm_patch.planner import (
    PlanError,
    PlanRequest,
    PlanResult,
    patched_model_object,
    plan,
    plan_stages,
)
from tflm_patch.rewrite import plan_metadata, to_checked_bytes
from tflm_patch.schedule import make_schedule
from tflm_patch.zoo import ZOO_NAMES, ensure_model

MEMORY = PlanRequest(objective="memory")


@cache
def _plan(name: str, shared: bool = False,
          request: PlanRequest = MEMORY) -> tuple[Model, PlanResult]:
    path = shared_model_path(name) if shared else ensure_model(name)
    model = load_model(path)
    return model, plan(model, request)


def test_person_detect_acceptance() -> None:
    _, r = _plan("person_detect", True)
    c = r.chosen
    assert r.arena_before == 85_264
    assert c is not None and c.arena <= 55_000
    assert r.overhead(c) <= 0.20
    assert c.arena == 20_016  # the memory objective's plan (docs/benchmarks.md)
    assert r.latency_ratio(c) > 0  # and reports its estimated Cortex-M4 instruction ratio


@pytest.mark.slow
def test_mobilenet_v2_nchw_plan() -> None:
    model, r = _plan("mobilenet_v2_int8_224_nchw", True)
    c = r.chosen
    assert r.arena_before == 2_607_152
    assert c is not None and r.overhead(c) <= 0.20
    assert model.operators[c.first].name == "TRANSPOSE"  # folded into the main stage
    assert c.arena <= 262_144  # issue 6's target (>= 9.9x)
    assert c.fused and c.extra  # with fused convolutions and more stages after the main one
    assert c.arena == 223_728  # the memory objective's plan (docs/benchmarks.md)


@pytest.mark.slow
def test_mobilenet_v2_nchw_plan_within_10_percent_macs() -> None:
    """Issue 6: <= 262,144 bytes with MAC overhead <= 10% (asked for explicitly)."""
    model = load_model(shared_model_path("mobilenet_v2_int8_224_nchw"))
    r = plan(model, PlanRequest(max_overhead=0.10, objective="memory"))
    c = r.chosen
    assert c is not None and r.overhead(c) <= 0.10
    assert c.arena <= 262_144


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ZOO_NAMES, "person_detect", "mobilenet_v2_int8_224_nchw"])
def test_multi_stage_never_worse_than_single_stage(name: str) -> None:
    shared = name in ("person_detect", "mobilenet_v2_int8_224_nchw")
    model, multi = _plan(name, shared)
    single = plan(model, PlanRequest(multi_stage=False, objective="memory"))
    assert single.chosen is not None and multi.chosen is not None
    assert not single.chosen.fused
    assert multi.chosen.arena <= single.chosen.arena
    assert multi.overhead(multi.chosen) <= 0.20


@pytest.mark.parametrize("name", ["hello_world_int8", "micro_speech_quantized"])
def test_small_models_are_left_alone(name: str) -> None:
    _, r = _plan(name, True)
    assert r.chosen is None
    assert "stays as it is" in r.message


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_plan_is_smaller_and_within_overhead(name: str) -> None:
    _, r = _plan(name)
    c = r.chosen
    assert c is not None
    assert c.arena <= 0.9 * r.arena_before
    assert r.overhead(c) <= 0.20


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ZOO_NAMES, "person_detect", "mobilenet_v2_int8_224_nchw"])
def test_chosen_arena_equals_prediction_of_written_model(name: str) -> None:
    """The planner's shortcut (patched model built once per stage, options swapped per
    grid) predicts exactly what the arena model says of the file convert writes."""
    model, r = _plan(name, name in ("person_detect", "mobilenet_v2_int8_224_nchw"))
    data = to_checked_bytes(patched_model_object(model, r))
    patched = load_model(data)
    assert predict_arena(patched).total == r.chosen.arena  # type: ignore[union-attr]
    meta = plan_metadata(patched)
    assert meta is not None and meta["predicted"]["arena_after"] == r.chosen.arena  # type: ignore[union-attr]
    assert meta["grid"] == list(r.chosen.grid)  # type: ignore[union-attr]


@pytest.mark.first_case_quick
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_pareto_front_is_not_dominated(name: str) -> None:
    _, r = _plan(name)
    front = r.pareto()
    assert front
    for p in front:
        assert not any(c.arena <= p.arena and c.macs <= p.macs and
                       (c.arena, c.macs) != (p.arena, p.macs) for c in r.candidates)


def test_budget_picks_fewest_macs_that_fit() -> None:
    model, r = _plan("mbv1_025_96")
    budget = sorted(c.arena for c in r.candidates)[len(r.candidates) // 2]
    rb = plan(model, PlanRequest(budget=budget))
    assert rb.chosen is not None and rb.chosen.arena <= budget
    fits = [c for c in rb.candidates if c.arena <= budget]
    assert rb.chosen.macs == min(c.macs for c in fits)


def test_impossible_budget_names_the_smallest() -> None:
    model, r = _plan("mbv1_025_96")
    with pytest.raises(PlanError, match="impossible budget: 1,000 bytes") as e:
        plan(model, PlanRequest(budget=1000))
    m = re.search(r"the smallest arena any plan reaches is ([\d,]+) bytes", str(e.value))
    assert m is not None
    smallest = int(m.group(1).replace(",", ""))
    assert smallest < r.arena_before
    # the arena named is reachable: that budget gets a plan of exactly it
    rb = plan(model, PlanRequest(budget=smallest))
    assert rb.chosen is not None and rb.chosen.arena == smallest
    with pytest.raises(PlanError, match=f"impossible budget.*{smallest:,}"):
        plan(model, PlanRequest(budget=smallest - 1))


def test_budget_already_met_leaves_model() -> None:
    model, r = _plan("odd_stride2")
    rb = plan(model, PlanRequest(budget=r.arena_before))
    assert rb.chosen is None and "already fits" in rb.message


def test_forced_split_op_at_unsupported_op() -> None:
    model = load_model(ensure_model("odd_stride2"))
    mean = next(op.index for op in model.operators if op.name == "MEAN")
    with pytest.raises(PlanError, match=r"MEAN.*PATCH_EXEC executes only"):
        plan(model, PlanRequest(split_op=mean))


def test_forced_split_op_and_grid() -> None:
    model = load_model(ensure_model("odd_stride2"))
    r = plan(model, PlanRequest(split_op=3, grid=(2, 3)))
    assert r.chosen is not None
    assert (r.chosen.first, r.chosen.last, r.chosen.grid) == (0, 3, (2, 3))


def test_float_model_is_refused(float_model_bytes: bytes) -> None:
    with pytest.raises(UnsupportedModelError, match="float model"):
        plan(load_model(float_model_bytes))


@pytest.mark.parametrize("name", ["mbv2_035_144", "mcunet_dw57", "person_detect"])
def test_chosen_caches_are_each_worth_keeping(name: str) -> None:
    """Halo reuse per layer: the chosen plan's main stage keeps a column cache only where
    recomputing that tensor's halo instead would not give a smaller arena within the MAC
    limit (the planner's per-layer choice), and every cache it keeps is a valid one."""
    model, r = _plan(name, name == "person_detect")
    c = r.chosen
    assert c is not None and c.cache, "the default plan of this model reuses halos"
    (graph, _), *others = plan_stages(model, c)
    ev = StageEvaluator(model, graph, r.request.target, r.macs_before,
                        others[len(c.extra):], others[:len(c.extra)])
    again = ev.evaluate(c.grid, c.cache)[0]
    assert (again.arena, again.macs, again.cache) == (c.arena, c.macs, c.cache)
    assert c.cache <= make_schedule(graph, c.grid, cache=True).cached
    for t in c.cache:
        without = ev.evaluate(c.grid, c.cache - {t})[0]
        assert without.macs > c.macs  # the cache saves MACs ...
        # ... and recomputing instead would not make a smaller arena within the limit
        assert without.arena >= c.arena or r.overhead(without) > r.request.mac_limit


# ------------------------------------------------------------------ latency objective

FAST = ("odd_stride2", "pools_dilated", "nchw_input", "mcunet_dw57")


@pytest.mark.slow
@pytest.mark.parametrize("limit", [0.15, 1.0, 3.0])
@pytest.mark.parametrize("name", FAST)
def test_latency_objective_stays_within_its_limit(name: str, limit: float) -> None:
    """The chosen plan's estimated instructions are within the limit, and no candidate
    with a smaller arena (cut by at least min_saving) is: the smallest arena within it.
    Without one, the model stays as it is and the message says why."""
    _, r = _plan(name, request=PlanRequest(max_latency=limit))
    assert r.request.objective == "latency" and r.request.mac_limit == float("inf")
    c = r.chosen
    within = [p for p in r.candidates if p.arena <= r.arena_before * 0.9 and
              r.instructions(p) <= r.instructions_before * (1 + limit)]
    if c is None:
        assert not within and "stays as it is" in r.message
        assert "estimated Cortex-M4 instructions" in r.message
        return
    assert r.instructions(c) <= r.instructions_before * (1 + limit)
    assert c.arena == min(p.arena for p in within)
    assert c.arena < r.arena_before


@pytest.mark.parametrize("name", FAST)
def test_latency_objective_never_beats_memory_on_arena(name: str) -> None:
    _, lat = _plan(name, request=PlanRequest(max_latency=3.0))
    _, mem = _plan(name)
    assert mem.chosen is not None
    assert lat.chosen is None or lat.chosen.arena >= mem.chosen.arena or \
        lat.overhead(lat.chosen) > mem.request.mac_limit


def test_latency_objective_combines_with_max_overhead() -> None:
    _, r = _plan("pools_dilated", request=PlanRequest(max_latency=3.0, max_overhead=0.05))
    assert r.request.mac_limit == 0.05
    assert r.chosen is None or r.overhead(r.chosen) <= 0.05


def test_latency_plan_metadata_reports_instructions() -> None:
    model, r = _plan("pools_dilated", request=PlanRequest(max_latency=3.0))
    c = r.chosen
    assert c is not None
    meta = plan_metadata(load_model(to_checked_bytes(patched_model_object(model, r))))
    assert meta is not None and meta["objective"] == "latency"
    p = meta["predicted"]
    assert p["m4_instructions_before"] == r.instructions_before
    assert p["m4_instructions_after"] == r.instructions(c)
    assert p["m4_instruction_ratio"] == round(r.instructions(c) / r.instructions_before, 6)


@pytest.mark.parametrize("name", ["nchw_input", "mcunet_dw57"])
def test_latency_plan_fuses_only_what_pays(name: str) -> None:
    """A fused 1x1-grid PATCH_EXEC estimated slower than the operators it replaces is
    kept only where the arena would grow without it; one estimated faster is left out
    only where the arena would grow with it."""
    model, r = _plan(name, request=PlanRequest(max_latency=3.0))
    c = r.chosen
    assert c is not None and r.cost is not None
    (graph, _), *others = plan_stages(model, c)
    fixed = others[:len(c.extra)]
    units = UnitGraphs(model).outside([(c.first, c.last), *((a, b) for a, b, _ in c.extra)])
    checked = 0
    for g, _ in units:
        u = (g.first, g.last)
        gain = r.cost.stage_gain((*u, (1, 1), frozenset(), True))
        if (gain < 0) != (u in c.fused):
            continue  # slow and not fused, or fast and fused: nothing to check
        keep = [st for st in units if ((st[0].first, st[0].last) in c.fused) != (st[0] is g)]
        ev = StageEvaluator(model, graph, r.request.target, r.macs_before, keep, fixed)
        assert ev.evaluate(c.grid, c.cache)[0].arena > c.arena, f"ops {u}"
        checked += 1
    assert checked or not units

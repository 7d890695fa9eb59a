"""The planner's arena evaluation (arena.PatchedArena, evaluate.StageEvaluator) against the
arena model on the patched model built for real (rewrite.replace_stages): exact bytes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import shared_model_path

from tflm_patch.arena import predict_arena
from tflm_patch.arena_head import Placement, greedy_order, greedy_plan
from tflm_patch.evaluate import StageEvaluator, UnitGraphs
from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.multistage import tail_stages
from tflm_patch.rewrite import replace_stages
from tflm_patch.schedule import Schedule, make_schedule
from tflm_patch.stage import StageGraph, build_stage, candidate_stages
from tflm_patch.zoo import ZOO_NAMES, ensure_model

PATCHABLE = ("person_detect", "mobilenet_v2_int8_224_nchw")
MODELS = [f"shared:{n}" for n in PATCHABLE] + [f"zoo:{n}" for n in ZOO_NAMES]
CONFIGS = 6  # random plans (main stage, stages after it, fused units) per model


def _model(spec: str) -> Model:
    kind, name = spec.split(":")
    path: Path = shared_model_path(name) if kind == "shared" else ensure_model(name)
    return load_model(path)


def _small(g: StageGraph, rng: random.Random, most: int) -> tuple[int, int]:
    h, w, _ = g.shapes[-1]
    return rng.randint(1, min(h, most)), rng.randint(1, min(w, most))


def _plans(model: Model, rng: random.Random
           ) -> list[tuple[StageGraph, list[tuple[StageGraph, Schedule]], list[
               tuple[StageGraph, Schedule]]]]:
    """Seeded random (main stage, patched stages after it, fused units) of the model."""
    units = UnitGraphs(model)
    stages = list(candidate_stages(model))
    plans = []
    for _ in range(CONFIGS):
        first, last = rng.choice(stages)
        taken = [(first, last)]
        fixed = []
        after = tail_stages(model, last, taken, units.support)
        for s, e in rng.sample(after, min(len(after), rng.randint(0, 2))):
            if any(s <= b and a <= e for a, b in taken):
                continue
            g = build_stage(model, s, e)
            fixed.append((g, make_schedule(g, _small(g, rng, 2))))
            taken.append((s, e))
        fused = units.outside(taken) if rng.random() < 0.7 else []
        plans.append((build_stage(model, first, last), fixed, fused))
    return plans


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86_64", "cortex_m"])
@pytest.mark.parametrize("spec", MODELS)
def test_evaluator_arena_equals_built_model(spec: str, target: str) -> None:
    """Every candidate's arena equals predict_arena of the model convert would write, and
    the lower bound the planner prunes with is never above it."""
    model = _model(spec)
    rng = random.Random(f"{spec}/{target}")
    checked = 0
    for main, fixed, fused in _plans(model, rng):
        ev = StageEvaluator(model, main, target, 1, fused, fixed)
        for grid in ((1, 1), _small(main, rng, 3), _small(main, rng, 8)):
            for cache in (False, True):
                cand, sched = ev.evaluate(grid, cache)
                built = model_from_object(replace_stages(model, [(main, sched), *fixed, *fused]))
                expected = predict_arena(built, target).total
                assert cand.arena == expected, (cand.label, grid, cache)
                assert ev.layout.lower_bound(sched.scratch_bytes) <= expected
                within = ev.evaluate_within(grid, expected, cache)
                assert within is not None and within[0].arena == expected
                checked += 1
    assert checked == CONFIGS * 6


@pytest.mark.parametrize("spec", [f"shared:{n}" for n in PATCHABLE])
def test_head_with_any_scratch_equals_greedy_plan(spec: str) -> None:
    """The head re-planned per scratch size (prefix reuse, moved buffers only) equals
    TFLM's greedy plan of the full buffer list, also for scratch sizes equal to another
    buffer's (ties are placed in TFLM's order)."""
    model = _model(spec)
    main, fixed, fused = _plans(model, random.Random(spec))[0]
    layout = StageEvaluator(model, main, "x86_64", 1, fused, fixed).layout
    k, scope = layout.main_at, layout.main_scope
    sizes = sorted({0, 1, 16, 17, 1 << 24, *layout.sizes, *(s + 16 for s in layout.sizes),
                    *(s - 16 for s in layout.sizes if s > 16)})
    for scratch in sizes:
        buffers = list(zip(layout.sizes, layout.firsts, layout.lasts, strict=True))
        if scratch:
            buffers.insert(k, (scratch, scope, scope))
        assert layout.head(scratch) == greedy_plan(buffers)[0], scratch


def test_placement_equals_greedy_plan() -> None:
    """Placement in greedy_order (what PatchedLayout uses) gives greedy_plan's offsets."""
    rng = random.Random(3)
    for _ in range(200):
        buffers = []
        for _ in range(rng.randint(0, 40)):
            first = rng.randint(-1, 12)
            buffers.append((16 * rng.randint(1, 6), first, first + rng.randint(0, 4)))
        placement = Placement()
        offsets = [0] * len(buffers)
        for i in greedy_order([size for size, _, _ in buffers]):
            offsets[i] = placement.place(*buffers[i])
        assert (placement.total, offsets) == greedy_plan(buffers)


def test_placement_put_matches_place() -> None:
    """Placement.put at the offset place() chose leaves the same state."""
    sizes = [64, 32, 32, 16, 48]
    firsts, lasts = [0, 1, 0, 2, 1], [1, 2, 3, 2, 1]
    a, b = Placement(), Placement()
    for i in greedy_order(sizes):
        b.put(a.place(sizes[i], firsts[i], lasts[i]), sizes[i], firsts[i], lasts[i])
    assert (a.placed, a.total) == (b.placed, b.total)

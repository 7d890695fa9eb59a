"""The patch planner: which stage to patch, with which grid.

For every candidate stage (stage.candidate_stages) and every n x m grid it predicts the
whole patched model's TFLM arena with the arena model (evaluate.StageEvaluator: exactly
the prediction for the model convert would write -- stage input/output and scratch in the
head, the tail with PATCH_EXEC's OpData and without the stage's per-channel data -- laid
out without building it) and the MACs patch by patch. Objectives:

- latency (default): the smallest arena whose estimated Cortex-M4 instructions (cost.py)
  are within max_latency of the original's (ties: fewer instructions), and whose MAC
  overhead is within max_overhead when that is given;
- memory: the smallest arena whose MAC overhead is <= max_overhead (default 20%; ties:
  fewer MACs);
- budget: the fewest MACs whose arena fits the budget (ties: smaller arena).

A plan is only ever returned when its arena is smaller than the unpatched model's.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tflm_patch.analysis import op_macs
from tflm_patch.arena import predict_arena
from tflm_patch.arena_measure import unpredicted
from tflm_patch.cost import PlanCost, StageKey
from tflm_patch.errors import TflmPatchError, UnsupportedModelError
from tflm_patch.evaluate import Candidate, StageEvaluator, UnitGraphs, without_gc
from tflm_patch.fuse import unit_grid
from tflm_patch.model import Model, require_int8
from tflm_patch.multistage import refine
from tflm_patch.parallel import default_jobs, split_map
from tflm_patch.rewrite import CUSTOM_CODE, replace_stages
from tflm_patch.schedule import Schedule, make_schedule
from tflm_patch.stage import (
    StageGraph,
    build_stage,
    candidate_stages,
    stage_check,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_OVERHEAD = 0.20  # MACs, the memory objective's limit
DEFAULT_MAX_LATENCY = 0.15  # estimated Cortex-M4 instructions, the latency objective's
OBJECTIVES = ("latency", "memory")
DEFAULT_MAX_GRID = 8
DEFAULT_MIN_SAVING = 0.10
OTHER_SEEDS = 3  # main stages besides the chosen one that get stages added after them
# the refine searches after a seed (_search), and their relative times (for sharing them
# out between processes)
NORMAL, FLOOR, FLOOR_FREE = 0, 1, 2
TASK_WEIGHTS = {NORMAL: 4.0, FLOOR: 1.5, FLOOR_FREE: 0.5}
# search tasks: three after the chosen plan and the flipped one, one after other seeds
SEARCH_TASKS = 2 * 3 + OTHER_SEEDS
SearchTask = tuple[int, Candidate, int]  # seed number, seed, which search
StageList = list[tuple[int, int, tuple[int, int]]]  # (first, last, grid) of added stages
Searched = tuple[StageList | None, list[Candidate]]


class PlanError(TflmPatchError):
    """No plan meets the request (impossible budget, forced stage that cannot work)."""


@dataclass(frozen=True)
class PlanRequest:
    budget: int | None = None
    # MAC overhead limit; None: DEFAULT_MAX_OVERHEAD for the memory objective, none for
    # the latency objective (plan() resolves it)
    max_overhead: float | None = None
    split_op: int | None = None  # force the stage's last operator
    grid: tuple[int, int] | None = None  # force the grid
    max_grid: int = DEFAULT_MAX_GRID
    target: str = "x86_64"
    # a plan must cut the arena by at least this fraction to be worth a custom operator
    min_saving: float = DEFAULT_MIN_SAVING
    # multi-stage: more patched stages after the main one (multistage.py), and the
    # convolutions outside them as fused 1x1-grid PATCH_EXECs (fuse.py)
    multi_stage: bool = True
    objective: str = "latency"
    max_latency: float = DEFAULT_MAX_LATENCY  # latency objective: estimated instructions
    # processes to plan with (parallel.split_map; None: parallel.default_jobs()); the
    # plan is the same with any number
    jobs: int | None = None

    @property
    def mac_limit(self) -> float:
        if self.max_overhead is not None:
            return self.max_overhead
        return DEFAULT_MAX_OVERHEAD if self.objective == "memory" else float("inf")

    @property
    def latency(self) -> bool:
        return self.objective == "latency" and self.budget is None


@dataclass
class PlanResult:
    arena_before: int
    macs_before: int
    candidates: list[Candidate]
    chosen: Candidate | None
    message: str  # why this choice, or why the model stays as it is
    request: PlanRequest
    seconds: float = 0.0
    cost: PlanCost | None = None  # estimated Cortex-M4 instructions (cost.py)
    _instructions: dict[Candidate, int] = field(default_factory=dict, repr=False)
    # planner._search: the candidates with each set of added stages, (first, last, grid)s
    _reevaluated: dict[tuple[tuple[int, int, tuple[int, int]], ...], list[Candidate]] = \
        field(default_factory=dict, repr=False)

    def overhead(self, c: Candidate) -> float:
        return c.overhead(self.macs_before)

    @property
    def instructions_before(self) -> int:
        assert self.cost is not None
        return self.cost.instructions

    def instructions(self, c: Candidate) -> int:
        """Estimated Cortex-M4 instructions of one Invoke of the model patched by `c`."""
        if c not in self._instructions:
            assert self.cost is not None
            self._instructions[c] = self.cost.plan_instructions(stage_keys(c, self.cost.model))
        return self._instructions[c]

    def latency_ratio(self, c: Candidate) -> float:
        return self.instructions(c) / self.instructions_before

    def fits(self, c: Candidate) -> bool:
        """Within the request's limits: MACs, and estimated instructions (latency)."""
        req = self.request
        if self.overhead(c) > req.mac_limit + 1e-12:
            return False
        return not req.latency or self.latency_ratio(c) <= 1.0 + req.max_latency + 1e-12

    def latency_check(self, stages: Sequence[StageKey]
                      ) -> Callable[[StageKey, bool], bool | None]:
        """The latency limit of `fits` for the plans of `stages` plus one more stage, fast:
        the unrounded estimate is a sum of one float per stage (PlanCost.stage_change),
        and only a plan within a few instructions of the limit is estimated exactly.
        known_only: None when the stage's estimate is not known yet."""
        assert self.cost is not None
        cost, before = self.cost, self.instructions_before
        ratio = 1.0 + self.request.max_latency + 1e-12
        limit = ratio * before
        margin = 2.0 + 1e-9 * limit  # float rounding, and the estimate's own rounding
        start = cost.unrounded + sum(map(cost.stage_change, stages))

        def check(key: StageKey, known_only: bool) -> bool | None:
            if known_only and not cost.knows(key):
                return None
            x = start + cost.stage_change(key)
            if abs(x - limit) > margin:
                return x < limit
            return cost.plan_instructions((*stages, key)) / before <= ratio

        return check

    def pareto(self) -> list[Candidate]:
        """Candidates no other beats on both arena and MACs, by arena."""
        front: list[Candidate] = []
        for c in sorted(self.candidates, key=lambda c: (c.arena, c.macs)):
            if not front or c.macs < front[-1].macs:
                front.append(c)
        return front

    def to_json(self, c: Candidate) -> dict[str, Any]:
        return {
            "format": 1,
            "target": self.request.target,
            "stage": {"first_op": c.first, "last_op": c.last},
            "grid": list(c.grid),
            "halo_cache": sorted(c.cache),  # stage tensors with a column cache
            "fused_stages": [{"first_op": a, "last_op": b} for a, b in c.fused],
            "patched_stages": [{"first_op": a, "last_op": b, "grid": list(g)}
                               for a, b, g in c.extra],
            "scratch_bytes": c.scratch_bytes,
            "objective": self.request.objective if self.request.budget is None else "budget",
            "predicted": {"arena_before": self.arena_before, "arena_after": c.arena,
                          "macs_before": self.macs_before, "macs_after": c.macs,
                          "mac_overhead": round(self.overhead(c), 6),
                          "m4_instructions_before": self.instructions_before,
                          "m4_instructions_after": self.instructions(c),
                          "m4_instruction_ratio": round(self.latency_ratio(c), 6)},
        }


def stage_keys(c: Candidate, model: Model | None = None) -> list[StageKey]:
    """Every PATCH_EXEC of a candidate as plan_stages builds it, for cost.PlanCost
    (fused stages with fuse.unit_grid when `model` is given, else 1x1)."""
    none = frozenset[int]()
    return [(c.first, c.last, c.grid, c.cache, False),
            *((a, b, g, none, False) for a, b, g in c.extra),
            *((a, b, unit_grid(model, a, b) if model is not None else (1, 1), none, True)
              for a, b in c.fused)]


def _grids(graph: StageGraph, request: PlanRequest) -> Iterable[tuple[int, int]]:
    h, w, _ = graph.shapes[-1]
    if request.grid is not None:
        n, m = request.grid
        if n > h or m > w:
            raise PlanError(f"grid {n}x{m} is finer than the stage output {h}x{w}")
        return [request.grid]
    # 1x1 is not patching (the whole stage at once): not a plan of this planner
    return [(n, m) for n in range(1, min(h, request.max_grid) + 1)
            for m in range(1, min(w, request.max_grid) + 1) if n * m > 1]


def _stages(model: Model, request: PlanRequest) -> list[tuple[int, int]]:
    stages = list(candidate_stages(model))
    if request.split_op is None:
        return stages
    k = request.split_op
    if not 0 <= k < len(model.operators):
        raise PlanError(f"--split-op {k}: the model has operators 0..{len(model.operators) - 1}")
    forced = [s for s in stages if s[1] == k]
    if forced:
        return forced
    # explain why not: the op itself, or the earliest stage that could end there
    firsts = sorted({s[0] for s in stages if s[0] <= k}) or [0]
    _, reason = stage_check(model, firsts[-1], k)
    raise PlanError(f"--split-op {k}: cannot end a PATCH_EXEC stage at operator {k} "
                    f"({model.operators[k].name}): {reason or 'no valid stage ends there'}")


@without_gc
def plan(model: Model, request: PlanRequest | None = None,
         progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """Search stages and grids; choose by the request's objective."""
    request = request or PlanRequest()
    if request.objective not in OBJECTIVES:
        raise PlanError(f"objective {request.objective!r}: expected one of "
                        f"{', '.join(OBJECTIVES)}")
    start = time.perf_counter()
    require_int8(model)
    if any(op.name == CUSTOM_CODE for op in model.operators):
        raise UnsupportedModelError("the model already has a PATCH_EXEC operator (it was "
                                    "patched before); patch the original model instead")
    arena_before = predict_arena(model, request.target).total
    macs_before = sum(op_macs(model, op) for op in model.operators)
    stages = _stages(model, request)
    units = UnitGraphs(model)
    candidates: list[Candidate] = []
    multi = request.multi_stage and request.split_op is None and request.grid is None
    work = _Work(len(stages), max(1, len(stages) // 4) if multi else 0, progress)
    jobs = default_jobs() if request.jobs is None else request.jobs
    work.advance(0)
    for found in split_map(functools.partial(_main_candidates, model, request, units,
                                             macs_before), stages, jobs,
                           lambda: work.advance(1)):
        candidates.extend(found)
    result = PlanResult(arena_before, macs_before, candidates, None, "", request,
                        cost=PlanCost(model))
    budget = request.budget
    if (multi and candidates and budget is not None and arena_before > budget
            and all(c.arena > budget for c in candidates)):
        # no single patched stage fits: try more patched stages, whatever the MACs
        seed = min(candidates, key=lambda c: (c.arena, c.macs))
        _run_searches(model, result, units, [(seed, False)], float("inf"), jobs, work)
    result.chosen, result.message = choose(result)
    if multi and budget is None and result.chosen is not None:
        _run_searches(model, result, units, _seeds(result, result.chosen),
                      request.mac_limit, jobs, work)
        result.chosen, result.message = choose(result)
    if budget is None and result.chosen is not None and result.chosen.cache:
        _tune_caches(model, result)
    if request.latency and request.multi_stage and result.chosen is not None:
        _tune_fused(model, result, units)
    work.finish()
    result.seconds = time.perf_counter() - start
    missing = unpredicted(model)
    if missing:  # docs/arena.md: compared, but not TFLM's whole arena
        result.message += (f" (arenas leave out what {len(missing)} operator(s) allocate: "
                           f"{'; '.join(missing)})")
    return result


def _main_candidates(model: Model, request: PlanRequest, units: UnitGraphs,
                     macs_before: int, stage: tuple[int, int]) -> list[Candidate]:
    """Every grid of one main stage alone, and with the convolutions outside it fused."""
    graph = build_stage(model, *stage)
    evaluators = [StageEvaluator(model, graph, request.target, macs_before)]
    fused = units.outside([stage]) if request.multi_stage else []
    if fused:
        evaluators.append(StageEvaluator(model, graph, request.target, macs_before, fused))
    return [c for ev in evaluators for c in _evaluate(ev, _grids(graph, request))]


def _seeds(result: PlanResult, chosen: Candidate) -> list[tuple[Candidate, bool]]:
    """The multi-stage searches after the first choice, as (seed, free_only): the chosen
    plan; the best plan with the other halo strategy (recompute vs cache), since the
    greedy stage search is seed-dependent and either may end up smaller; and the cheap
    search after the other main stages of _other_seeds."""
    flipped = _first_fit(result, (c for c in result.candidates if not c.extra and
                                  bool(c.cache) != bool(chosen.cache)))
    return [(chosen, False), *([(flipped, False)] if flipped is not None else []),
            *((seed, True) for seed in _other_seeds(result, chosen))]


@dataclass
class _Work:
    """Planning progress for `plan`'s callback, as (done, total) units of work: one per
    main stage evaluated, `search` per multi-stage search task (SEARCH_TASKS at most;
    each takes about the time of a quarter of the main stages)."""

    stages: int
    search: int
    report: Callable[[int, int], None] | None
    done: int = 0

    @property
    def total(self) -> int:
        return self.stages + SEARCH_TASKS * self.search

    def advance(self, units: int) -> None:
        self.done = min(self.total, self.done + units)
        if self.report is not None:
            self.report(self.done, self.total)

    def finish(self) -> None:
        self.advance(self.total - self.done)


def _tune_caches(model: Model, result: PlanResult) -> None:
    """Cache or recompute, per layer: the chosen plan caches every halo it can; drop one
    cache at a time where recomputing that tensor's halo gives a smaller arena (the cache's
    bytes against the larger ranges before it) within the MAC limit, until none does."""
    c = result.chosen
    assert c is not None
    req = result.request
    (graph, _), *others = plan_stages(model, c)
    fixed, fused = others[:len(c.extra)], others[len(c.extra):]
    ev = StageEvaluator(model, graph, req.target, result.macs_before, fused, fixed)
    best = c
    improved = True
    while improved:
        improved = False
        for t in sorted(best.cache):
            cand = ev.evaluate(c.grid, best.cache - {t})[0]
            if cand.arena < best.arena and result.fits(cand):
                best, improved = cand, True
                log.debug("halo reuse: recompute tensor %d of the main stage -> %s B", t,
                          f"{best.arena:,}")
                break
    if best is not c:
        result.candidates.append(best)
        result.chosen, result.message = choose(result)


def _tune_fused(model: Model, result: PlanResult, units: UnitGraphs) -> None:
    """Latency objective, per fusion unit of the chosen plan: a fused 1x1-grid PATCH_EXEC
    estimated slower than the operators it replaces is dropped, and one estimated faster
    is added, whenever the arena does not grow (slowest drops first, then fastest adds)."""
    c = result.chosen
    assert c is not None and result.cost is not None
    cost = result.cost
    stages = units.outside([(c.first, c.last), *((a, b) for a, b, _ in c.extra)])
    gains = {(g.first, g.last): cost.stage_gain((g.first, g.last, sc.grid, frozenset(), True))
             for g, sc in stages}
    drops = sorted((u for u in c.fused if gains.get(u, 0) < 0), key=lambda u: gains[u])
    adds = sorted((u for u in gains if u not in c.fused and gains[u] > 0),
                  key=lambda u: -gains[u])
    if not drops and not adds:
        return
    (graph, _), *others = plan_stages(model, c)
    fixed = others[:len(c.extra)]
    best = c
    for u in (*drops, *adds):
        trial = set(best.fused) ^ {u}
        keep = [st for st in stages if (st[0].first, st[0].last) in trial]
        ev = StageEvaluator(model, graph, result.request.target, result.macs_before, keep,
                            fixed)
        cand = ev.evaluate(c.grid, c.cache)[0]
        if cand.arena <= best.arena and result.fits(cand):
            best = cand
            log.info("ops %d..%d: %s (estimated %+d instructions, arena %s B)", *u,
                     "fused" if u in trial else "not fused", -gains[u], f"{cand.arena:,}")
    if best is not c:
        result.candidates.append(best)
        result.chosen, result.message = choose(result)


def _evaluate(ev: StageEvaluator, grids: Iterable[tuple[int, int]],
              best: Candidate | None = None) -> Iterator[Candidate]:
    """Every grid, recomputing the halos and (when the grid has column bands and some
    tensor can keep a cache) reusing them: fewer MACs, the caches' bytes more. best: a
    candidate within the limits; those it certainly dominates are left out."""
    for grid in grids:
        for cache in (False, True) if grid[1] > 1 else (False,):
            got = ev.evaluate_unless_dominated(grid, best, cache)
            if got is not None and (not cache or got[1].cache):
                yield got[0]


def choose(result: PlanResult) -> tuple[Candidate | None, str]:
    req = result.request
    before = result.arena_before
    if not result.candidates:
        return None, "no run of operators PATCH_EXEC can execute: the model stays as it is"
    smaller = [c for c in result.candidates if c.arena < before]
    if req.split_op is not None and req.grid is not None:  # fully forced: honour it if smaller
        if not smaller:
            c = result.candidates[0]
            return None, (f"{c.label} gives a predicted arena of {c.arena:,} bytes, not "
                          f"smaller than the unpatched {before:,}")
        return min(smaller, key=lambda c: (c.arena, c.macs)), "the forced stage and grid"
    limit = before * (1.0 - req.min_saving)
    better = [c for c in smaller if c.arena <= limit]
    if req.budget is not None:
        if before <= req.budget:
            return None, (f"the unpatched model already fits the budget ({before:,} <= "
                          f"{req.budget:,} bytes): the model stays as it is")
        fits = [c for c in smaller if c.arena <= req.budget]
        if not fits:
            best = min(result.candidates, key=lambda c: c.arena)
            raise PlanError(f"impossible budget: {req.budget:,} bytes; the smallest arena "
                            f"any plan reaches is {best.arena:,} bytes ({best.label}), "
                            f"unpatched {before:,}")
        c = min(fits, key=lambda c: (c.macs, c.arena))
        return c, (f"fewest MACs within the {req.budget:,}-byte budget")
    if not better:
        best = min(result.candidates, key=lambda c: c.arena)
        return None, (f"no plan makes the arena at least {req.min_saving:.0%} smaller "
                      f"than the unpatched {before:,} bytes (best: {best.arena:,} with "
                      f"{best.label}): the model stays as it is")
    first = _first_fit(result, better)
    if first is None:
        return None, _over_limits(result, better)
    if not req.latency:
        return first, f"smallest arena with MAC overhead <= {req.mac_limit:.0%}"
    ties = [c for c in better if c.arena == first.arena and result.fits(c)]
    c = min(ties, key=lambda c: (result.instructions(c), c.macs))
    macs = "" if req.max_overhead is None else f", MAC overhead <= {req.mac_limit:.0%}"
    return c, (f"smallest arena with estimated Cortex-M4 instructions <= "
               f"{1 + req.max_latency:.2f}x the original's{macs}")


def _over_limits(result: PlanResult, better: list[Candidate]) -> str:
    """Why no plan that shrinks the arena enough is within the limits."""
    req = result.request
    in_macs = [c for c in better if result.overhead(c) <= req.mac_limit + 1e-12]
    if not in_macs:
        cheapest = min(better, key=lambda c: result.overhead(c))
        return (f"every plan that shrinks the arena costs more than {req.mac_limit:.0%} "
                f"extra MACs (the cheapest: {result.overhead(cheapest):.1%}, "
                f"{cheapest.label}); raise --max-overhead or give --budget: the model "
                "stays as it is")
    fastest = min(in_macs, key=lambda c: (result.instructions(c), c.arena))
    return (f"every plan that shrinks the arena costs more than {req.max_latency:.0%} extra "
            f"estimated Cortex-M4 instructions (the fastest: "
            f"{result.latency_ratio(fastest) - 1:+.1%}, {fastest.label}); raise "
            "--max-latency, or use --objective memory: the model stays as it is")


def build_plan(model: Model, c: Candidate) -> tuple[StageGraph, Schedule]:
    """The patched stage of a candidate and its schedule."""
    graph = build_stage(model, c.first, c.last)
    return graph, make_schedule(graph, c.grid, c.cache)


def plan_stages(model: Model, c: Candidate) -> list[tuple[StageGraph, Schedule]]:
    """Every PATCH_EXEC of a candidate: the main stage, the other patched stages, then
    the fused ones."""
    extra = [build_stage(model, a, b) for a, b, _ in c.extra]
    fused = [build_stage(model, a, b, live_input=True) for a, b in c.fused]
    return [build_plan(model, c), *((g, make_schedule(g, grid))
                                    for g, (_, _, grid) in zip(extra, c.extra, strict=True)),
            *((u, make_schedule(u, unit_grid(model, u.first, u.last))) for u in fused)]


def _other_seeds(result: PlanResult, chosen: Candidate) -> list[Candidate]:
    """The best single-stage candidate (within the MAC limit) of each of the next
    OTHER_SEEDS main stages after the chosen one's: with stages added after them they
    may beat it (a shorter main stage leaves more blocks to the added stages)."""
    best: dict[tuple[int, int], Candidate] = {}
    for c in sorted(result.candidates, key=lambda c: (c.arena, c.macs)):
        key = (c.first, c.last)
        if c.extra or key in best or key == (chosen.first, chosen.last):
            continue
        if result.fits(c):
            best[key] = c
            if len(best) == OTHER_SEEDS:
                break
    return list(best.values())


def _first_fit(result: PlanResult, candidates: Iterable[Candidate]) -> Candidate | None:
    """The smallest arena (then fewest MACs) within the request's limits."""
    return next((c for c in sorted(candidates, key=lambda c: (c.arena, c.macs))
                 if result.fits(c)), None)


def _run_searches(model: Model, result: PlanResult, units: UnitGraphs,
                  seeds: Sequence[tuple[Candidate, bool]], max_overhead: float, jobs: int,
                  work: _Work) -> None:
    """The multi-stage searches after `seeds`, their candidates added in task order. The
    first one runs here before the others are shared out between `jobs` processes: they
    reuse much of its work (it makes the schedules of the stages after the main stage,
    which the other searches from that main stage try again); the searches after one
    seed go to one process, since they share most of their work."""
    tasks = _search_tasks(seeds)
    search = functools.partial(_search, model, result, units, max_overhead)
    searched = [search(tasks[0])]
    work.advance(work.search)
    searched += split_map(search, tasks[1:], jobs, lambda: work.advance(work.search),
                          [(i, TASK_WEIGHTS[which]) for i, _, which in tasks[1:]])
    result.candidates += _merge(tasks, searched)


def _search_tasks(seeds: Sequence[tuple[Candidate, bool]]) -> list[SearchTask]:
    """The refine searches after each (seed, free_only) of `seeds`: (seed number, seed,
    which search); free_only: FLOOR_FREE alone."""
    return [(i, c, which) for i, (c, free_only) in enumerate(seeds)
            for which in ((FLOOR_FREE,) if free_only else (NORMAL, FLOOR, FLOOR_FREE))]


def _search(model: Model, result: PlanResult, units: UnitGraphs, max_overhead: float,
            task: SearchTask) -> Searched:
    """One refine search after a seed's main stage (multistage.refine) and, when it adds
    stages, every main stage and grid evaluated again with them in place: (the added
    stages, the new candidates), or (None, []). NORMAL: the added stages judged with the
    main stage at the seed's grid; FLOOR: judged against the main stage at its finest
    grid, which finds the stages that lower the peaks after the main stage while the main
    stage's own peak is still the higher one; FLOOR_FREE: the same with MAC-free 1x1-grid
    stages only, which leave the whole MAC budget to the main grid."""
    _, c, which = task
    req = result.request
    floor = None
    if which != NORMAL:
        main = build_stage(model, c.first, c.last)
        floor = max(_grids(main, req), key=lambda g: (g[0] * g[1], g), default=None)
        if floor is None or floor == c.grid:
            return None, []
    refined, fixed = refine(model, c, target=req.target, macs_before=result.macs_before,
                            max_overhead=max_overhead, units=units, floor_grid=floor,
                            free_only=which == FLOOR_FREE,
                            judge=result.latency_check if req.latency else None)
    if not fixed:
        return None, []
    key = _key(fixed)
    # another search of this process may have added the same stages (_merge keeps one)
    if tuple(key) not in result._reevaluated:
        result._reevaluated[tuple(key)] = _reevaluate(model, result, units, fixed)
    found = result._reevaluated[tuple(key)]
    return key, [refined, *found] if which == NORMAL else found


def _merge(tasks: Sequence[SearchTask], searched: Sequence[Searched]) -> list[Candidate]:
    """The search tasks' candidates, in task order; a FLOOR or FLOOR_FREE search's only
    when the stages it added differ from those of the seed's searches before it (the same
    stages give the same candidates again)."""
    out: list[Candidate] = []
    tried: dict[int, list[StageList]] = {}
    for (i, _, which), (key, found) in zip(tasks, searched, strict=True):
        seen = tried.setdefault(i, [])
        if key is not None and (which == NORMAL or key not in seen):
            seen.append(key)
            out += found
    return out


def _key(stages: list[tuple[StageGraph, Schedule]]) -> StageList:
    return [(g.first, g.last, s.grid) for g, s in stages]


def _reevaluate(model: Model, result: PlanResult, units: UnitGraphs,
                fixed: list[tuple[StageGraph, Schedule]]) -> list[Candidate]:
    """Every main stage before the `fixed` stages under every grid, with them in place."""
    req = result.request
    taken = [(g.first, g.last) for g, _ in fixed]
    # the plan chosen so far is within the limits: what it certainly dominates can be
    # neither chosen nor on the Pareto front, and is not kept
    best = result.chosen
    found: list[Candidate] = []
    for first, last in _stages(model, req):
        if last >= taken[0][0]:
            continue
        graph = build_stage(model, first, last)
        ev = StageEvaluator(model, graph, req.target, result.macs_before,
                            units.outside([(first, last), *taken]), fixed)
        found += _evaluate(ev, _grids(graph, req), best)
    return found


def patched_model_object(model: Model, result: PlanResult) -> Any:
    """The rewritten ModelT for the chosen candidate (with the plan metadata)."""
    c = result.chosen
    if c is None:
        raise PlanError(result.message)
    return replace_stages(model, plan_stages(model, c), result.to_json(c))

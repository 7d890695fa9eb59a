"""Multi-stage plans: more patched stages after the main one, added greedily.

After the main stage the layer-by-layer part still holds big working sets: an
inverted-residual block keeps its input, its expansion and the depthwise output alive at
once. Another patched stage over such blocks, with its own grid, makes them exist only
patch by patch; at the lower resolution there the halos are small, so the MACs barely
grow. `refine` adds such stages one at a time: each round tries every valid stage after
the main one (2..MAX_STAGE_OPS operators, one tensor live at each end, not overlapping the
stages already placed) under every grid up to MAX_TAIL_GRID per side, with the remaining
convolutions fused (fuse.py), and keeps the one that lowers the predicted arena most
within the MAC-overhead limit; it stops when none lowers it by at least MIN_GAIN (each
stage costs MACs and time, so a few bytes are not worth one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tflm_patch.cost import StageKey
from tflm_patch.evaluate import Candidate, OpRange, Stage, StageEvaluator, UnitGraphs
from tflm_patch.model import Model
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import StageGraph, build_stage, stage_check

log = logging.getLogger(__name__)

MAX_STAGE_OPS = 12
MAX_TAIL_GRID = 4
MAX_ROUNDS = 6
MIN_GAIN = 0.01  # of the arena, per added stage
NO_CACHE = frozenset[int]()

# judge(stages) -> check(stage, known_only): is the plan of `stages` plus that one more
# stage within a limit (the latency objective's estimated instructions)? With known_only,
# None when answering needs work not done before (the stage's estimate)
Judge = Callable[[Sequence[StageKey]], Callable[[StageKey, bool], bool | None]]


def tail_stages(model: Model, after: int, taken: Sequence[OpRange],
                support: list[tuple[bool, str]]) -> list[OpRange]:
    """Valid patched stages of 2..MAX_STAGE_OPS operators after operator `after` that do
    not overlap `taken`."""
    n = len(model.operators)
    out = []
    for s in range(after + 1, n):
        for e in range(s + 1, min(n, s + MAX_STAGE_OPS)):
            if any(s <= b and a <= e for a, b in taken):
                break
            if _narrow_end(model, s, e) and stage_check(model, s, e, support)[0]:
                out.append((s, e))
    return out


def _narrow_end(model: Model, s: int, e: int) -> bool:
    """Does the stage end on a tensor no larger than its input? One that ends on an
    expansion leaves that big tensor to the layer-by-layer part; ending after the block
    keeps it inside."""
    ins = model.activation_inputs(model.operators[s])
    out = model.tensors[model.operators[e].outputs[0]]
    return bool(ins) and out.numel <= max(model.tensors[t].numel for t in ins)


def _grids(graph: StageGraph) -> list[tuple[int, int]]:
    h, w, _ = graph.shapes[-1]
    return [(n, m) for n in range(1, min(h, MAX_TAIL_GRID) + 1)
            for m in range(1, min(w, MAX_TAIL_GRID) + 1)]


def refine(model: Model, c: Candidate, *, target: str, macs_before: int,
           max_overhead: float, units: UnitGraphs,
           floor_grid: tuple[int, int] | None = None,
           free_only: bool = False,
           judge: Judge | None = None) -> tuple[Candidate, list[Stage]]:
    """`c` with patched stages added after its main stage while that lowers the arena,
    and those stages (in model order) with their schedules.

    floor_grid: judge the added stages with the main stage at this (fine) grid instead of
    `c.grid`, so that stages lowering a peak after the main stage count even while the
    main stage's own peak is the higher one (the caller then chooses the main grid again
    with these stages in place). MACs are always counted with the main stage at `c.grid`;
    the returned candidate's arena is then the one at the floor grid. free_only: add only
    1x1-grid stages (no extra MACs; they still shrink the arena by streaming and by
    keeping a block's inner tensors out of it). judge: a further limit on the plan with
    a stage added (the latency objective's estimated instructions), beside the MACs;
    judged before the arena when that takes no new stage estimate."""
    main = build_stage(model, c.first, c.last)
    grid = floor_grid or c.grid
    main_sched = make_schedule(main, grid, c.cache)
    # MACs of the plan at c.grid = MACs evaluated at `grid` + this correction
    mac_fix = 0 if grid == c.grid else make_schedule(main, c.grid, c.cache).macs - main_sched.macs
    fixed: list[Stage] = [(main, main_sched)]
    graphs: dict[OpRange, StageGraph] = {}
    best = c
    for _ in range(MAX_ROUNDS):
        taken = [(g.first, g.last) for g, _ in fixed]
        found: tuple[Candidate, Stage] | None = None
        for s, e in tail_stages(model, c.last, taken, units.support):
            if (s, e) not in graphs:
                graphs[(s, e)] = build_stage(model, s, e)
            g = graphs[(s, e)]
            if len(g.layers) < 2:  # nothing to keep out of the arena
                continue
            fused = units.outside([*taken, (s, e)])
            check = None if judge is None else judge(_plan_keys(c, fixed, fused))
            ev: StageEvaluator | None = None
            for grid in [(1, 1)] if free_only else _grids(g):
                key = (s, e, grid, NO_CACHE, False)
                if check is not None and check(key, True) is False:
                    continue
                if ev is None:
                    ev = StageEvaluator(model, g, target, macs_before, fused, fixed)
                limit = found[0].arena - 1 if found else best.arena * (1.0 - MIN_GAIN)
                if ev.layout.lower_bound(0) > limit:  # so is every later grid's arena:
                    break  # the bound grows with the scratch, the limit only falls
                got = ev.evaluate_within(grid, limit)  # None: certainly above the limit
                if got is None:
                    continue
                cand, sched = got
                if (cand.macs + mac_fix) / macs_before - 1.0 > max_overhead + 1e-12:
                    continue
                if cand.arena <= limit and (check is None or check(key, False)):
                    found = (cand, (g, sched))
        if found is None:
            break
        cand, stage = found
        fixed.append(stage)
        best = _combined(c, cand, fixed, mac_fix)
        log.debug("multi-stage: %s -> predicted arena %s B", best.label, f"{best.arena:,}")
    return best, sorted(fixed[1:], key=lambda st: st[0].first)


def _plan_keys(c: Candidate, fixed: Sequence[Stage], fused: Sequence[Stage]
               ) -> list[StageKey]:
    """The PATCH_EXECs of `c`'s main stage, of `fixed[1:]` and of `fused`, as
    cost.PlanCost names them (planner.stage_keys)."""
    return [(c.first, c.last, c.grid, c.cache, False),
            *((g.first, g.last, sc.grid, NO_CACHE, False) for g, sc in fixed[1:]),
            *((u.first, u.last, sc.grid, NO_CACHE, True) for u, sc in fused)]


def _combined(c: Candidate, cand: Candidate, fixed: Sequence[Stage], mac_fix: int) -> Candidate:
    """`c` (main stage and grid) with the stages after it of `fixed[1:]` and the fused
    ones, arena and MACs of `cand` (the evaluation of the last stage added)."""
    extra = tuple(sorted((g.first, g.last, sc.grid) for g, sc in fixed[1:]))
    return Candidate(c.first, c.last, c.grid, c.scratch_bytes, cand.arena, cand.macs + mac_fix,
                     c.stage_macs, c.stage_macs_before, cand.fused, extra, c.cache)

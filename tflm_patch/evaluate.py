"""Plan candidates and their evaluation: the whole patched model's predicted arena and MACs.

A candidate is one patched stage with its grid (the *main* stage), plus optionally more
patched stages after it (`extra`, each with its own grid) and fused 1x1-grid stages
(`fused`, fuse.py). `StageEvaluator` lays the patched model out once per main stage (and
set of other stages) and re-plans only the main stage's scratch per grid.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from tflm_patch.arena import PatchedArena, PatchedOp
from tflm_patch.fuse import fusion_units, unit_grid
from tflm_patch.model import Model
from tflm_patch.schedule import Schedule, make_schedule
from tflm_patch.stage import StageGraph, build_stage, model_support

T = TypeVar("T")
OpRange = tuple[int, int]
Grid = tuple[int, int]
Stage = tuple[StageGraph, Schedule]


@dataclass(frozen=True)
class Candidate:
    first: int
    last: int
    grid: Grid
    scratch_bytes: int
    arena: int  # predicted smallest arena of the whole patched model
    macs: int  # whole model, after patching
    stage_macs: int  # the stage, patch by patch
    stage_macs_before: int
    # fused 1x1-grid PATCH_EXEC stages outside the patched ones (operator ranges)
    fused: tuple[OpRange, ...] = ()
    # more patched stages after the main one: (first, last, grid)
    extra: tuple[tuple[int, int, Grid], ...] = ()
    # stage tensors of the main stage that reuse halos (CACHE_COLS, schedule.make_schedule)
    cache: frozenset[int] = frozenset()

    def overhead(self, macs_before: int) -> float:
        return self.macs / macs_before - 1.0 if macs_before else 0.0

    @property
    def label(self) -> str:
        text = f"ops {self.first}..{self.last} grid {self.grid[0]}x{self.grid[1]}"
        text += " cached" if self.cache else ""
        for a, b, (n, m) in self.extra:
            text += f" + ops {a}..{b} grid {n}x{m}"
        return text + (f" + {len(self.fused)} fused convs" if self.fused else "")

    @property
    def ranges(self) -> list[OpRange]:
        """Every operator range that becomes a PATCH_EXEC."""
        return [(self.first, self.last), *((a, b) for a, b, _ in self.extra), *self.fused]


def without_gc(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` with Python's cyclic garbage collector paused: a search builds many
    small objects that live until it ends (candidates, layouts, schedules), and the
    collector's passes over them cost about a third of the planning time. Reference
    counting still frees everything else; the collector runs again afterwards."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return run


def patched_op_index(num_ops: int, stages: Sequence[OpRange]) -> list[int]:
    """For every operator of the original model, its operator index in the model where
    each (first, last) range became one operator."""
    where, j, i = [], 0, 0
    starts = dict(stages)
    while i < num_ops:
        end = starts.get(i, i)
        where.extend([j] * (end - i + 1))
        i, j = end + 1, j + 1
    return where


class UnitGraphs:
    """Fusion units of a model, their stage graphs and 1x1 schedules built once."""

    def __init__(self, model: Model):
        self.model = model
        self.support = model_support(model)
        self.stages: dict[OpRange, Stage] = {}
        self._outside: dict[tuple[OpRange, ...], list[Stage]] = {}

    def outside(self, exclude: Sequence[OpRange]) -> list[Stage]:
        key = tuple(sorted(exclude))
        if key not in self._outside:
            self._outside[key] = [self._unit(a, b)
                                  for a, b in fusion_units(self.model, key, self.support)]
        return list(self._outside[key])

    def _unit(self, a: int, b: int) -> Stage:
        if (a, b) not in self.stages:
            graph = build_stage(self.model, a, b, live_input=True)
            self.stages[(a, b)] = (graph, make_schedule(graph, unit_grid(self.model, a, b)))
        return self.stages[(a, b)]


@lru_cache(maxsize=4096)  # per graph object
def patched_op(graph: StageGraph) -> PatchedOp:
    """The PATCH_EXEC a stage becomes, as the arena sees it (rewrite._splice: the stage
    input and, with any conv layer, the model's two shared packed constant tensors)."""
    consts = [c for c in graph.constants if c is not None]
    refs: list[int] = []
    refs += graph.side_inputs  # runtime tensors: the arena sees the PATCH_EXEC read them
    return PatchedOp(graph.first, graph.last, graph.input, graph.output, tuple(refs),
                     2 if consts else 0)


def patched_arena(model: Model, target: str) -> PatchedArena:
    """The model's PatchedArena (made once per model and target)."""
    return model.memo(("patched_arena", target), lambda: PatchedArena(model, target))


class StageEvaluator:
    """Arena and MACs of one main stage under any grid, the patched model laid out once
    (arena.PatchedArena: the same prediction as building it with replace_stages).
    `units`: fused 1x1-grid stages (fuse.fusion_units) and `fixed`: other patched
    stages, both with their schedules."""

    def __init__(self, model: Model, graph: StageGraph, target: str, macs_before: int,
                 units: Sequence[Stage] = (), fixed: Sequence[Stage] = ()):
        self.model, self.graph, self.target = model, graph, target
        self.macs_outside = (macs_before - graph.macs
                             - sum(g.macs for g, _ in fixed) + sum(s.macs for _, s in fixed))
        self.fused = tuple((u.first, u.last) for u, _ in units)
        self.extra = tuple((g.first, g.last, s.grid) for g, s in fixed)
        others = tuple((g, s.scratch_bytes) for g, s in (*fixed, *units))
        # the same stages again (the search revisits plans): the same layout, with the
        # head sizes it has worked out
        self.layout = model.memo(("layout", target, graph, others), lambda: patched_arena(
            model, target).layout([(patched_op(graph), None),
                                   *((patched_op(g), n) for g, n in others)]))

    def evaluate(self, grid: Grid, cache: bool | frozenset[int] = False
                 ) -> tuple[Candidate, Schedule]:
        """cache: halo reuse between horizontally adjacent patches (make_schedule)."""
        sched = make_schedule(self.graph, grid, cache)
        return self._candidate(sched, self.layout.arena(sched.scratch_bytes)), sched

    def evaluate_within(self, grid: Grid, limit: float, cache: bool | frozenset[int] = False
                        ) -> tuple[Candidate, Schedule] | None:
        """`evaluate`, or None when the arena is certainly above `limit` (its lower
        bound, the bytes alive at once, is: the head is not planned then)."""
        if self.layout.lower_bound(0) > limit:  # the bound grows with the scratch
            return None
        sched = make_schedule(self.graph, grid, cache)
        if self.layout.lower_bound(sched.scratch_bytes) > limit:
            return None
        return self._candidate(sched, self.layout.arena(sched.scratch_bytes)), sched

    def evaluate_unless_dominated(self, grid: Grid, best: Candidate | None,
                                  cache: bool | frozenset[int] = False
                                  ) -> tuple[Candidate, Schedule] | None:
        """`evaluate`, or None when `best` certainly beats the candidate on both counts:
        no more MACs, and an arena below the candidate's lower bound (such a candidate is
        on no arena/MAC Pareto front, and never the smallest arena when `best` fits)."""
        sched = make_schedule(self.graph, grid, cache)
        if best is not None and best.macs <= self.macs_outside + sched.macs and \
                best.arena < self.layout.lower_bound(sched.scratch_bytes):
            return None
        return self._candidate(sched, self.layout.arena(sched.scratch_bytes)), sched

    def _candidate(self, sched: Schedule, arena: int) -> Candidate:
        g = self.graph
        return Candidate(g.first, g.last, sched.grid, sched.scratch_bytes, arena,
                         self.macs_outside + sched.macs, sched.macs, g.macs,
                         self.fused, self.extra, sched.cached)

"""Plan candidates and their evaluation: the whole patched model's predicted arena and MACs.

A candidate is one patched stage with its grid (the *main* stage), plus optionally more
patched stages after it (`extra`, each with its own grid) and fused 1x1-grid stages
(`fused`, fuse.py). `StageEvaluator` builds the patched model once per main stage (and
set of other stages) and swaps only the main stage's options per grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tflm_patch import patch_format as pf
from tflm_patch.arena import predict_arena
from tflm_patch.arena_tail import predict_tail
from tflm_patch.fuse import fusion_units
from tflm_patch.model import Model, model_from_object
from tflm_patch.rewrite import CUSTOM_CODE, replace_stages
from tflm_patch.schedule import Schedule, make_schedule, stage_options
from tflm_patch.stage import StageGraph, build_stage, op_support

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
        self.support = [op_support(model, op) for op in model.operators]
        self.stages: dict[OpRange, Stage] = {}

    def outside(self, exclude: Sequence[OpRange]) -> list[Stage]:
        out = []
        for a, b in fusion_units(self.model, exclude, self.support):
            if (a, b) not in self.stages:
                graph = build_stage(self.model, a, b, live_input=True)
                self.stages[(a, b)] = (graph, make_schedule(graph, (1, 1)))
            out.append(self.stages[(a, b)])
        return out


class StageEvaluator:
    """Arena and MACs of one main stage under any grid, the patched model built once.
    `units`: fused 1x1-grid stages (fuse.fusion_units) and `fixed`: other patched
    stages, both with their schedules."""

    def __init__(self, model: Model, graph: StageGraph, target: str, macs_before: int,
                 units: Sequence[Stage] = (), fixed: Sequence[Stage] = ()):
        self.model, self.graph, self.target = model, graph, target
        self.macs_outside = (macs_before - graph.macs
                             - sum(g.macs for g, _ in fixed) + sum(s.macs for _, s in fixed))
        self.fused = tuple((u.first, u.last) for u, _ in units)
        self.extra = tuple((g.first, g.last, s.grid) for g, s in fixed)
        others = [*fixed, *units]
        self.patched = model_from_object(
            replace_stages(model, [(graph, make_schedule(graph, (1, 1))), *others]))
        self.op_index = graph.first - sum(g.last - g.first for g, _ in others
                                          if g.last < graph.first)
        self.op = self.patched.operators[self.op_index]
        assert self.op.name == CUSTOM_CODE
        self.layers = pf.decode(self.op.custom_options or b"").layers
        self.num_inputs = len(self.op.inputs)
        self.tail = predict_tail(self.patched, target)

    def evaluate(self, grid: Grid, cache: bool | frozenset[int] = False
                 ) -> tuple[Candidate, Schedule]:
        """cache: halo reuse between horizontally adjacent patches (make_schedule)."""
        sched = make_schedule(self.graph, grid, cache)
        blob = pf.encode(stage_options(self.graph, sched, self.layers, self.num_inputs))
        ops = list(self.patched.operators)
        ops[self.op_index] = replace(self.op, custom_options=blob)
        model = replace(self.patched, operators=tuple(ops))
        arena = predict_arena(model, self.target, self.tail).total
        g = self.graph
        return Candidate(g.first, g.last, grid, sched.scratch_bytes, arena,
                         self.macs_outside + sched.macs, sched.macs, g.macs,
                         self.fused, self.extra, sched.cached), sched

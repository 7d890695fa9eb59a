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

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from tflm_patch.arena_head import (
    _AFTER,
    OFFLINE_PLAN_METADATA,
    UNMARKED,
    HeadPlan,
    Placement,
    _check_supported,
    _has_flatbuffer_data,
    align_up,
    greedy_order,
    offline_offsets,
    plan_head,
    planning_bytes,
    planning_head_bytes,
    scratch_requests,
    tensor_bytes,
)
from tflm_patch.arena_measure import ensure_measured, unpredicted
from tflm_patch.arena_tail import (
    OpAllocations,
    TailPrediction,
    assemble_tail,
    get_target,
    model_allocations,
    op_allocations,
    patch_exec_allocations,
    predict_tail,
    replay,
)
from tflm_patch.errors import UnsupportedModelError
from tflm_patch.model import Model


@dataclass(frozen=True)
class ArenaPrediction:
    head: HeadPlan
    tail: TailPrediction
    planning_bytes: int
    target: str
    # operators whose allocations could not be measured (arena_measure.unpredicted): the
    # figures leave their persistent data and scratch out, `total` is not TFLM's arena
    unpredicted: tuple[str, ...] = ()

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
    _check_supported(model)
    missing = unpredicted(model)  # measures the operators the tables do not know
    head = plan_head(model, target)
    return ArenaPrediction(
        head,
        tail if tail is not None else predict_tail(model, target),
        planning_head_bytes(model, target, head),
        target,
        missing,
    )



# --------------------------------------------------------- patched models, without building
@dataclass(frozen=True)
class PatchedOp:
    """A PATCH_EXEC replacing operators first..last as rewrite.replace_stages makes it: it
    reads `input` and the model tensors `constants`, plus `new_constants` tensors the
    rewrite adds: the two packed constant tensors, which all PATCH_EXECs of a model
    share (so a layout counts the most any of them needs, not the sum), and writes
    `output`."""

    first: int
    last: int
    input: int
    output: int
    constants: tuple[int, ...]
    new_constants: int


@dataclass(frozen=True)
class _Op:
    """An operator of a patched model as the arena sees it: the tensors it reads and
    writes, every tensor it refers to, its scratch requests (None: the variable scratch
    of the main PATCH_EXEC) and its tail allocations."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    refs: tuple[int, ...]
    scratch: tuple[int, ...] | None
    tail: OpAllocations


class PatchedArena:
    """`predict_arena(patched, target).total` for models patched from `model`, without
    building them: the same head buffers in the same order with the same lifetimes and
    the same tail as the model rewrite.replace_stages writes (tensors nothing refers to
    pruned, the new constants appended). Per-tensor and per-operator facts are computed
    once here, the per-plan part once per `layout`, and `PatchedLayout.arena` only
    re-plans the head with the main stage's scratch size."""

    def __init__(self, model: Model, target: str = "x86_64"):
        _check_supported(model)
        if offline_offsets(model) is not None:
            raise UnsupportedModelError(f"the model has an {OFFLINE_PLAN_METADATA} plan, "
                                        "which a patched model's tensors no longer match")
        ensure_measured(model)  # the operators the tables do not know
        self.model, self.target = model, target
        t = get_target(target)
        self.rest = model_allocations(model, t)
        self.ops = [_Op(op.inputs, op.outputs,
                        tuple(x for x in (*op.inputs, *op.outputs, *op.intermediates)
                              if x >= 0),
                        tuple(scratch_requests(model, op, target)),
                        op_allocations(model, op, t)) for op in model.operators]
        self.patch_tail = patch_exec_allocations(model, t)
        self.tail_target = t
        # PatchedLayout.tail by (tensors, scratch buffers, the operators' tail objects):
        # plans with the same operators have the same tail whatever their grids
        self.tails: dict[tuple[int, int, tuple[int, ...]], tuple[int, int]] = {}
        self.io = frozenset(model.inputs) | frozenset(model.outputs)
        # the tensors the head plans when a patched model still has them: no constant
        # data, not variable, not empty (tensor_bytes of every tensor, as plan_head)
        nbytes = [tensor_bytes(model, x) for x in model.tensors]
        self.activations = [(x.index, align_up(n)) for x, n in zip(model.tensors, nbytes,
                                                                   strict=True)
                            if n and not x.is_variable and not _has_flatbuffer_data(model, x)]

    def layout(self, stages: Sequence[tuple[PatchedOp, int | None]]) -> PatchedLayout:
        """The model with these PATCH_EXECs (non-overlapping), each with its scratch bytes;
        at most one has None: the main stage, whose scratch `PatchedLayout.arena` takes."""
        starts = {p.first: (p, s) for p, s in stages}
        ops: list[_Op] = []
        new_constants = 0
        i = 0
        while i < len(self.ops):
            if i not in starts:
                ops.append(self.ops[i])
                i += 1
                continue
            p, scratch = starts[i]
            new_constants = max(new_constants, p.new_constants)  # shared by all
            inputs = (p.input, *dict.fromkeys(p.constants))
            ops.append(_Op(inputs, (p.output,), (*inputs, p.output),
                           None if scratch is None else ((scratch,) if scratch else ()),
                           self.patch_tail))
            i = p.last + 1
        return PatchedLayout(self, ops, new_constants)


class PatchedLayout:
    """One patched model, but for the main PATCH_EXEC's scratch size."""

    def __init__(self, base: PatchedArena, ops: list[_Op], new_constants: int):
        model = base.model
        self.base, self.ops = base, ops
        used = set(base.io)
        for op in ops:
            used.update(op.refs)
        firsts, lasts = _lifetimes(model, ops)
        self.num_tensors = len(used) + new_constants
        planned = [(size, t) for t, size in base.activations if t in used]
        sizes = [size for size, _ in planned]
        self.firsts = [firsts.get(t, UNMARKED) for _, t in planned]
        self.lasts = [lasts.get(t, UNMARKED) for _, t in planned]
        self.main_at = -1  # where the main scratch buffer is added, -1: no main stage
        self.main_scope = UNMARKED
        for k, op in enumerate(ops):
            if op.scratch is None:
                self.main_at, self.main_scope = len(sizes), k + 1
            for nbytes in op.scratch or ():
                sizes.append(align_up(nbytes))
                self.firsts.append(k + 1)
                self.lasts.append(k + 1)
        self.sizes = sizes
        self.num_scratch = len(sizes) - len(planned)
        self._tails: dict[bool, tuple[int, int]] = {}
        self._rest: dict[bool, tuple[int, int]] = {}  # (tail, arena while planning)
        self._live = _live_bytes(sizes, self.firsts, self.lasts, self.main_scope)
        self._arenas: dict[int, int] = {}
        self._order: list[int] = []
        self._keys: list[tuple[int, int]] = []
        self._states = [Placement()]
        self._offsets: list[int] | None = None
        # per buffer, its entry in Placement.placed without the main scratch, and its key
        self._entries: list[tuple[tuple[int, int, int, int], tuple[int, int]]] = []

    def tail(self, main_scratch: bool) -> tuple[int, int]:
        """(tail bytes, tail bytes while planning) of TailPrediction."""
        if main_scratch not in self._tails:
            n = self.num_scratch + (1 if main_scratch and self.main_at >= 0 else 0)
            base = self.base
            key = (self.num_tensors, n, tuple(id(op.tail) for op in self.ops))
            if key not in base.tails:  # the tail objects live as long as `base`
                allocs, planned = assemble_tail(base.tail_target, base.model.num_subgraphs,
                                                self.num_tensors, [op.tail for op in self.ops],
                                                n, base.rest)
                used = replay(allocs)
                base.tails[key] = (used[-1] if used else 0, used[planned - 1] if planned else 0)
            self._tails[main_scratch] = base.tails[key]
        return self._tails[main_scratch]

    def _total(self, head: int, scratch: bool) -> int:
        """The arena from the head's size; scratch: the main scratch buffer exists."""
        extra = scratch and self.main_at >= 0
        if extra not in self._rest:
            tail, before_io = self.tail(extra)
            planning = planning_bytes(self.base.target, self.num_scratch + extra,
                                      self.num_tensors, self.base.model.num_subgraphs,
                                      len(self.sizes) + extra)
            self._rest[extra] = (tail, planning + before_io)
        tail, during_planning = self._rest[extra]
        return max(head + tail, during_planning)

    def lower_bound(self, scratch: int = 0) -> int:
        """A lower bound of `arena(scratch)`: the head holds at least every buffer alive
        at once in any scope (and the rest is at least what it is without the scratch)."""
        other, at_main = self._live
        return self._total(max(other, at_main + align_up(scratch)), False)

    def arena(self, scratch: int = 0) -> int:
        """The predicted smallest arena with the main PATCH_EXEC's scratch of this size."""
        if scratch not in self._arenas:
            self._arenas[scratch] = self._total(self.head(scratch), scratch > 0)
        return self._arenas[scratch]

    def head(self, scratch: int) -> int:
        """The head's size (arena_head.greedy_plan) with the main scratch buffer added at
        main_at. The buffers placed before it (the larger ones) are placed once for all
        scratch sizes; after it, a buffer that shares no scope with the scratch or with a
        buffer placed elsewhere than without the scratch goes where it went without it."""
        base = self._base()
        order = self._order
        if not scratch or self.main_at < 0:
            return self._states[-1].total
        size = align_up(scratch)
        # greedy_order with the scratch added: larger buffers first, among equal sizes
        # the later-added (index >= main_at) first
        k = bisect.bisect_left(self._keys, (-size, -self.main_at))
        placement = self._states[k].copy()
        scope = self.main_scope
        placement.place(size, scope, scope)
        moved = [(scope, scope)]  # lifetimes of the scratch and of the buffers it moved
        placed, total = placement.placed, placement.total
        sizes, firsts, lasts, entries = self.sizes, self.firsts, self.lasts, self._entries
        for i in order[k:]:
            first, last = firsts[i], lasts[i]
            for f, la in moved:
                if f <= last and first <= la:
                    placement.total = total
                    if placement.place(sizes[i], first, last) != base[i]:
                        moved.append((first, last))
                    total = placement.total
                    break
            else:  # as placed without the scratch
                entry, key = entries[i]
                placed.insert(bisect.bisect_right(placed, key), entry)
                total = max(total, entry[1])
        return total

    def _base(self) -> list[int]:
        """The offset of every buffer without the main scratch; placement states after
        each buffer of the order."""
        if self._offsets is None:
            sizes = self.sizes
            self._order = greedy_order(sizes)
            # sort keys of the order: (-size, -index of addition with the scratch added)
            self._keys = [(-sizes[i], -(i + 1 if i >= self.main_at >= 0 else i))
                          for i in self._order]
            states, offsets = self._states, [0] * len(self.sizes)
            for i in self._order:
                placement = states[-1].copy()
                offsets[i] = placement.place(self.sizes[i], self.firsts[i], self.lasts[i])
                states.append(placement)
            self._offsets = offsets
            self._entries = [((o, o + size, first, last), (o, _AFTER)) for o, size, first, last
                             in zip(offsets, self.sizes, self.firsts, self.lasts, strict=True)]
        return self._offsets


def _lifetimes(model: Model, ops: Sequence[_Op]) -> tuple[dict[int, int], dict[int, int]]:
    """arena_head._mark_lifetimes over the operators of a patched model."""
    firsts: dict[int, int] = {}
    lasts: dict[int, int] = {}
    for t in model.inputs:
        firsts.setdefault(t, 0)
        lasts[t] = 0
    scope = 0
    for op in ops:
        scope += 1
        for t in op.outputs:
            if t >= 0:
                firsts.setdefault(t, scope)
        for t in (*op.inputs, *op.outputs):
            if t >= 0:
                lasts[t] = scope
    for t in model.outputs:
        firsts.setdefault(t, scope)
        lasts[t] = scope
    return firsts, lasts


def _live_bytes(sizes: Sequence[int], firsts: Sequence[int], lasts: Sequence[int],
                main_scope: int) -> tuple[int, int]:
    """(most bytes alive at once in any scope, bytes alive in `main_scope`)."""
    live: dict[int, int] = {}
    for size, first, last in zip(sizes, firsts, lasts, strict=True):
        for scope in range(first, last + 1):
            live[scope] = live.get(scope, 0) + size
    return max(live.values(), default=0), live.get(main_scope, 0)

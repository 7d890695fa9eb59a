"""Patch schedules: for a stage and an n x m grid, the range of every stage tensor per
band (receptive fields, box mode), the scratch slots and the MACs.

Ranges are separable: the rows a tensor needs for a patch depend only on the patch's
row band, the columns only on its column band, so a schedule stores n row ranges and
m column ranges per tensor (what the options blob carries).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from tflm_patch import patch_format as pf
from tflm_patch.stage import StageGraph


def bands(size: int, count: int) -> tuple[pf.Range, ...]:
    """`count` contiguous bands tiling [0, size), sizes differing by at most one (the
    larger ones first)."""
    if not 1 <= count <= size:
        raise ValueError(f"cannot cut {size} rows/columns into {count} bands")
    base, extra = divmod(size, count)
    out, lo = [], 0
    for b in range(count):
        hi = lo + base + (1 if b < extra else 0)
        out.append((lo, hi))
        lo = hi
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    grid: tuple[int, int]
    rows: tuple[tuple[pf.Range, ...], ...]  # [stage tensor][row band]
    cols: tuple[tuple[pf.Range, ...], ...]  # [stage tensor][column band]
    slots: tuple[tuple[int, int], ...]  # (offset, bytes) per stage tensor (EXTERNAL, 0 at ends)
    scratch_bytes: int
    macs: int  # of the stage, patch by patch
    cached: frozenset[int] = frozenset()  # tensors with CACHE_COLS (halo reuse)
    caches: tuple[tuple[int, int], ...] = ()  # (offset, bytes) per stage tensor

    @property
    def cache(self) -> bool:
        return bool(self.cached)


Ranges = tuple[tuple[pf.Range, ...], ...]  # [stage tensor][band]
CacheIf = Callable[[int, Sequence[pf.Range | None]], bool]


def axis_ranges(graph: StageGraph, axis: int, count: int) -> Ranges:
    """Per stage tensor, the range along `axis` (0 rows, 1 columns) of each of `count`
    bands. Box mode: each tensor keeps the union of what its consumers' ranges read.
    (Schedules take them through _axis, which keeps them on the graph.)"""
    return band_ranges(graph.layers, graph.shapes, axis, count)


def cached_col_ranges(graph: StageGraph, count: int, allowed: frozenset[int] | None = None
                      ) -> tuple[Ranges, frozenset[int]]:
    """Column ranges with halo reuse (CACHE_COLS): every intermediate tensor that can have
    a cache that saves something (and is in `allowed`, when given) gets one, so its layer
    computes only the columns the previous patch did not, and the layers before it need
    correspondingly less. Returns the ranges and the cached tensors."""
    def worth(t: int, outs: Sequence[pf.Range | None]) -> bool:
        inner = 0 < t < len(graph.tensors) - 1 and not graph.layers[t - 1].stream
        return inner and (allowed is None or t in allowed) and cols_cacheable(outs) and \
            any(a[1] > b[0] for a, b in pairwise(outs))  # type: ignore[index]

    return cached_band_ranges(graph.layers, graph.shapes, count, worth)


def cols_cacheable(outs: Sequence[pf.Range | None]) -> bool:
    """Column ranges a cache can serve (validation rule 9): all non-empty, moving right."""
    if any(r is None or r[1] <= r[0] for r in outs):
        return False
    return all(a[0] <= b[0] and a[1] <= b[1] for a, b in pairwise(outs))  # type: ignore[index]


def band_ranges(layers: Sequence[pf.Layer], shapes: Sequence[tuple[int, int, int]],
                axis: int, count: int) -> Ranges:
    """[tensor][band] ranges along `axis` of `count` output bands (`bands`), box mode."""
    return _ranges(layers, shapes, axis, count, None)[0]


def cached_band_ranges(layers: Sequence[pf.Layer], shapes: Sequence[tuple[int, int, int]],
                       count: int, cache_if: CacheIf) -> tuple[Ranges, frozenset[int]]:
    """Column ranges where each tensor t for which cache_if(t, its ranges per band) holds
    gets CACHE_COLS: its layer reads only for the computed columns. Returns the ranges
    and the tensors that got CACHE_COLS."""
    return _ranges(layers, shapes, 1, count, cache_if)


def _ranges(layers: Sequence[pf.Layer], shapes: Sequence[tuple[int, int, int]], axis: int,
            count: int, cache_if: CacheIf | None) -> tuple[Ranges, frozenset[int]]:
    sizes = [s[axis] for s in shapes]
    ranges: list[list[pf.Range | None]] = [[None] * count for _ in shapes]
    ranges[-1] = list(bands(sizes[-1], count))
    cached: set[int] = set()
    for k in reversed(range(len(layers))):  # every reader of tensor k + 1 is done
        outs = ranges[k + 1]
        comp = list(outs)
        if cache_if is not None and cache_if(k + 1, outs):
            cached.add(k + 1)
            for b in range(1, count):
                lo, hi = outs[b]  # type: ignore[misc]
                comp[b] = (max(lo, outs[b - 1][1]), hi)  # type: ignore[index]
        ly = layers[k]
        for t in (ly.input0, ly.input1):
            if t == pf.NONE:
                continue
            for b, out in enumerate(comp):
                if out is None:
                    continue
                need = pf.needed_range(ly, axis, out, sizes[t])
                if need is None:
                    continue
                have = ranges[t][b]
                ranges[t][b] = need if have is None else (min(have[0], need[0]),
                                                          max(have[1], need[1]))
    final = tuple(tuple(r if r is not None else (0, 0) for r in per_t) for per_t in ranges)
    return final, frozenset(cached)


def pack_slots(sizes: list[int], life: list[tuple[int, int]],
               overlap: Sequence[Sequence[bool]] | None = None) -> tuple[list[int], int]:
    """Greedy by size (largest first), first fit among tensors live at the same time;
    offsets aligned to SLOT_ALIGNMENT. Returns offsets and the total bytes. overlap[k][j]:
    do k and j live at the same time (worked out from `life` when not given)."""
    if overlap is None:
        overlap = _overlap(tuple(life))
    # largest first, equal sizes in index order (a stable sort)
    order = sorted(range(len(sizes)), key=sizes.__getitem__, reverse=True)
    # (offset, aligned end, k), sorted: among equal offsets the order does not matter
    placed: list[tuple[int, int, int]] = []
    offsets = [0] * len(sizes)
    total = 0
    a = pf.SLOT_ALIGNMENT
    for k in order:
        size = sizes[k]
        if not size:  # and so are the rest
            break
        row = overlap[k]
        offset = 0
        for o, e, j in placed:
            if row[j]:
                if offset + size <= o:
                    break
                if e > offset:
                    offset = e
        offsets[k] = offset
        end = offset + size
        bisect.insort(placed, (offset, (end + a - 1) // a * a, k))
        if end > total:
            total = end
    return offsets, total


@lru_cache(maxsize=4096)
def _overlap(life: tuple[tuple[int, int], ...]) -> tuple[tuple[bool, ...], ...]:
    """[k][j]: do lifetimes k and j share a layer?"""
    return tuple(tuple(not (lb < fa or la < fb) for fb, lb in life) for fa, la in life)


def _align(v: int, a: int = pf.SLOT_ALIGNMENT) -> int:
    return (v + a - 1) // a * a


def make_schedule(graph: StageGraph, grid: tuple[int, int],
                  cache: bool | frozenset[int] = False) -> Schedule:
    """The schedule of `graph` under an n x m grid; cache: halo reuse between horizontally
    adjacent patches (cached_col_ranges) wherever a tensor can have a cache (True), or
    only for these stage tensors (a set; the empty set is no cache). Made once per graph
    and arguments (the planner judges each grid many times)."""
    key = (grid, cache)
    if key not in graph.schedules:
        graph.schedules[key] = _make_schedule(graph, grid, cache)
    return graph.schedules[key]


@dataclass(frozen=True)
class _Axis:
    """The ranges along one axis for one band count, with per tensor the widest band
    and the sum of the bands' widths (_extents)."""

    ranges: Ranges
    cached: frozenset[int]
    widest: tuple[int, ...]
    total: tuple[int, ...]


def _axis(graph: StageGraph, axis: int, count: int,
          cache: bool | frozenset[int] = False) -> _Axis:
    """Made once per graph and arguments (in graph.schedules, beside the schedules)."""
    cache = cache or False  # the empty set is no cache
    key = ("axis", axis, count, cache)
    got = graph.schedules.get(key)
    if got is None:
        if cache is False:
            ranges, cached = axis_ranges(graph, axis, count), frozenset[int]()
        else:
            ranges, cached = cached_col_ranges(graph, count, None if cache is True else cache)
        got = graph.schedules[key] = _Axis(ranges, cached, *_extents(ranges, cached))
    return got


@dataclass(frozen=True)
class _Slots:
    """Per graph: the stage tensors with a slot, the channels a slot holds, and the
    tensors' lifetimes."""

    slotted: tuple[int, ...]
    depths: tuple[int, ...]
    life: tuple[tuple[int, int], ...]


def _slots(graph: StageGraph) -> _Slots:
    got = graph.schedules.get("slots")
    if got is None:
        num_t = len(graph.tensors)
        slotted = tuple(k for k in range(num_t - 1) if k > 0 or graph.input_nchw)
        # a STREAM layer's output holds one channel; tensor 0 has a slot only when the
        # kernel gathers it from an NCHW input
        depths = tuple(1 if k > 0 and graph.layers[k - 1].stream else graph.shapes[k][2]
                       for k in slotted)
        life = tuple(pf.lifetimes(list(graph.layers)))
        got = graph.schedules["slots"] = _Slots(slotted, depths, life)
    return got


def _make_schedule(graph: StageGraph, grid: tuple[int, int],
                   cache: bool | frozenset[int]) -> Schedule:
    n, m = grid
    rows = _axis(graph, 0, n)
    cols = _axis(graph, 1, m, cache)
    cached = cols.cached
    num_t = len(graph.tensors)
    facts = _slots(graph)
    sizes = [0] * num_t
    row_max, col_max = rows.widest, cols.widest
    for k, depth in zip(facts.slotted, facts.depths, strict=True):
        sizes[k] = row_max[k] * col_max[k] * depth
    # a cache lives for the whole run: the widest overlap, every row, every channel
    order = sorted(cached)
    col_ranges = cols.ranges
    cache_sizes = [row_max[t] * max(col_ranges[t][j - 1][1] - col_ranges[t][j][0]
                                    for j in range(1, m))
                   * graph.shapes[t][2] for t in order]
    lives = facts.life + ((-1, len(graph.layers)),) * len(order)
    offsets, total = pack_slots(sizes + cache_sizes, list(lives), _overlap(lives))
    slots = [(pf.EXTERNAL, 0)] * num_t
    for k in facts.slotted:
        slots[k] = (offsets[k], sizes[k])
    caches = [(pf.EXTERNAL, 0)] * num_t
    for i, t in enumerate(order):
        caches[t] = (offsets[num_t + i], cache_sizes[i])
    # a cached tensor computes only the columns the previous patch did not
    row_sum, col_sum = rows.total, cols.total
    macs = sum(per_pixel * row_sum[k + 1] * col_sum[k + 1]
               for k, per_pixel in enumerate(graph.macs_per_pixel))
    return Schedule(grid, rows.ranges, col_ranges, tuple(slots), total, macs, cached,
                    tuple(caches))


def _extents(ranges: Ranges, cached: frozenset[int] = frozenset()
             ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per tensor, the widest band and the sum of the bands' widths (where a cached
    tensor computes only what the previous band has not)."""
    widest = tuple(max(hi - lo for lo, hi in per_t) for per_t in ranges)
    total = tuple(sum(hi - max(lo, per_t[j - 1][1] if j and t in cached else lo)
                      for j, (lo, hi) in enumerate(per_t)) for t, per_t in enumerate(ranges))
    return widest, total


def stage_options(graph: StageGraph, sched: Schedule, layers: tuple[pf.Layer, ...],
                  num_inputs: int, packed: bool = False) -> pf.PatchOptions:
    """The options of the stage under this schedule (layers with their input indices;
    `packed`: their constants are (input, offset), version 3, when any layer has one)."""
    tensors = tuple(
        pf.StageTensor(h, w, c, sched.rows[k], sched.cols[k], *sched.slots[k],
                       *((pf.TENSOR_CACHE_COLS, *sched.caches[k]) if k in sched.cached
                         else ()))
        for k, (h, w, c) in enumerate(graph.shapes))
    flags = (pf.FLAG_INPUT_NCHW if graph.input_nchw else 0) | \
        (pf.FLAG_CACHES if sched.cached else 0) | \
        (pf.FLAG_PACKED if packed and (any(c is not None for c in graph.constants) or
                                       any(t is not None for t in graph.tables)) else 0)
    return pf.PatchOptions(tensors, layers, sched.grid, sched.scratch_bytes, num_inputs, flags)

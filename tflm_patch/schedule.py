"""Patch schedules: for a stage and an n x m grid, the range of every stage tensor per
band (receptive fields, box mode), the scratch slots and the MACs.

Ranges are separable: the rows a tensor needs for a patch depend only on the patch's
row band, the columns only on its column band, so a schedule stores n row ranges and
m column ranges per tensor (what the options blob carries).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@lru_cache(maxsize=4096)  # per graph object: the planner asks for each count many times
def axis_ranges(graph: StageGraph, axis: int, count: int) -> tuple[tuple[pf.Range, ...], ...]:
    """Per stage tensor, the range along `axis` (0 rows, 1 columns) of each of `count`
    bands. Box mode: each tensor keeps the union of what its consumers' ranges read."""
    size = graph.shapes[-1][axis]
    sizes = [s[axis] for s in graph.shapes]
    per_band = []
    for band in bands(size, count):
        ranges: list[pf.Range | None] = [None] * len(graph.tensors)
        ranges[-1] = band
        for k in reversed(range(len(graph.layers))):
            out = ranges[k + 1]
            if out is None:
                continue
            ly = graph.layers[k]
            for t in (ly.input0, ly.input1):
                if t == pf.NONE:
                    continue
                need = pf.needed_range(ly, axis, out, sizes[t])
                if need is None:
                    continue
                have = ranges[t]
                ranges[t] = need if have is None else (min(have[0], need[0]),
                                                       max(have[1], need[1]))
        per_band.append([r if r is not None else (0, 0) for r in ranges])
    return tuple(tuple(per_band[b][k] for b in range(count)) for k in range(len(graph.tensors)))




def pack_slots(sizes: list[int], life: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Greedy by size (largest first), first fit among tensors live at the same time;
    offsets aligned to SLOT_ALIGNMENT. Returns offsets and the total bytes."""
    order = sorted(range(len(sizes)), key=lambda k: (-sizes[k], k))
    placed: list[tuple[int, int, int]] = []  # (offset, end, k)
    offsets = [0] * len(sizes)
    total = 0
    for k in order:
        if sizes[k] == 0:
            continue
        busy = sorted((o, e) for o, e, j in placed
                      if not (life[j][1] < life[k][0] or life[k][1] < life[j][0]))
        offset = 0
        for o, e in busy:
            if offset + sizes[k] <= o:
                break
            offset = max(offset, _align(e))
        offsets[k] = offset
        placed.append((offset, offset + sizes[k], k))
        total = max(total, offset + sizes[k])
    return offsets, total


def _align(v: int, a: int = pf.SLOT_ALIGNMENT) -> int:
    return (v + a - 1) // a * a


def make_schedule(graph: StageGraph, grid: tuple[int, int]) -> Schedule:
    n, m = grid
    rows = axis_ranges(graph, 0, n)
    cols = axis_ranges(graph, 1, m)
    num_t = len(graph.tensors)
    sizes = [0] * num_t
    for k in range(1, num_t - 1):
        sizes[k] = (max(hi - lo for lo, hi in rows[k]) * max(hi - lo for lo, hi in cols[k])
                    * graph.shapes[k][2])
    life = pf.lifetimes(list(graph.layers))
    offsets, total = pack_slots(sizes, life)
    slots = tuple((pf.EXTERNAL, 0) if k in (0, num_t - 1) else (offsets[k], sizes[k])
                  for k in range(num_t))
    macs = 0
    for k, per_pixel in enumerate(graph.macs_per_pixel):
        sum_rows = sum(hi - lo for lo, hi in rows[k + 1])
        sum_cols = sum(hi - lo for lo, hi in cols[k + 1])
        macs += per_pixel * sum_rows * sum_cols
    return Schedule(grid, rows, cols, slots, total, macs)


def stage_options(graph: StageGraph, sched: Schedule, layers: tuple[pf.Layer, ...],
                  num_inputs: int) -> pf.PatchOptions:
    """The options of the stage under this schedule (layers with their input indices)."""
    tensors = tuple(
        pf.StageTensor(h, w, c, sched.rows[k], sched.cols[k], *sched.slots[k])
        for k, (h, w, c) in enumerate(graph.shapes))
    return pf.PatchOptions(tensors, layers, sched.grid, sched.scratch_bytes, num_inputs)

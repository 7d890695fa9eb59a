#!/usr/bin/env python3
"""x86 TFLM benchmark of patched models: measured arena, invoke latency, MACs, and the
C++ PATCH_EXEC kernel against TFLM's reference kernels per MAC; markdown tables.

    python tools/bench_tflm.py [--shared DIR] [--no-zoo] [--repeats N] [--seed S]

Needs the C++ kernel (TFLM_ROOT and TFLM_EXTRA_INCLUDES, see DEVELOPERS.md). For each
model (person_detect and mobilenet_v2_int8_224_nchw from ../shared/models when present,
every zoo model) the planner's default plan is converted, then in the x86 TFLM
interpreter of the tflite-micro wheel:

- the smallest arena of original and patched (bisection to 16 bytes), next to the arena
  model's prediction for the patched model;
- the median Invoke latency of original and patched over N runs (default 9), both
  interpreters in ONE process, alternating, on the same seeded random input; the
  outputs must be bit-identical;
- per MAC: the main patched stage cut out as a standalone model, its operators on TFLM's
  reference kernels vs one PATCH_EXEC with the planned grid and with a 1x1 grid (no
  halo recomputation: the kernel's own speed), timed alike.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tflm_patch import tflm_build, tflm_runner
from tflm_patch.cli_patch import parse_fraction
from tflm_patch.model import Model, load_model
from tflm_patch.planner import DEFAULT_MAX_OVERHEAD, PlanRequest, patched_model_object, plan
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage, to_checked_bytes
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.validate import random_inputs, segment_model

log = logging.getLogger("bench_tflm")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
SHARED = ("person_detect", "mobilenet_v2_int8_224_nchw")


@dataclass(frozen=True)
class ModelRow:
    name: str
    plan: str
    arena_before: int
    arena_after: int
    predicted: int
    macs_before: int
    macs_after: int
    ms_before: float
    ms_after: float
    identical: bool


@dataclass(frozen=True)
class StageRow:
    name: str
    stage: str
    grid: tuple[int, int]
    macs_ref: int
    macs_grid: int
    macs_one: int
    ms_ref: float
    ms_grid: float
    ms_one: float
    identical: bool

    def ns_per_mac(self, ms: float, macs: int) -> float:
        return ms * 1e6 / macs


def _same(outputs: tuple[tuple[np.ndarray, ...], ...]) -> bool:
    first = outputs[0]
    return all(len(o) == len(first) and all(a.tobytes() == b.tobytes()
                                            for a, b in zip(o, first, strict=True))
               for o in outputs[1:])


def _stage_models(model: Model, first: int, last: int, grid: tuple[int, int]
                  ) -> tuple[bytes, bytes, bytes, tuple[int, int, int]]:
    """The stage as a standalone model: original operators, PATCH_EXEC with `grid`,
    PATCH_EXEC with a 1x1 grid; and their MACs."""
    graph = build_stage(model, first, last)
    seg = load_model(segment_model(model, list(graph.ops), [graph.input], [graph.output]))
    g = build_stage(seg, 0, len(seg.operators) - 1)
    sched, one = make_schedule(g, grid), make_schedule(g, (1, 1))
    return (seg.raw, to_checked_bytes(replace_stage(seg, g, sched)),
            to_checked_bytes(replace_stage(seg, g, one)), (g.macs, sched.macs, one.macs))


def bench(name: str, path: Path, kernel: tflm_build.KernelLibrary, repeats: int,
          seed: int, max_overhead: float = DEFAULT_MAX_OVERHEAD
          ) -> tuple[ModelRow, StageRow] | None:
    model = load_model(path)
    result = plan(model, PlanRequest(max_overhead=max_overhead))
    c = result.chosen
    if c is None:
        log.warning("%s: no plan (%s)", name, result.message)
        return None
    kw = kernel.runner_kwargs()
    patched = to_checked_bytes(patched_model_object(model, result))
    log.info("%s: %s; measuring arenas", name, c.label)
    before = tflm_runner.smallest_arena(model.raw).smallest
    after = tflm_runner.smallest_arena(patched, **kw).smallest
    x = random_inputs(model, seed)
    log.info("%s: timing %d invokes each", name, repeats)
    lat = tflm_runner.invoke_latency([model.raw, patched], x, repeats=repeats, **kw)
    ops = sum(op.name == CUSTOM_CODE for op in load_model(patched).operators)
    label = f"ops {c.first}..{c.last} {c.grid[0]}x{c.grid[1]}" + (
        f" + {ops - 1} more" if ops > 1 else "")
    row = ModelRow(name, label, before, after, c.arena, result.macs_before, c.macs,
                   lat.median(0) * 1e3, lat.median(1) * 1e3, _same(lat.outputs))

    ref, grid_model, one_model, (m_ref, m_grid, m_one) = _stage_models(
        model, c.first, c.last, c.grid)
    sx = random_inputs(load_model(ref), seed)
    log.info("%s: timing the stage ops %d..%d alone", name, c.first, c.last)
    st = tflm_runner.invoke_latency([ref, grid_model, one_model], sx, repeats=repeats, **kw)
    stage = StageRow(name, f"ops {c.first}..{c.last}", c.grid, m_ref, m_grid, m_one,
                     st.median(0) * 1e3, st.median(1) * 1e3, st.median(2) * 1e3,
                     _same(st.outputs))
    return row, stage


def _models(shared: Path, zoo: bool) -> list[tuple[str, Path]]:
    models: list[tuple[str, Path]] = []
    for name in SHARED:
        p = shared / f"{name}.tflite"
        if p.exists():
            models.append((name, p))
        else:
            log.warning("%s not found: skipped", p)
    if zoo:
        from tflm_patch.zoo import ensure_zoo

        models += [(f"zoo:{n}", p) for n, p in ensure_zoo().items()]
    return models


def print_tables(rows: list[ModelRow], stages: list[StageRow]) -> None:
    print("| model | PATCH_EXECs (main stage, grid + others) | arena original (B) | "
          "arena patched (B) | predicted (B) | smaller | MACs original | MACs patched | "
          "invoke original (ms) | invoke patched (ms) | time | outputs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.name} | {r.plan} | {r.arena_before:,} | {r.arena_after:,} | "
              f"{r.predicted:,} | {r.arena_before / r.arena_after:.2f}x | {r.macs_before:,} | "
              f"{r.macs_after:,} | {r.ms_before:.2f} | {r.ms_after:.2f} | "
              f"{r.ms_after / r.ms_before:.2f}x | "
              f"{'bit-identical' if r.identical else 'MISMATCH'} |")
    print()
    print("| model | stage | TFLM reference ops: ms, ns/MAC | PATCH_EXEC grid: ms, ns/MAC | "
          "PATCH_EXEC 1x1: ms, ns/MAC | per MAC vs reference (grid, 1x1) | outputs |")
    print("|---|---|---:|---:|---:|---:|---|")
    for s in stages:
        ref = s.ns_per_mac(s.ms_ref, s.macs_ref)
        grid = s.ns_per_mac(s.ms_grid, s.macs_grid)
        one = s.ns_per_mac(s.ms_one, s.macs_one)
        print(f"| {s.name} | {s.stage} | {s.ms_ref:.2f}, {ref:.2f} | "
              f"{s.grid[0]}x{s.grid[1]}: {s.ms_grid:.2f}, {grid:.2f} | {s.ms_one:.2f}, "
              f"{one:.2f} | {ref / grid:.2f}x, {ref / one:.2f}x faster | "
              f"{'bit-identical' if s.identical else 'MISMATCH'} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--repeats", type=int, default=9, help="timed invokes per model (>= 7)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input")
    ap.add_argument("--max-overhead", type=parse_fraction, default=DEFAULT_MAX_OVERHEAD,
                    metavar="FRACTION", help="the planner's MAC-overhead limit, e.g. 10%% (default "
                    f"{DEFAULT_MAX_OVERHEAD * 100:.0f}%%, as `tflm-patch convert`)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.repeats < 7:
        ap.error("--repeats must be at least 7")
    kernel, reason = tflm_build.kernel_or_reason()
    if kernel is None:
        print(f"error: the C++ PATCH_EXEC kernel cannot be built: {reason}", file=sys.stderr)
        return 2
    rows, stages = [], []
    for name, path in _models(args.shared, not args.no_zoo):
        out = bench(name, path, kernel, args.repeats, args.seed, args.max_overhead)
        if out is not None:
            rows.append(out[0])
            stages.append(out[1])
    print_tables(rows, stages)
    bad = [r.name for r in rows if not r.identical] + [s.name for s in stages if not s.identical]
    if bad:
        print(f"error: outputs differ: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Planner/converter benchmark: original vs patched predicted TFLM arena (single-stage,
MCUNetV2-style, and the default multi-stage plan), MAC overhead and convert time for every
real and zoo model, as a markdown table.

    python tools/bench_plan.py [--shared DIR] [--no-zoo] [--target x86_64|cortex_m]
                               [--objective latency|memory]

Each model is planned with the planner's default objective (or --objective; memory:
smallest arena with MAC overhead <= 20%), converted (plan + rewrite + verify) and, with
--validate, checked bit for bit on two seeded random inputs (x86 TFLM + numpy
PATCH_EXEC). Arena figures are predictions of the arena model; the C++ kernel (issue 4)
measures them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tflm_patch.model import load_model
from tflm_patch.planner import OBJECTIVES, PlanRequest, patched_model_object, plan
from tflm_patch.rewrite import to_checked_bytes

log = logging.getLogger("bench_plan")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
SHARED = ("person_detect", "mobilenet_v2_int8_224_nchw", "micro_speech_quantized",
          "hello_world_int8")


@dataclass(frozen=True)
class Row:
    name: str
    before: int
    single: int | None  # single-stage plan (--single-stage)
    after: int | None
    overhead: float | None
    plan: str
    seconds: float
    plans: int
    validated: str


def bench(name: str, path: Path, request: PlanRequest, validate: bool) -> Row:
    model = load_model(path)
    start = time.perf_counter()
    result = plan(model, request)
    c = result.chosen
    data = to_checked_bytes(patched_model_object(model, result)) if c else model.raw
    seconds = time.perf_counter() - start
    one = plan(model, replace(request, multi_stage=False)).chosen
    single = one.arena if one is not None else None
    checked = "-"
    if c is not None and validate:
        from tflm_patch.validate import compare, random_inputs

        patched = load_model(data)
        same = all(compare(model, patched, random_inputs(model, s), str(s)).identical
                   for s in range(2))
        checked = "bit-identical (2 seeds)" if same else "MISMATCH"
    if c is None:
        return Row(name, result.arena_before, single, None, None, "unchanged", seconds,
                   len(result.candidates), checked)
    return Row(name, result.arena_before, single, c.arena, result.overhead(c),
               c.label.replace(" grid", ",").replace(" convs", ""), seconds,
               len(result.candidates), checked)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--target", default="x86_64", choices=("x86_64", "cortex_m"))
    ap.add_argument("--objective", choices=OBJECTIVES, default=PlanRequest().objective,
                    help="the planner's objective (default: its default)")
    ap.add_argument("--validate", action="store_true",
                    help="also check each patched model bit for bit (x86 TFLM + numpy)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    models: list[tuple[str, Path]] = []
    for name in SHARED:
        p = args.shared / f"{name}.tflite"
        if p.exists():
            models.append((name, p))
        else:
            log.warning("%s not found: skipped", p)
    if not args.no_zoo:
        from tflm_patch.zoo import ensure_zoo

        models += [(f"zoo:{n}", p) for n, p in ensure_zoo().items()]
    print(f"| model | arena before (B) | single-stage (B) | multi-stage (B) | smaller | "
          f"MAC overhead | plan | plans searched | convert time |"
          f"{' validate |' if args.validate else ''}")
    print(f"|---|---:|---:|---:|---:|---:|---|---:|---:|{'---|' if args.validate else ''}")
    failed = False
    for name, path in models:
        log.info("%s ...", name)
        r = bench(name, path, PlanRequest(target=args.target, objective=args.objective),
                  args.validate)
        failed |= r.validated == "MISMATCH"
        after = f"{r.after:,}" if r.after is not None else "(unchanged)"
        single = f"{r.single:,}" if r.single is not None else "(unchanged)"
        ratio = f"{r.before / r.after:.2f}x" if r.after else "-"
        ovh = f"{r.overhead:+.1%}" if r.overhead is not None else "-"
        val = f" {r.validated} |" if args.validate else ""
        print(f"| {name} | {r.before:,} | {single} | {after} | {ratio} | {ovh} | {r.plan} | "
              f"{r.plans} | {r.seconds:.1f} s |{val}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`tflm-patch plan`, `convert` and `validate`: thin commands over planner, rewrite and
validate."""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from tflm_patch.errors import TflmPatchError
from tflm_patch.model import Model

log = logging.getLogger(__name__)


def parse_grid(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"grid must look like 4x3 (rows x columns), got "
                                         f"{text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_fraction(text: str) -> float:
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 20% or 0.2, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("the MAC overhead limit cannot be negative")
    return v


def _request(args: argparse.Namespace) -> Any:
    from tflm_patch.planner import PlanRequest

    return PlanRequest(budget=args.budget, max_overhead=args.max_overhead,
                       split_op=args.split_op, grid=args.grid, max_grid=args.max_grid,
                       target=args.target, min_saving=args.min_saving,
                       multi_stage=not args.single_stage)


def _progress(done: int, total: int) -> None:
    if total and (done == total or done % 10 == 0):
        log.info("planning: %d/%d stages evaluated", done, total)


def _load(arg: str) -> tuple[Path, Model]:
    from tflm_patch.cli import resolve_model_arg
    from tflm_patch.model import load_model

    path = resolve_model_arg(arg)
    return path, load_model(path)


def _fmt(n: int) -> str:
    return f"{n:,}"


def _print_plan(model: Model, result: Any, top: int) -> None:
    from tflm_patch.stage import build_stage

    r = result
    print(f"unpatched: predicted TFLM arena {_fmt(r.arena_before)} B ({r.request.target}), "
          f"{_fmt(r.macs_before)} MACs; {len(r.candidates)} plans evaluated in "
          f"{r.seconds:.1f} s")
    c = r.chosen
    if c is None:
        print(f"no plan: {r.message}")
    else:
        graph = build_stage(model, c.first, c.last)
        print(f"chosen ({r.message}):")
        print(f"  stage  {graph.describe(model)}, {len(graph.layers)} layers")
        print(f"  grid   {c.grid[0]}x{c.grid[1]} patches, scratch {_fmt(c.scratch_bytes)} B")
        for a, b, (n, m) in c.extra:
            more = build_stage(model, a, b)
            print(f"  + stage {more.describe(model)}, {len(more.layers)} layers, grid {n}x{m}")
        if c.fused:
            print(f"  fused  {len(c.fused)} more PATCH_EXECs (1x1 grid) on the other "
                  f"convolutions: PADs folded, requantization data in flash")
        print(f"  arena  {_fmt(r.arena_before)} -> {_fmt(c.arena)} B "
              f"({r.arena_before / c.arena:.2f}x smaller)")
        print(f"  MACs   {_fmt(r.macs_before)} -> {_fmt(c.macs)} "
              f"(+{r.overhead(c):.1%}; the stage {c.stage_macs / c.stage_macs_before - 1:+.1%})")
    front = r.pareto()
    print(f"Pareto front (arena vs MACs), {min(top, len(front))} of {len(front)}:")
    print(f"  {'stage':<14} {'grid':>6} {'more':>4} {'fused':>5} {'arena B':>12} {'x smaller':>9} "
          f"{'MAC +':>8} {'scratch B':>11}")
    for p in front[:top]:
        mark = "  <- chosen" if p == c else ""
        print(f"  {f'ops {p.first}..{p.last}':<14} {f'{p.grid[0]}x{p.grid[1]}':>6} "
              f"{len(p.extra):>4} {len(p.fused):>5} {_fmt(p.arena):>12} "
              f"{r.arena_before / p.arena:>9.2f} {r.overhead(p):>8.1%} "
              f"{_fmt(p.scratch_bytes):>11}{mark}")


def _memory_per_op(model: Model, result: Any, patched_obj: Any
                   ) -> tuple[list[int], list[int]]:
    from tflm_patch import patch_format as pf
    from tflm_patch.analysis import analyze
    from tflm_patch.evaluate import patched_op_index
    from tflm_patch.model import model_from_object
    from tflm_patch.rewrite import CUSTOM_CODE

    before = [s.live_bytes for s in analyze(model).ops]
    c = result.chosen
    if c is None:
        return before, list(before)
    pm = model_from_object(patched_obj)
    live = [s.live_bytes for s in analyze(pm).ops]
    for op in pm.operators:  # + each PATCH_EXEC's scratch buffer
        if op.name == CUSTOM_CODE:
            live[op.index] += pf.decode(op.custom_options or b"").scratch_bytes
    return before, [live[j] for j in patched_op_index(len(before), c.ranges)]


def _plot(model: Model, path: Path, result: Any, out: str, budget: int | None,
          patched_obj: Any = None) -> None:
    """`patched_obj`: the rewritten ModelT when the caller has it (else rewritten here)."""
    from tflm_patch.planner import patched_model_object
    from tflm_patch.plot import ArenaLine, plot_before_after

    if patched_obj is None and result.chosen is not None:
        patched_obj = patched_model_object(model, result)
    before, after = _memory_per_op(model, result, patched_obj)
    c = result.chosen
    lines = [ArenaLine(f"TFLM arena, unpatched (predicted) {result.arena_before / 1024:,.0f} "
                       "KiB", result.arena_before, color="tab:gray")]
    stage = (0, -1)
    if c is not None:
        lines.append(ArenaLine(f"TFLM arena, patched (predicted) {c.arena / 1024:,.0f} KiB",
                               c.arena))
        stage = (c.first, c.last)
    title = (f"{path.name}: memory per operator, layer by layer vs patched"
             + (f" (grid {c.grid[0]}x{c.grid[1]})" if c else " (no plan)"))
    plot_before_after(before, after, [op.name for op in model.operators], out, title=title,
                      stage=stage, lines=lines, budget=budget,
                      more_stages=[(a, b) for a, b, _ in c.extra] if c else ())
    log.info("wrote plot %s", out)


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from tflm_patch.planner import plan

    path, model = _load(args.model)
    result = plan(model, _request(args), progress=_progress)
    if args.json:
        doc = {"model": str(path), "arena_before": result.arena_before,
               "macs_before": result.macs_before, "message": result.message,
               "chosen": result.to_json(result.chosen) if result.chosen else None,
               "pareto": [result.to_json(c) for c in result.pareto()]}
        print(json.dumps(doc, indent=2))
    else:
        _print_plan(model, result, args.top)
    if args.plot:
        _plot(model, path, result, args.plot, args.budget)
    return 0


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory, then rename: never a partial
    file; with the permissions a plain open() would give (umask applied), not mkstemp's
    0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                               dir=path.parent if str(path.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_convert(args: argparse.Namespace) -> int:
    import time

    from tflm_patch.planner import PlanError, patched_model_object, plan
    from tflm_patch.rewrite import to_checked_bytes

    start = time.perf_counter()
    out = Path(args.output)
    if not out.parent.is_dir():
        raise TflmPatchError(f"{out.parent}: the output directory does not exist")
    path, model = _load(args.model)
    request = _request(args)
    result = plan(model, request, progress=_progress)
    forced = request.split_op is not None or request.grid is not None
    if result.chosen is None:
        if forced:
            raise PlanError(f"the requested plan is not used: {result.message}")
        write_atomic(out, model.raw)
        print(f"{path.name}: left unchanged ({result.message}); copied to {out}")
        return 0
    patched_obj = patched_model_object(model, result)
    data = to_checked_bytes(patched_obj)
    write_atomic(out, data)
    c = result.chosen
    print(f"{path.name} -> {out}: {c.label} -> PATCH_EXEC; predicted arena "
          f"{_fmt(result.arena_before)} -> "
          f"{_fmt(c.arena)} B ({result.arena_before / c.arena:.2f}x), MACs "
          f"+{result.overhead(c):.1%}; {len(model.raw):,} -> {len(data):,} file bytes; "
          f"{time.perf_counter() - start:.1f} s")
    if args.plot:
        _plot(model, path, result, args.plot, args.budget, patched_obj)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from tflm_patch.cli import resolve_model_arg
    from tflm_patch.validate import (
        compare,
        default_executor,
        load_input,
        load_pair,
        random_inputs,
    )

    original, patched = load_pair(resolve_model_arg(args.original),
                                  resolve_model_arg(args.patched))
    cases = []
    for f in args.input or []:
        cases.append((Path(f).name, load_input(original, f)))
    n_random = args.random if args.random is not None else (0 if cases else 3)
    for k in range(n_random):
        cases.append((f"random seed {args.seed + k}", random_inputs(original, args.seed + k)))
    if not cases:
        raise TflmPatchError("nothing to validate: give --input FILE or --random N (N >= 1)")
    executor = default_executor()
    print(f"original: x86 TFLM; patched: {executor.description}")
    failures = 0
    for label, inputs in cases:
        c = compare(original, patched, inputs, label, executor)
        verdict = "bit-identical" if c.identical else "MISMATCH"
        failures += not c.identical
        shown = ", ".join(str(a.ravel()[:8].tolist()) for a in c.patched)
        print(f"  {label:<20} {verdict:<13} max |diff| {c.max_abs_diff:<4} outputs {shown}")
    print(f"verdict: {'PASS' if not failures else 'FAIL'} ({len(cases) - failures}/{len(cases)}"
          " inputs bit-identical)")
    return 1 if failures else 0


def _plan_options(p: argparse.ArgumentParser) -> None:
    from tflm_patch.cli import parse_size
    from tflm_patch.planner import DEFAULT_MAX_GRID

    p.add_argument("--budget", type=parse_size, metavar="SIZE",
                   help="arena budget (e.g. 256KiB): choose the fewest MACs that fit")
    p.add_argument("--max-overhead", type=parse_fraction, default=0.20, metavar="FRACTION",
                   help="without --budget: the smallest arena whose extra MACs (whole "
                   "model) stay within this (default 20%%)")
    p.add_argument("--min-saving", type=parse_fraction, default=0.10, metavar="FRACTION",
                   help="without --budget: leave the model alone unless the arena shrinks by "
                   "at least this much (default 10%%)")
    p.add_argument("--split-op", type=int, metavar="K",
                   help="force the stage to end at operator K (its output is the stage output)")
    p.add_argument("--grid", type=parse_grid, metavar="NxM",
                   help="force an N (rows) x M (columns) patch grid")
    p.add_argument("--max-grid", type=int, default=DEFAULT_MAX_GRID, metavar="N",
                   help=f"largest grid rows/columns searched (default {DEFAULT_MAX_GRID})")
    p.add_argument("--target", choices=("x86_64", "cortex_m"), default="x86_64",
                   help="whose TFLM arena to predict (default x86_64, the build validate "
                   "runs; cortex_m: 32-bit struct layouts)")
    p.add_argument("--single-stage", action="store_true",
                   help="patch one stage only (MCUNetV2-style); by default the convolutions "
                   "after it also become fused 1x1-grid PATCH_EXECs when that lowers the arena "
                   "(their PADs folded, their requantization data in flash)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write memory per operator before/after (MCUNetV2 Figure 1 style)")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="choose the stage and patch grid; print the plan and the Pareto front",
        description="Search every stage PATCH_EXEC can replace and every patch grid; predict "
        "the whole patched model's TFLM arena and MACs; print the chosen plan and the "
        "arena/MAC Pareto front. Nothing is written (see convert).")
    p.add_argument("model", help="an int8 .tflite, or zoo:NAME")
    _plan_options(p)
    p.add_argument("--top", type=int, default=12, help="Pareto rows to print (default 12)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    c = sub.add_parser(
        "convert", help="rewrite the memory-heavy stage into one PATCH_EXEC operator",
        description="Plan (as `plan`) and write the patched model: the stage becomes one "
        "PATCH_EXEC custom operator, every other operator is untouched, the plan is stored "
        "in metadata 'tflm_patch.plan'. The file is verified before it is written; on any "
        "error nothing is written. When no plan makes the arena smaller, the model is "
        "copied unchanged (and the reason printed).")
    c.add_argument("model", help="an int8 .tflite, or zoo:NAME")
    c.add_argument("-o", "--output", required=True, help="the patched .tflite to write")
    _plan_options(c)
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser(
        "validate", help="run original and patched model; compare every output byte",
        description="Run ORIGINAL on x86 TFLM and PATCHED whole in x86 TFLM with the C++ "
        "PATCH_EXEC kernel (when the TFLM headers are configured, see DEVELOPERS.md), else "
        "split at its PATCH_EXEC operators (TFLM for the rest, the numpy reference for "
        "PATCH_EXEC); say which ran; print a verdict and the max abs difference per input. "
        "Exit code 1 on any mismatch.")
    v.add_argument("original", help="the original .tflite, or zoo:NAME")
    v.add_argument("patched", help="the patched .tflite (from convert)")
    v.add_argument("--input", action="append", metavar="FILE",
                   help="an input: .npy or an 8-bit image (repeatable)")
    v.add_argument("--random", type=int, metavar="N",
                   help="N seeded random int8 inputs (default 3 when no --input)")
    v.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    v.set_defaults(func=cmd_validate)

"""`tflm-patch plan`, `convert` and `validate`: thin commands over planner, rewrite and
validate."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tflm_patch.cli_output import CONSOLE
from tflm_patch.errors import TflmPatchError, UnsupportedModelError
from tflm_patch.io_checks import check_output_file, check_plot_file, shown
from tflm_patch.model import Model
from tflm_patch.stage import stage_stops

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
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if v < 0:
        raise argparse.ArgumentTypeError("a limit cannot be negative")
    return v


def _int_in(text: str, lo: int, hi: int, what: str) -> int:
    try:
        v = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected a whole number, got "
                                         f"{text!r}") from None
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"{what} must be in {lo}..{hi}, got {v}")
    return v


MAX_SEED = (1 << 63) - 1


def parse_seed(text: str) -> int:
    """A random seed: 0 .. 2^63 - 1."""
    return _int_in(text, 0, MAX_SEED, "a seed")


def parse_count(text: str) -> int:
    """A count of random inputs: 0 .. 10000."""
    return _int_in(text, 0, 10_000, "the number of random inputs")


def parse_op_index(text: str) -> int:
    return _int_in(text, 0, (1 << 31) - 1, "an operator index")


def parse_max_grid(text: str) -> int:
    return _int_in(text, 1, 64, "the largest grid side")


def parse_jobs(text: str) -> int:
    return _int_in(text, 1, 256, "the number of planning processes")


def parse_top(text: str) -> int:
    return _int_in(text, 1, 1_000_000, "the number of rows")


def _request(args: argparse.Namespace) -> Any:
    from tflm_patch.planner import PlanRequest

    return PlanRequest(budget=args.budget, max_overhead=args.max_overhead,
                       split_op=args.split_op, grid=args.grid, max_grid=args.max_grid,
                       target=args.target, min_saving=args.min_saving,
                       multi_stage=not args.single_stage, objective=args.objective,
                       max_latency=args.max_latency, jobs=args.jobs)


def _int8_io(args: argparse.Namespace, model: Model) -> tuple[Any, Any]:
    """--int8-io: the model to plan (its interface stripped) and the request (a --split-op
    index mapped onto the stripped model); int8_io.Prepared and planner.PlanRequest."""
    from dataclasses import replace

    from tflm_patch.dilate import fold_model
    from tflm_patch.int8_io import map_split_op, prepare

    prepared = prepare(fold_model(model), getattr(args, "int8_io", False))
    request = _request(args)
    return prepared, replace(request, split_op=map_split_op(prepared, request.split_op))


def _io_lines(prepared: Any, result: Any, request: Any
              ) -> tuple[list[str], dict[str, Any]]:
    """What --int8-io did (one line), or without it the hint (one line, when the float
    I/O tensors are a large share of the arena); and the same for --json."""
    from tflm_patch.int8_io import hint, note

    line = note(prepared)
    if line is not None:
        return [line], {"int8_io": True, "interface": prepared.interface}
    h = hint(prepared.model, result, request)
    return ([h.line] if h else []), {"int8_io": False, "hint": h.to_json() if h else None}


def _progress(done: int, total: int) -> None:
    if total and (done == total or done % 10 == 0):
        log.info("planning: %d/%d stages evaluated", done, total)


def _plan(model: Model, request: Any) -> Any:
    """planner.plan with a progress bar on a terminal (and the -v log lines)."""
    from tflm_patch.planner import plan

    with CONSOLE.progress("planning", unit="stage") as bar:
        def progress(done: int, total: int) -> None:
            bar(done, total)
            _progress(done, total)

        return plan(model, request, progress=progress)


def _load(arg: str) -> tuple[Path, Model]:
    from tflm_patch.cli_args import load_checked

    return load_checked(arg)


def _why_no_stage(model: Model, result: Any) -> str:
    """When no stage was found at all: '; ' + why the first candidate operator cannot be
    patched (e.g. a stride beyond PATCH_EXEC's 16-bit fields)."""
    from tflm_patch.stage import STAGE_OPS, op_support

    if result.candidates:
        return ""
    for op in model.operators:
        if op.name in STAGE_OPS:
            ok, reason = op_support(model, op)
            if not ok:
                return f"; {reason}"
    return ""


def _require_patchable(model: Model) -> None:
    """An int16 (16x8) or otherwise non-int8 model is refused with the reason, rather
    than "left unchanged"."""
    from tflm_patch.model import require_int8
    from tflm_patch.stage import activation_type_reason

    require_int8(model)  # a float model: says how to quantize it
    reason = activation_type_reason(model)
    if reason:
        raise UnsupportedModelError(reason)


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
        print(f"  M4     {_fmt(r.instructions_before)} -> {_fmt(r.instructions(c))} "
              f"instructions per Invoke, estimated ({r.latency_ratio(c):.2f}x)")
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


def _plan_json(path: Path, result: Any) -> dict[str, Any]:
    return {"model": shown(path), "arena_before": result.arena_before,
            "macs_before": result.macs_before, "message": result.message,
            "chosen": result.to_json(result.chosen) if result.chosen else None,
            "pareto": [result.to_json(c) for c in result.pareto()]}


def cmd_plan(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_file(args.plot)
    path, model = _load(args.model)
    _require_patchable(model)
    prepared, request = _int8_io(args, model)
    model = prepared.model
    result = _plan(model, request)
    io_lines, io_json = _io_lines(prepared, result, request)
    stops = stage_stops(model)
    if CONSOLE.json:
        CONSOLE.emit_json({**_plan_json(path, result), **io_json,
                           "stage_stops": [s.to_json() for s in stops]})
    elif not CONSOLE.quiet:
        _print_plan(model, result, args.top)
        for stop in stops:
            print(stop.line())
        if _why_no_stage(model, result):
            print(f"why: {_why_no_stage(model, result)[2:]}")
        for line in io_lines:
            print(line)
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

    from tflm_patch.cli_args import load_checked, resolve_model_arg
    from tflm_patch.int8_io import record
    from tflm_patch.planner import PlanError, patched_model_object
    from tflm_patch.rewrite import to_checked_bytes

    start = time.perf_counter()
    _check_outputs(args, [])  # before any work, even building a zoo model
    path = resolve_model_arg(args.model)
    out = _check_outputs(args, [path])  # never the input itself
    path, model = load_checked(path)
    _require_patchable(model)
    given = model.raw
    prepared, request = _int8_io(args, model)
    model = prepared.model
    result = _plan(model, request)
    io_lines, io_json = _io_lines(prepared, result, request)
    stops = stage_stops(model)
    for stop in stops:
        CONSOLE.detail(stop.line())
    io_json = {**io_json, "stage_stops": [s.to_json() for s in stops]}
    forced = request.split_op is not None or request.grid is not None
    if result.chosen is None:
        if forced:
            raise PlanError(f"the requested plan is not used: {result.message}")
        write_atomic(out, model.raw)
        stripped = prepared.strip is not None and prepared.strip.changed
        changed = model.raw != given  # the interface stripped or dilated convs folded
        what = "the int8 I/O model" if stripped else "the model with dilated convs folded"
        if CONSOLE.json:
            CONSOLE.emit_json({**_plan_json(path, result), "output": shown(out),
                               "changed": changed, "file_bytes": len(model.raw), **io_json})
        for line in io_lines:
            CONSOLE.say(line)
        CONSOLE.say(f"{shown(path.name)}: {'no PATCH_EXEC' if changed else 'left unchanged'} "
                    f"({result.message}{_why_no_stage(model, result)}); "
                    f"{'wrote ' + what if changed else 'copied'} to {shown(out)}")
        return 0
    patched_obj = patched_model_object(model, result)
    record(patched_obj, prepared)
    data = to_checked_bytes(patched_obj)
    if args.plot:  # drawn first: a plot that fails leaves no model behind
        _plot(model, path, result, args.plot, args.budget, patched_obj)
    write_atomic(out, data)
    c = result.chosen
    if CONSOLE.json:
        CONSOLE.emit_json({**_plan_json(path, result), "output": shown(out), "changed": True,
                           "file_bytes": len(data), "seconds": time.perf_counter() - start,
                           **io_json})
        return 0
    if prepared.strip is not None:
        CONSOLE.say(io_lines[0])
    CONSOLE.say(f"{shown(path.name)} -> {shown(out)}: {c.label} -> PATCH_EXEC; predicted "
                f"arena {_fmt(result.arena_before)} -> "
                f"{_fmt(c.arena)} B ({result.arena_before / c.arena:.2f}x), MACs "
                f"+{result.overhead(c):.1%}, estimated Cortex-M4 instructions "
                f"{result.latency_ratio(c):.2f}x; {len(model.raw):,} -> {len(data):,} file "
                f"bytes; {time.perf_counter() - start:.1f} s")
    if prepared.strip is None:
        for line in io_lines:
            CONSOLE.say(line)
    return 0


def _check_outputs(args: argparse.Namespace, inputs: list[Path]) -> Path:
    """-o and --plot: safe new or regular files, not an input, not each other."""
    out = check_output_file(args.output, inputs, "-o")
    if args.plot:
        plot = check_plot_file(args.plot, inputs)
        if plot.resolve() == out.resolve():
            raise TflmPatchError(f"--plot {shown(plot)} is the -o file")
    return out


def _validate_cases(args: argparse.Namespace, original: Model) -> list[tuple[str, Any]]:
    from tflm_patch.validate import load_input, random_inputs

    cases = [(shown(Path(f).name), load_input(original, f)) for f in args.input or []]
    n_random = args.random if args.random is not None else (0 if cases else 3)
    if args.seed + n_random - 1 > MAX_SEED:
        raise TflmPatchError(f"--seed {args.seed} with {n_random} random inputs goes past the "
                             f"largest seed {MAX_SEED}")
    for k in range(n_random):
        cases.append((f"random seed {args.seed + k}", random_inputs(original, args.seed + k)))
    if not cases:
        raise TflmPatchError("nothing to validate: give --input FILE or --random N (N >= 1)")
    return cases


def cmd_validate(args: argparse.Namespace) -> int:
    from tflm_patch.cli_args import load_checked
    from tflm_patch.validate import (
        compare,
        default_executor,
        matched_original,
        pair_checked,
        stripped_inputs,
    )

    given = load_checked(args.original)[1]
    patched = load_checked(args.patched)[1]
    if any(op.name == "PATCH_EXEC" for op in given.operators):
        raise TflmPatchError(f"{shown(args.original)} has PATCH_EXEC operators: give the "
                             "original (unpatched) model first, then the patched one")
    original, stripped = matched_original(given, patched)
    pair_checked(original, patched)
    cases = _validate_cases(args, given)
    if stripped:
        CONSOLE.say(stripped)
        cases = [(label, stripped_inputs(given, original, arrays)) for label, arrays in cases]
    executor = default_executor()
    CONSOLE.detail(f"original: x86 TFLM; patched: {executor.description}")
    results: list[Any] = []
    with CONSOLE.progress("validating", unit="input") as bar:
        for label, inputs in cases:
            bar(len(results), len(cases))
            results.append(compare(original, patched, inputs, label, executor))
    for c in results:
        line = (f"  {c.label:<20} {'bit-identical' if c.identical else 'MISMATCH':<13} "
                f"max |diff| {c.max_abs_diff:<4} outputs "
                + ", ".join(str(a.ravel()[:8].tolist()) for a in c.patched))
        (CONSOLE.detail if c.identical else CONSOLE.say)(line)
    failures = sum(not c.identical for c in results)
    if CONSOLE.json:
        CONSOLE.emit_json({"patched_ran": executor.description, "pass": not failures,
                           "original_interface_stripped": stripped is not None,
                           "cases": [{"label": c.label, "identical": c.identical,
                                      "max_abs_diff": c.max_abs_diff,
                                      "outputs": len(c.patched)} for c in results]})
    CONSOLE.say(f"verdict: {'PASS' if not failures else 'FAIL'} ({len(cases) - failures}/"
                f"{len(cases)} inputs bit-identical, {len(original.outputs)} output(s) each; "
                f"patched: {executor.description})")
    return 1 if failures else 0


def _plan_options(p: argparse.ArgumentParser) -> None:
    from tflm_patch.cli_args import parse_size
    from tflm_patch.parallel import JOBS_ENV, MAX_DEFAULT_JOBS
    from tflm_patch.planner import DEFAULT_MAX_GRID, DEFAULT_MAX_LATENCY, OBJECTIVES

    p.add_argument("--budget", type=parse_size, metavar="SIZE",
                   help="arena budget (e.g. 256KiB): choose the fewest MACs that fit")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency",
                   help="without --budget: latency (default) = the smallest arena whose "
                   "estimated Cortex-M4 instructions (TFLM + CMSIS-NN) stay within "
                   "--max-latency of the original's; memory = the smallest arena whose extra "
                   "MACs stay within --max-overhead")
    p.add_argument("--max-latency", type=parse_fraction, default=DEFAULT_MAX_LATENCY,
                   metavar="FRACTION",
                   help="latency objective: extra estimated Cortex-M4 instructions allowed "
                   f"(whole model; default {DEFAULT_MAX_LATENCY * 100:.0f}%%)")
    p.add_argument("--max-overhead", type=parse_fraction, default=None, metavar="FRACTION",
                   help="without --budget: extra MACs allowed (whole model; default 20%% "
                   "with --objective memory, no limit with latency unless given)")
    p.add_argument("--min-saving", type=parse_fraction, default=0.10, metavar="FRACTION",
                   help="without --budget: leave the model alone unless the arena shrinks by "
                   "at least this much (default 10%%)")
    p.add_argument("--split-op", type=parse_op_index, metavar="K",
                   help="force the stage to end at operator K (its output is the stage output)")
    p.add_argument("--grid", type=parse_grid, metavar="NxM",
                   help="force an N (rows) x M (columns) patch grid")
    p.add_argument("--max-grid", type=parse_max_grid, default=DEFAULT_MAX_GRID, metavar="N",
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
    p.add_argument("-j", "--jobs", type=parse_jobs, metavar="N",
                   help=f"planning processes (default ${JOBS_ENV}, else the CPUs this "
                   f"process may use, at most {MAX_DEFAULT_JOBS}); the plan is the same "
                   "with any number")
    p.add_argument("--int8-io", action="store_true",
                   help="first remove a float32 (or uint8) input QUANTIZE and output "
                   "DEQUANTIZE: the model takes and gives int8 (scale and zero point in the "
                   "plan metadata 'interface'; operator indices are the stripped model's)")


def add_parsers(sub: Any, common: Sequence[argparse.ArgumentParser]) -> None:
    """plan, convert and validate; `common`: the parents with -q/-v/--json."""
    p = sub.add_parser(
        "plan", parents=common,
        help="choose the stage and patch grid; print the plan and the Pareto front",
        description="Search every stage PATCH_EXEC can replace and every patch grid; predict "
        "the whole patched model's TFLM arena and MACs; print the chosen plan and the "
        "arena/MAC Pareto front. Nothing is written (see convert).")
    p.add_argument("model", help="an int8 .tflite, or zoo:NAME")
    _plan_options(p)
    p.add_argument("--top", type=parse_top, default=12,
                   help="Pareto rows to print (default 12)")
    p.set_defaults(func=cmd_plan)

    c = sub.add_parser(
        "convert", parents=common,
        help="rewrite the memory-heavy stage into one PATCH_EXEC operator",
        description="Plan (as `plan`) and write the patched model: the stage becomes one "
        "PATCH_EXEC custom operator, every other operator is untouched, the plan is stored "
        "in metadata 'tflm_patch.plan'. The file is verified before it is written; on any "
        "error nothing is written. When no plan makes the arena smaller, the model is "
        "copied unchanged (and the reason printed).")
    c.add_argument("model", help="an int8 .tflite, or zoo:NAME")
    c.add_argument("-o", "--output", required=True,
                   help="the patched .tflite to write: a new file or a regular file other than "
                   "MODEL (directories, FIFOs and devices are refused before any work)")
    _plan_options(c)
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser(
        "validate", parents=common,
        help="run original and patched model; compare every output byte",
        description="Run ORIGINAL on x86 TFLM and PATCHED whole in x86 TFLM with the C++ "
        "PATCH_EXEC kernel (when the TFLM headers are configured, see DEVELOPERS.md), else "
        "split at its PATCH_EXEC operators (TFLM for the rest, the numpy reference for "
        "PATCH_EXEC); say which ran; print a verdict and the max abs difference per input. "
        "Exit code 1 on any mismatch.")
    v.add_argument("original", help="the original .tflite, or zoo:NAME")
    v.add_argument("patched", help="the patched .tflite (from convert)")
    v.add_argument("--input", action="append", metavar="FILE",
                   help="an input: .npy of the model input's type, or an 8-bit image "
                   "(repeatable)")
    v.add_argument("--random", type=parse_count, metavar="N",
                   help="N seeded random inputs (default 3 when no --input): int8; float "
                   "inputs get dequantized random int8 values")
    v.add_argument("--seed", type=parse_seed, default=0,
                   help="first random seed (0 .. 2^63-1, default 0)")
    v.set_defaults(func=cmd_validate)

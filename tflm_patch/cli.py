"""The `tflm-patch` command line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, NoReturn

from tflm_patch.cli_args import human, load_checked, parse_size
from tflm_patch.cli_output import CONSOLE
from tflm_patch.errors import (
    TflmPatchError,
    UsageError,
)
from tflm_patch.io_checks import check_plot_file, shown

if TYPE_CHECKING:
    from tflm_patch.analysis import Analysis
    from tflm_patch.model import Model

log = logging.getLogger("tflm_patch")


# ----------------------------------------------------------------------------- analyze


@dataclass(frozen=True)
class ArenaFigures:
    predicted_head: int | None
    predicted_tail: int | None
    predicted_total: int | None
    prediction_error: str | None
    measured_total: int | None
    measured_head: int | None
    measured_tail: int | None
    measurement_error: str | None
    # PATCH_EXEC models: how PATCH_EXEC ran in the measurement, or why it could not run
    patch_exec: str | None = None


def _arena_figures(model: Model, measure: bool) -> ArenaFigures:
    from tflm_patch.arena import predict_arena

    ph = pt = ptot = None
    perr = None
    try:
        pred = predict_arena(model)
        ph, pt, ptot = pred.head.size, pred.tail.total, pred.total
        if pred.unpredicted:
            ph = pt = ptot = None
            perr = "; ".join(pred.unpredicted)
    except TflmPatchError as e:
        perr = str(e)
    mt = mh = mtl = None
    merr = patch_exec = None
    registerers: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    if measure and any(op.name == "PATCH_EXEC" for op in model.operators):
        from tflm_patch.tflm_build import kernel_or_reason
        from tflm_patch.validate import NUMPY_SPLIT, TFLM_KERNEL

        kernel, reason = kernel_or_reason()
        if kernel is not None:
            patch_exec = TFLM_KERNEL
            registerers, preload = (kernel.registerer,), (str(kernel.path),)
        else:
            patch_exec = (f"not measured: TFLM needs the C++ PATCH_EXEC kernel ({reason}); "
                          f"`validate` would use the {NUMPY_SPLIT}")
            measure = False
    if measure:
        from tflm_patch.tflm_runner import smallest_arena

        log.info("measuring the smallest arena on x86 TFLM (bisection in a child process)...")
        try:
            with CONSOLE.busy("measuring the TFLM arena"):
                meas = smallest_arena(model.raw, registerers=registerers, preload=preload)
            mt, mh, mtl = meas.smallest, meas.report.head, meas.report.tail
        except TflmPatchError as e:
            merr = str(e)
    return ArenaFigures(ph, pt, ptot, perr, mt, mh, mtl, merr, patch_exec)


def cmd_analyze(args: argparse.Namespace) -> int:
    from tflm_patch.analysis import analyze
    from tflm_patch.model import require_int8

    if args.plot:
        check_plot_file(args.plot)
    path, model = load_checked(args.model)
    require_int8(model)
    result = analyze(model)
    arena = _arena_figures(model, measure=not args.no_measure)

    if CONSOLE.json:
        doc = {
            "model": shown(path),
            "operators": [
                {
                    "index": s.index,
                    "op": s.name,
                    "output_shape": list(s.output_shape),
                    "input_bytes": s.input_bytes,
                    "output_bytes": s.output_bytes,
                    "in_out_bytes": s.in_out_bytes,
                    "live_bytes": s.live_bytes,
                    "weight_bytes": s.weight_bytes,
                    "macs": s.macs,
                }
                for s in result.ops
            ],
            "peak": {
                "op_index": result.peak_op,
                "op": result.peak.name,
                "bytes": result.peak_bytes,
                "tensors": [
                    {"index": t, "name": model.tensors[t].name,
                     "shape": list(model.tensors[t].shape), "bytes": model.tensors[t].nbytes}
                    for t in result.peak.live_tensors
                ],
            },
            "total_macs": result.total_macs,
            "arena": asdict(arena),
            "budget": args.budget,
        }
        CONSOLE.emit_json(doc)
    elif not CONSOLE.quiet:
        _print_analysis(model, result, arena, args.budget, shown(path))

    if args.plot:
        from tflm_patch.plot import ArenaLine, plot_memory

        lines = []
        if arena.measured_total is not None:
            lines.append(ArenaLine(f"TFLM arena (measured) {human(arena.measured_total)}",
                                   arena.measured_total))
        elif arena.predicted_total is not None:
            lines.append(ArenaLine(f"TFLM arena (predicted) {human(arena.predicted_total)}",
                                   arena.predicted_total))
        plot_memory(result, args.plot, title=f"{path.name}: activation memory per operator "
                    "(layer-by-layer)", budget=args.budget, lines=lines)
        log.info("wrote plot %s", args.plot)
    if arena.measurement_error:
        print(f"error: TFLM measurement failed: {_one_line(arena.measurement_error)}",
              file=sys.stderr)
        return 1
    return 0


def _print_analysis(model: Model, result: Analysis, arena: ArenaFigures, budget: int | None,
                    name: str) -> None:
    print(f"model: {name}  ({len(model.operators)} operators, {len(model.tensors)} tensors, "
          f"{result.total_macs:,} MACs)")
    print(f"{'#':>4}  {'op':<18} {'output shape':<20} {'in+out':>11} {'alive':>11} {'MACs':>13}")
    for s in result.ops:
        mark = " <- peak" if s.index == result.peak_op else ""
        if budget is not None and s.live_bytes > budget:
            mark += " (over budget)"
        shape = "x".join(str(d) for d in s.output_shape)
        print(f"{s.index:>4}  {s.name:<18} {shape:<20} {human(s.in_out_bytes):>11} "
              f"{human(s.live_bytes):>11} {s.macs:>13,}{mark}")
    peak = result.peak
    tensors = ", ".join(
        f"#{t} {_short_name(model.tensors[t].name)} {'x'.join(map(str, model.tensors[t].shape))}"
        f" ({human(model.tensors[t].nbytes)})"
        for t in peak.live_tensors
    )
    print(f"layer-by-layer peak: {human(result.peak_bytes)} ({result.peak_bytes:,} B) at op "
          f"#{peak.index} {peak.name}: {tensors}")
    if arena.predicted_total is not None:
        print(f"TFLM arena predicted: {arena.predicted_total:,} B = head {arena.predicted_head:,}"
              f" + tail {arena.predicted_tail:,}")
    else:
        print(f"TFLM arena predicted: unavailable ({arena.prediction_error})")
    if arena.measured_total is not None:
        print(f"TFLM arena measured:  {arena.measured_total:,} B = head {arena.measured_head:,}"
              f" + tail {arena.measured_tail:,}  (x86 TFLM, smallest arena that allocates and "
              f"invokes{'; ' + arena.patch_exec if arena.patch_exec else ''})")
    elif arena.patch_exec is not None and arena.measurement_error is None:
        print(f"TFLM arena measured:  {arena.patch_exec}")
    elif arena.measurement_error is None:
        print("TFLM arena measured:  skipped (--no-measure)")
    if budget is not None:
        need = arena.measured_total or arena.predicted_total or result.peak_bytes
        verdict = "fits" if need <= budget else "does NOT fit"
        print(f"budget {human(budget)}: the model {verdict} layer-by-layer ({human(need)})")


def _short_name(name: str, limit: int = 40) -> str:
    """Converter tensor names can be hundreds of characters: keep the last op's name."""
    name = name.split(";")[0]
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


# ----------------------------------------------------------------------------- zoo


def cmd_zoo(args: argparse.Namespace) -> int:
    from tflm_patch.zoo import ZOO, ensure_zoo

    if args.list:
        if CONSOLE.json:
            CONSOLE.emit_json({name: spec.description for name, spec in ZOO.items()})
        for name, spec in ZOO.items():
            CONSOLE.say(f"{name:<16} {spec.description}")
        return 0
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        raise UsageError(f"unknown zoo model {shown(unknown[0])!r}; choose from: "
                         f"{', '.join(ZOO)}")
    with CONSOLE.busy("building zoo models"):
        paths = ensure_zoo(args.names or None)
    if CONSOLE.json:
        CONSOLE.emit_json({name: str(path) for name, path in paths.items()})
    for name, path in paths.items():
        CONSOLE.say(f"{name:<16} {path}")
    return 0


# ----------------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(2)


def output_options(main_parser: bool = False) -> Parser:
    """-q/-v/--json, accepted before and after the command. The command's copies default
    to SUPPRESS so that they never reset what was given before the command."""
    p = Parser(add_help=False)
    flag: object = False if main_parser else argparse.SUPPRESS
    count: object = 0 if main_parser else argparse.SUPPRESS
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=flag,
                   help="print nothing but errors")
    g.add_argument("-v", "--verbose", action="count", default=count,
                   help="print details (-v: what each step does, -vv: debug)")
    p.add_argument("--json", action="store_true", default=flag,
                   help="print the result as JSON on stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tflm-patch",
        parents=[output_options(main_parser=True)],
        description="Patch-based inference (MCUNetV2) for TensorFlow Lite Micro int8 models: "
        "find where a model's SRAM goes (analyze), plan a patch schedule (plan), rewrite the "
        "memory-heavy stage into one PATCH_EXEC operator (convert) and check the result bit "
        "for bit (validate).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [output_options()]

    a = sub.add_parser(
        "analyze", parents=common,
        help="per-op memory and MACs, layer-by-layer peak, predicted vs measured TFLM arena",
        description="Analyze an int8 .tflite: a per-op table (output shape, input+output "
        "activation bytes, bytes alive while the op runs, MACs), the layer-by-layer peak, "
        "the TFLM arena predicted from TFLM's allocation rules and measured on the x86 "
        "TFLM interpreter (smallest arena, by bisection), and optionally a plot.",
    )
    a.add_argument("model", help="a .tflite file, or zoo:NAME for a model of the project's zoo")
    a.add_argument("--plot", metavar="FILE.png", help="write a memory-per-op bar chart")
    a.add_argument("--budget", type=parse_size, metavar="SIZE",
                   help="SRAM budget to check against, e.g. 256KiB (drawn on the plot)")
    a.add_argument("--no-measure", action="store_true",
                   help="skip the x86 TFLM measurement (prediction only, faster)")
    a.set_defaults(func=cmd_analyze)

    z = sub.add_parser("zoo", parents=common,
                       help="build (or list) the project's seeded int8 test models",
                       description="Build the project's seeded int8 test models with TensorFlow "
                       "(cached; rebuilt only when the generator changes).")
    z.add_argument("names", nargs="*", help="models to build (default: all)")
    z.add_argument("--list", action="store_true", help="list the models and what they test")
    z.set_defaults(func=cmd_zoo)

    from tflm_patch.cli_doctor import add_parser as add_doctor_parser
    from tflm_patch.cli_export import add_parser as add_export_parser
    from tflm_patch.cli_patch import add_parsers

    add_parsers(sub, common)
    add_export_parser(sub, common)
    add_doctor_parser(sub, common)
    return p


def _one_line(text: str) -> str:
    """An error message as one printable line (a multi-line message joined with ' | ')."""
    return shown(" | ".join(part.strip() for part in text.splitlines() if part.strip()))


def _tolerant_streams() -> None:
    """A file name that is not UTF-8 (surrogate escapes) prints escaped, never raises."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    CONSOLE.configure(quiet=bool(getattr(args, "quiet", False)),
                      verbose=int(getattr(args, "verbose", 0) or 0),
                      as_json=bool(getattr(args, "json", False)))
    return int(args.func(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; argv None: this process's command line (the `tflm-patch`
    program), which ends with the command."""
    _tolerant_streams()
    if argv is None:
        # the process ends with the command: reference counting frees what it drops, and
        # the cyclic collector would only walk the planner's many long-lived objects, while
        # it runs and at exit (frozen objects are left out of that last pass)
        gc.disable()
    try:
        return _run(argv)
    except TflmPatchError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tflm-patch plan ... | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (MemoryError, RecursionError) as e:
        print(f"error: out of memory or too deeply nested input ({type(e).__name__})",
              file=sys.stderr)
        return 3
    except Exception as e:  # a bug: still one line; -vv shows where
        log.debug("internal error", exc_info=True)
        print(f"error: internal error ({type(e).__name__}: {_one_line(str(e))}); run with -vv "
              "for details and report it", file=sys.stderr)
        return 3
    finally:
        if argv is None:
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())

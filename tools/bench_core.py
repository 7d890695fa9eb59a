#!/usr/bin/env python3
"""Speed of the PATCH_EXEC C++ core (release build) against x86 TFLM's reference kernels.

    python tools/bench_core.py [--repeats 7] [--shared DIR] [MODEL ...]

For each model (default: mobilenet_v2_int8_224_nchw and person_detect from ../shared, or
zoo:NAME) the planner's default plan is built; the core runs the PATCH_EXEC stage
(PatchExecRun only: buffers prepared once) and x86 TFLM runs the original operators of
the stage cut out as a model (Invoke only). Medians of `--repeats` runs; per-MAC times
use each side's own MACs (the patched stage recomputes halos: more MACs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tflm_patch.model import Model, load_model, model_from_object
from tflm_patch.native import load, model_constants
from tflm_patch.planner import PlanRequest, build_plan, plan
from tflm_patch.ref_params import run_graph
from tflm_patch.rewrite import CUSTOM_CODE, replace_stage
from tflm_patch.validate import segment_model
from tflm_patch.zoo import ensure_model

log = logging.getLogger("bench_core")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
DEFAULT_MODELS = ("mobilenet_v2_int8_224_nchw", "person_detect")


@dataclass(frozen=True)
class Row:
    name: str
    stage: str
    macs_before: int
    macs_after: int
    core_ms: float
    tflm_ms: float | None

    def line(self) -> str:
        core_ns = self.core_ms * 1e6 / self.macs_after
        tflm = "n/a" if self.tflm_ms is None else f"{self.tflm_ms:.2f}"
        tflm_ns = "n/a" if self.tflm_ms is None else f"{self.tflm_ms * 1e6 / self.macs_before:.3f}"
        ratio = "n/a" if self.tflm_ms is None else f"{self.core_ms / self.tflm_ms:.2f}"
        return (f"| {self.name} | {self.stage} | {self.macs_before / 1e6:.2f}M | "
                f"{self.macs_after / 1e6:.2f}M | {self.core_ms:.2f} | {core_ns:.3f} | {tflm} | "
                f"{tflm_ns} | {ratio} |")


def _median_seconds(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _tflm_seconds(model: Model, first: int, last: int, stage_in: int, stage_out: int,
                  x: np.ndarray, repeats: int) -> float | None:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None
    data = segment_model(model, list(range(first, last + 1)), [stage_in], [stage_out])
    with contextlib.redirect_stdout(io.StringIO()):
        interp = runtime.Interpreter.from_bytes(data, arena_size=64 << 20)

    def invoke() -> None:
        interp.set_input(x, 0)
        interp.invoke()

    return _median_seconds(invoke, repeats)


def bench(name: str, model: Model, repeats: int) -> Row:
    result = plan(model, PlanRequest())
    if result.chosen is None:
        raise SystemExit(f"{name}: no plan ({result.message})")
    c = result.chosen
    graph, sched = build_plan(model, c)
    patched = model_from_object(replace_stage(model, graph, sched))
    op = next(o for o in patched.operators if o.name == CUSTOM_CODE)
    x = np.random.default_rng(0).integers(-128, 128, model.tensors[model.inputs[0]].shape,
                                          dtype=np.int8)
    stage_x = run_graph(model, [x])[graph.input]
    lib = load("release")
    with lib.prepare(op.custom_options or b"", stage_x, model_constants(patched, op, lib)) as p:
        core = _median_seconds(p.run, repeats)
    tflm = _tflm_seconds(model, graph.first, graph.last, graph.input, graph.output, stage_x,
                         repeats)
    return Row(name, f"ops {c.first}..{c.last} grid {c.grid[0]}x{c.grid[1]}", graph.macs,
               sched.macs, core * 1e3, None if tflm is None else tflm * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for name in args.models:
        if name.startswith("zoo:"):
            model = load_model(ensure_model(name[4:]))
        else:
            path = args.shared / f"{name}.tflite"
            if not path.is_file():
                log.warning("%s: not found, skipped", path)
                continue
            model = load_model(path)
        rows.append(bench(name, model, args.repeats))
    out = ["| model | stage | MACs (orig) | MACs (patched) | core ms | core ns/MAC | "
           "TFLM ms | TFLM ns/MAC | core/TFLM time |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [r.line() for r in rows]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Predicted vs measured TFLM arena for every real and zoo model, as a markdown table.

    python tools/arena_table.py [--shared DIR] [--no-zoo] [MODEL.tflite ...]

For each model: the layer-by-layer peak, the arena predicted from TFLM's allocation
rules (head + tail), the smallest arena measured on the x86 TFLM interpreter by
bisection (with its RecordingMicroAllocator head/tail split), and the difference.
Exits non-zero if any prediction differs from its measurement.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tflm_patch.analysis import analyze
from tflm_patch.arena import predict_arena
from tflm_patch.model import load_model
from tflm_patch.tflm_runner import smallest_arena

log = logging.getLogger("arena_table")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"


@dataclass(frozen=True)
class Row:
    name: str
    ops: int
    peak: int
    predicted: int
    pred_head: int
    pred_tail: int
    meas_head: int
    meas_tail: int
    measured: int
    seconds: float


def measure(name: str, path: Path) -> Row:
    model = load_model(path)
    pred = predict_arena(model)
    start = time.perf_counter()
    meas = smallest_arena(model.raw)
    seconds = time.perf_counter() - start
    return Row(name, len(model.operators), analyze(model).peak_bytes, pred.total, pred.head.size,
               pred.tail.total, meas.report.head, meas.report.tail, meas.smallest, seconds)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| model | ops | layer-by-layer peak | predicted arena (head + tail) | measured smallest "
        "arena (head + tail) | difference | measure time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.ops} | {r.peak:,} | {r.predicted:,} ({r.pred_head:,} + "
            f"{r.pred_tail:,}) | {r.measured:,} ({r.meas_head:,} + {r.meas_tail:,}) | "
            f"{r.predicted - r.measured:+,} | {r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path, help="extra .tflite files")
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                   help="folder of real models (default: ../shared/models)")
    p.add_argument("--no-zoo", action="store_true", help="leave out the project's zoo")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    todo: list[tuple[str, Path]] = []
    if args.shared.is_dir():
        todo += [(f.stem, f) for f in sorted(args.shared.glob("*.tflite"))]
    else:
        log.warning("%s not found: real models left out", args.shared)
    if not args.no_zoo:
        from tflm_patch.zoo import ensure_zoo

        todo += [(f"zoo:{n}", f) for n, f in ensure_zoo().items()]
    todo += [(f.stem, f) for f in args.models]
    rows = []
    for i, (name, path) in enumerate(todo, 1):
        log.info("[%d/%d] %s", i, len(todo), name)
        rows.append(measure(name, path))
    print(markdown(rows))
    bad = [r.name for r in rows if r.predicted != r.measured]
    if bad:
        log.error("prediction differs from measurement for: %s", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Model-level fuzzer of PATCH_EXEC: crafted and mutated patched models in x86 TFLM with
the kernel built with ASan + UBSan, each model in its own process (the bounded run is
tests/test_model_fuzz.py; this is the long one).

Runs the crafted cases of tests/model_fuzz_cases.py (and the valid oddities, which must
run), then seeded mutations (tensor shapes, types, buffers, operator indices, variable
flags, options; a constant's buffer moved to the end of the file) in batches until
--seconds have passed, judges each against the numpy reference and prints how many
models ran and every outcome's count.
Models with a bad outcome (sanitizer report, signal, timeout, a difference from the
numpy reference, a disagreement about refusing) are written to --artifacts; the exit
status is 1 when there is any.

    python tools/fuzz_models.py --seconds 600 [--seed 1000] [--batch 100]
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"

log = logging.getLogger("fuzz_models")


def _save(verdict: Any, artifacts: Path, index: int) -> Path:
    """Write a bad case's model and what happened to it; the model's path."""
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"bad_{index:04d}.tflite"
    path.write_bytes(verdict.case.data)
    path.with_suffix(".txt").write_text(
        f"{verdict.case.name}\n{verdict.outcome}\n{verdict.detail}\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1000, help="first mutation seed")
    parser.add_argument("--batch", type=int, default=100, help="models per TFLM child")
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz_models_artifacts"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(TESTS))
    import model_fuzz_cases as mf

    from tflm_patch import tflm_build

    kernel = tflm_build.build_kernel(sanitize=True)
    inputs = mf.base_input()
    counts: collections.Counter[str] = collections.Counter()
    bad = 0
    start = time.monotonic()
    batch = [mf.Crafted("unmodified", mf.base_bytes()), *mf.crafted_cases().values(),
             *mf.valid_cases().values()]
    seed = args.seed
    while batch:
        for v in mf.run_cases(batch, kernel, inputs):
            counts[v.outcome] += 1
            if v.bad:
                bad += 1
                log.error("%s: %s: %s -> %s", v.case.name, v.outcome, v.detail,
                          _save(v, args.artifacts, bad))
        if time.monotonic() - start >= args.seconds:
            break
        batch = [c for c in (mf.mutated_case(s) for s in range(seed, seed + args.batch))
                 if c is not None]
        seed += args.batch
    total = sum(counts.values())
    log.info("%d models in %.0f s (mutation seeds %d..%d), %d bad", total,
             time.monotonic() - start, args.seed, seed - 1, bad)
    for outcome, n in counts.most_common():
        log.info("  %6d  %s", n, outcome)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

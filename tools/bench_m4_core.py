#!/usr/bin/env python3
"""Instructions of the PATCH_EXEC core per operator on an emulated Cortex-M4.

    python tools/bench_m4_core.py [PATCHED.tflite] [--save PATCHED.tflite] [--input X.bmp]

Builds the Cortex-M4 test program (tests/m4_harness/, the core at -Os as tools/m4.py
compiles it) for the consecutive PATCH_EXEC operators of a patched model, runs it on QEMU
mps2-an386 with `-icount shift=0` and prints, per operator, the MACs (the stage's
convolutions over whole tensors, and what the patch-by-patch run computes), the
instructions PatchExecRunArray executed (Timer0 ticks x 40) and instructions per MAC,
after checking every output's checksum against the numpy reference. Without a model:
person_detect with the memory-objective plan on person.bmp (m4.default_model);
`--save` keeps that patched model for later runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import m4

from tflm_patch.model import load_model
from tflm_patch.validate import load_input

log = logging.getLogger("bench_m4_core")


def harness_model(path: Path | None, image: Path | None) -> m4.HarnessModel:
    if path is None:
        return m4.default_model()
    model = load_model(path)
    first = model.operators[m4.chain_ops(model)[0]]
    if image is not None and first.inputs[0] == model.inputs[0]:
        return m4.HarnessModel(path.name, model, load_input(model, image)[0], image.name)
    return m4.seeded_model(path.name, model, first)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path, help="a patched .tflite")
    ap.add_argument("--input", type=Path, default=m4.SHARED_MODELS / "person.bmp")
    ap.add_argument("--save", type=Path, help="write the patched default model here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    reason = m4.toolchain_reason(qemu=True)
    if reason:
        log.error("%s", reason)
        return 2
    hm = harness_model(args.model, args.input if args.input.is_file() else None)
    if args.save is not None and args.model is None:
        args.save.write_bytes(hm.model.raw)
    cases = m4.make_cases(hm.model, hm.stage_input, m4.chain_ops(hm.model))
    with tempfile.TemporaryDirectory() as tmp:
        harness = m4.build_harness(hm.model, cases, Path(tmp), hm.label)
        run = m4.run_qemu(harness.elf)
    if run.checksums() != m4.expected_checksums(cases):
        log.error("checksums differ from the numpy reference:\n%s", run.output)
        return 1
    cal = run.calibration
    sys.stdout.write(f"{hm.label}, input {hm.input_origin}; counter check: a loop of "
                     f"{cal.expected if cal else '?'} instructions measured "
                     f"{cal.measured if cal else '?'}; deepest stack of a run "
                     f"{max(r.stack for r in run.results)} B\n")
    sys.stdout.write(m4.speed_table(m4.op_speeds(cases, run)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

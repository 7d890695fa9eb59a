"""Commands run in a child process, typically under ASan + UBSan (native_sanitize.py):

    python tools/native_child.py build [--variant asan]   # print the library path
    python tools/native_child.py job FILE                 # a pickled native_sanitize.NativeJob
    python tools/native_child.py canary                   # must end in a sanitizer report
    python tools/native_child.py fuzz [--seconds 60]      # native_fuzz.py
"""

from __future__ import annotations

import argparse
import logging
import pickle
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import native_fuzz
import numpy as np
from native_fuzz import random_constants, random_stage, random_stage_input
from native_sanitize import run_job

from tflm_patch import native
from tflm_patch import patch_format as pf
from tflm_patch.errors import TflmPatchError

log = logging.getLogger(__name__)


def canary() -> int:
    """A deliberate heap overflow through the real API: the output buffer is one byte
    shorter than the stage output (exit 0 only if nothing noticed)."""
    options = random_stage(random.Random(1))
    blob = pf.encode(options)
    lib = native.load("asan" if native.under_sanitizers() else "release")
    rng = np.random.default_rng(0)
    x = random_stage_input(options, rng)
    with lib.prepare(blob, x, random_constants(options, rng)) as prepared:
        short = native._Buffer(prepared._output.size - 1)
        lib.run_ptrs(prepared._blob, prepared._input, prepared._ptr_array, short,
                     prepared._scratch)
        short.free()
    return 0


def _job(path: Path) -> int:
    job = pickle.loads(path.read_bytes())
    failures = run_job(job)
    for f in failures:
        log.error("%s", f)
    log.info("%d validate and %d run cases, %d failures (%s)", len(job.validate),
             len(job.run), len(failures), job.variant)
    return 1 if failures else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/native_child.py",
                                description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a variant and print the library path")
    b.add_argument("--variant", default="release", choices=sorted(native.VARIANT_FLAGS))
    j = sub.add_parser("job", help="run a pickled NativeJob (used by the sanitizer tests)")
    j.add_argument("path", type=Path)
    sub.add_parser("canary", help="run the core with an output buffer one byte short: "
                   "under ASan this must end in a report (checks the sanitizer harness)")
    native_fuzz.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.cmd == "build":
            sys.stdout.write(f"{native.build(args.variant)}\n")
            return 0
        if args.cmd == "canary":
            return canary()
        if args.cmd == "job":
            return _job(args.path)
        return native_fuzz.main(args)
    except TflmPatchError as e:
        log.error("error: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())

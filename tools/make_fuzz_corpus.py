#!/usr/bin/env python3
"""Write the seed corpus of the options fuzzer, tests/fuzz_corpus/*.bin (small files):

- real blobs: PATCH_EXEC options of zoo stages (convert path: build_stage, make_schedule,
  replace_stage);
- synthetic stages of native_fuzz.random_stage (every layer kind, depth multipliers,
  dilations, asymmetric padding), seeded;
- the malformed blobs of tests/test_patch_format.py (BAD) applied to a real blob.

    python tools/make_fuzz_corpus.py [--out tests/fuzz_corpus]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.native_fuzz import DEFAULT_CORPUS, random_stage
from tflm_patch.rewrite import replace_stage
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ensure_model

TESTS = Path(__file__).resolve().parents[1] / "tests"
REAL = (("odd_stride2", 0, 3, (3, 2)), ("odd_stride2", 0, 4, (2, 2)),
        ("pools_dilated", 0, 7, (2, 2)), ("pools_dilated", 2, 5, (1, 2)),
        ("mcunet_dw57", 0, 5, (2, 3)), ("mbv2_035_144", 0, 9, (3, 3)),
        ("mbv1_025_96", 0, 3, (2, 2)))
SYNTHETIC = 12


def real_blob(name: str, first: int, last: int, grid: tuple[int, int]) -> bytes:
    model = load_model(ensure_model(name))
    graph = build_stage(model, first, last)
    obj = replace_stage(model, graph, make_schedule(graph, grid))
    op = next(o for o in obj.subgraphs[0].operators if o.customOptions is not None)
    return bytes(op.customOptions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, first, last, grid in REAL:
        files[f"real_{name}_{first}_{last}_{grid[0]}x{grid[1]}"] = real_blob(name, first, last,
                                                                             grid)
    for i in range(SYNTHETIC):
        files[f"synthetic_{i:02d}"] = pf.encode(random_stage(random.Random(i)))
    sys.path.insert(0, str(TESTS))
    from test_patch_format import BAD

    base = files["real_odd_stride2_0_3_3x2"]
    options = pf.decode(base)
    for case, (mutate, _) in sorted(BAD.items()):
        files[f"bad_{case.replace(' ', '_')}"] = mutate(options, bytearray(base))
    for old in args.out.glob("*.bin"):
        old.unlink()
    for stem, data in files.items():
        (args.out / f"{stem}.bin").write_bytes(data)
    total = sum(len(d) for d in files.values())
    sys.stdout.write(f"{len(files)} files, {total:,} bytes in {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

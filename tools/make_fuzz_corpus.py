#!/usr/bin/env python3
"""Write the seed corpus of the options fuzzer, tests/fuzz_corpus/*.bin (small files):

- real blobs: PATCH_EXEC options of zoo stages (convert path: build_stage, make_schedule,
  replace_stage), some of them as version 2 with INPUT_NCHW and every STREAM pair, and
  some converted with halo caches (make_schedule(cache=True): CACHES, CACHE_COLS);
- synthetic stages of native_fuzz.random_stage (every layer kind, depth multipliers,
  dilations, asymmetric padding; odd seeds version 2: INPUT_NCHW, STREAM, caches), seeded,
  and some with halo caches (synthetic_cached_*);
- the malformed blobs of tests/test_patch_format.py (BAD, BAD_V2) applied to its real
  blob as version 1 and version 2, and the malformed cache blobs of
  tests/test_halo_cache.py and tests/native_support.py (bad_v2_cache_*).

    python tools/make_fuzz_corpus.py [--out tests/fuzz_corpus]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from native_fuzz import DEFAULT_CORPUS, random_stage, with_version2

from tflm_patch import patch_format as pf
from tflm_patch.model import load_model
from tflm_patch.rewrite import replace_stage
from tflm_patch.schedule import make_schedule
from tflm_patch.stage import build_stage
from tflm_patch.zoo import ensure_model

TESTS = Path(__file__).resolve().parents[1] / "tests"
REAL = (("odd_stride2", 0, 3, (3, 2)), ("odd_stride2", 0, 4, (2, 2)),
        ("pools_dilated", 0, 7, (2, 2)), ("pools_dilated", 2, 5, (1, 2)),
        ("mcunet_dw57", 0, 5, (2, 3)), ("mbv2_035_144", 0, 9, (3, 3)),
        ("mbv1_025_96", 0, 3, (2, 2)))
REAL_V2 = ("real_odd_stride2_0_4_2x2", "real_mbv2_035_144_0_9_3x3", "real_mcunet_dw57_0_5_2x3")
REAL_CACHED = (("mbv2_035_144", 0, 9, (3, 3)), ("odd_stride2", 0, 4, (3, 3)),
               ("pools_dilated", 0, 7, (2, 3)), ("mcunet_dw57", 0, 5, (2, 3)),
               ("nchw_input", 0, 10, (2, 3)))
SYNTHETIC = 16
SYNTHETIC_CACHED = 8


def real_blob(name: str, first: int, last: int, grid: tuple[int, int],
              cache: bool = False) -> bytes:
    model = load_model(ensure_model(name))
    graph = build_stage(model, first, last)
    obj = replace_stage(model, graph, make_schedule(graph, grid, cache=cache), pack=False)
    op = next(o for o in obj.subgraphs[0].operators if o.customOptions is not None)
    return bytes(op.customOptions)


def _stem(case: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in case.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, first, last, grid in REAL:
        files[f"real_{name}_{first}_{last}_{grid[0]}x{grid[1]}"] = real_blob(name, first, last,
                                                                             grid)
    for stem in REAL_V2:
        v2 = with_version2(pf.decode(files[stem]), nchw=True, stream=True)
        files[f"{stem}_v2"] = pf.encode(v2)
    for name, first, last, grid in REAL_CACHED:
        blob = real_blob(name, first, last, grid, cache=True)
        assert pf.decode(blob).flags & pf.FLAG_CACHES
        files[f"real_{name}_{first}_{last}_{grid[0]}x{grid[1]}_cached"] = blob
    for i in range(SYNTHETIC):
        files[f"synthetic_{i:02d}"] = pf.encode(random_stage(random.Random(i),
                                                             version2=i % 2 == 1))
    seed = 1000
    for i in range(SYNTHETIC_CACHED):  # version 2 with halo caches
        o = random_stage(random.Random(seed), version2=True)
        while not any(t.cached for t in o.tensors):
            seed += 1
            o = random_stage(random.Random(seed), version2=True)
        files[f"synthetic_cached_{i:02d}"] = pf.encode(o)
        seed += 1
    sys.path.insert(0, str(TESTS))
    from test_patch_format import BAD, BAD_V2, base_options

    for version, cases in ((1, BAD), (2, BAD_V2)):
        options = base_options(version)
        base = pf.encode(options)
        for case, (mutate, _) in sorted(cases.items()):
            files[f"bad_{case.replace(' ', '_')}"] = mutate(options, bytearray(base))
    from native_support import CACHE_BAD_STATUS, cache_bad_blob, extra_cache_cases

    for case in sorted(CACHE_BAD_STATUS):
        files[f"bad_v2_cache_{_stem(case)}"] = cache_bad_blob(case)[0]
    for case, (blob, _, _) in sorted(extra_cache_cases().items()):
        files[f"bad_v2_cache_{_stem(case)}"] = blob
    for old in args.out.glob("*.bin"):
        old.unlink()
    for stem, data in files.items():
        (args.out / f"{stem}.bin").write_bytes(data)
    total = sum(len(d) for d in files.values())
    sys.stdout.write(f"{len(files)} files, {total:,} bytes in {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

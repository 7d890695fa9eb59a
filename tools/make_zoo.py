#!/usr/bin/env python3
"""Build the project's seeded full-int8 test models (cached; rebuilt when the generator changes).

    python tools/make_zoo.py [--out DIR] [--force] [NAME ...]

Prints one line per model: size, input shape, operator counts, build time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from tflm_patch.errors import TflmPatchError
from tflm_patch.model import load_model
from tflm_patch.zoo import ALL_NAMES, ZOO, ensure_zoo, read_stamp


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, ZOO))
    p = argparse.ArgumentParser(
        description="Build the seeded full-int8 test models of tflm-patch with TensorFlow "
        "(in a child process; cached, rebuilt only when missing or stale).",
        epilog="models:\n" + "\n".join(f"  {n:<{width}}  {s.description}" for n, s in ZOO.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="models to build (default: all)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="cache folder (default: $TFLM_PATCH_ZOO_DIR or ~/.cache/tflm_patch/zoo)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    return p


def describe(name: str, path: Path, out: Path | None) -> str:
    model = load_model(path)
    ops = Counter(op.name for op in model.operators)
    shape = "x".join(map(str, model.tensors[model.inputs[0]].shape))
    stamp = read_stamp(name, out)
    built = f"built in {stamp.build_seconds:.1f} s" if stamp else "no stamp"
    counts = ", ".join(f"{op} {n}" for op, n in ops.most_common())
    return f"{name:<14} {path.stat().st_size:>9,} B  input {shape:<13} {built:<16} {counts}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from: {', '.join(ZOO)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        paths = ensure_zoo(args.names or ALL_NAMES, force=args.force, directory=args.out)
    except TflmPatchError as e:
        print(f"make_zoo: error: {e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(describe(name, path, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

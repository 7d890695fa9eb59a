#!/usr/bin/env python3
"""Build the project's seeded int8 test models (cached; rebuilt when the generator changes).

    python tools/make_zoo.py [--out DIR] [--force] [NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main() -> int:
    from tflm_patch.zoo import ZOO, ensure_zoo

    p = argparse.ArgumentParser(
        description="Build the seeded full-int8 test models of tflm-patch with TensorFlow.",
        epilog="models: " + "; ".join(f"{n}: {s.description}" for n, s in ZOO.items()),
    )
    p.add_argument("names", nargs="*", choices=[[], *ZOO], metavar="NAME",
                   help="models to build (default: all)")
    p.add_argument("--out", type=Path, help="cache folder (default: $TFLM_PATCH_ZOO_DIR or "
                   "~/.cache/tflm_patch/zoo)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.out:
        os.environ["TFLM_PATCH_ZOO_DIR"] = str(args.out)
    for name, path in ensure_zoo(args.names or None, force=args.force).items():
        print(f"{name:<16} {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Keep the Arduino library's PATCH_EXEC sources identical to tflm_patch/csrc/.

The library (tflm_patch/arduino/tflm_patch/src/custom_ops/patch_exec/) holds
byte-identical copies of tflm_patch/csrc/custom_ops/patch_exec/: the portable core and the
TFLM glue, every .h and .cc file,
except the Python-wheel registerer (it needs the wheel's headers). A .cc file is copied
as .cpp: older Arduino IDEs compile only .c/.cpp/.S in a library. Paths are kept, so the
sources' includes ("custom_ops/patch_exec/...") resolve against the library's src/.

    python tools/sync_arduino.py          # check: list differences, exit 1 if any
    python tools/sync_arduino.py --write  # copy, and delete copies whose source is gone
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = Path("tflm_patch/csrc/custom_ops/patch_exec")
LIBRARY_DIR = Path("tflm_patch/arduino/tflm_patch/src/custom_ops/patch_exec")
EXCLUDED = frozenset({Path("tflm/python_registerer.cc")})  # needs the Python wheel's headers
SUFFIXES = (".h", ".cc")


@dataclass(frozen=True)
class Pair:
    source: Path  # relative to the repository root
    copy: Path


@dataclass(frozen=True)
class Difference:
    path: Path  # the copy, relative to the repository root
    problem: str  # "missing", "differs" or "stale"


def pairs(root: Path = REPO_ROOT) -> list[Pair]:
    """Every source file and the path of its copy in the library."""
    result = []
    for src in sorted((root / SOURCE_DIR).rglob("*")):
        rel = src.relative_to(root / SOURCE_DIR)
        if not src.is_file() or src.suffix not in SUFFIXES or rel in EXCLUDED:
            continue
        copy = rel.with_suffix(".cpp") if rel.suffix == ".cc" else rel
        result.append(Pair(SOURCE_DIR / rel, LIBRARY_DIR / copy))
    return result


def differences(root: Path = REPO_ROOT) -> list[Difference]:
    expected = pairs(root)
    wanted = {p.copy for p in expected}
    found = []
    for p in expected:
        copy = root / p.copy
        if not copy.is_file():
            found.append(Difference(p.copy, "missing"))
        elif copy.read_bytes() != (root / p.source).read_bytes():
            found.append(Difference(p.copy, "differs"))
    library = root / LIBRARY_DIR
    if library.is_dir():
        for f in sorted(library.rglob("*")):
            if f.is_file() and f.relative_to(root) not in wanted:
                found.append(Difference(f.relative_to(root), "stale"))
    return found


def write(root: Path = REPO_ROOT) -> list[Difference]:
    """Make the library match custom_ops/; returns what was changed."""
    changed = differences(root)
    by_copy = {p.copy: p for p in pairs(root)}
    for d in changed:
        if d.problem == "stale":
            (root / d.path).unlink()
            continue
        dest = root / d.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / by_copy[d.path].source, dest)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true",
                   help="copy csrc/ into the library instead of only checking")
    p.add_argument("--root", type=Path, default=REPO_ROOT,
                   help="repository root (default: this checkout)")
    args = p.parse_args(argv)
    if args.write:
        for d in write(args.root):
            print(f"{'deleted' if d.problem == 'stale' else 'copied'} {d.path}")
        return 0
    diffs = differences(args.root)
    for d in diffs:
        source = {"missing": "no copy of its source", "differs": "differs from its source",
                  "stale": "has no source in csrc/ any more"}[d.problem]
        print(f"{d.path}: {source}")
    if diffs:
        print(f"arduino/ and csrc/ differ ({len(diffs)} files): run "
              "python tools/sync_arduino.py --write", file=sys.stderr)
        return 1
    print(f"arduino/ library in sync with csrc/ ({len(pairs(args.root))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

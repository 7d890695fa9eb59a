#!/usr/bin/env python3
"""`tflm-patch convert` time against Vela's compile time, same files, in one run.

    python tools/bench_convert.py [-n RUNS] [--shared DIR] [--all] [--json]
                                  [--convert-args "--objective memory"] [MODEL ...]

Both are timed as whole processes (start-up, reading and writing the files included):
`tflm-patch convert MODEL -o OUT` and `vela --optimise Size MODEL --output-dir DIR`
(Arm's Ethos-U compiler, installed from the package index: `pip install ethos-u-vela`).
The runs are paired: each round runs Vela then convert on the same file, after one
warm-up round (which also compiles both programs' Python bytecode into a private cache:
installed packages ship it compiled); the table gives the median wall time of each,
the median of the per-round ratios convert/Vela, and the per-process CPU time (user +
sys). MODEL is a .tflite path
or zoo:NAME; by default person_detect and MobileNetV2-224 of ../shared/models, with
--all every shared model and every zoo model too. The header names the machine, its load,
the date and the versions: times on a shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("bench_convert")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
DEFAULT_MODELS = ("person_detect", "mobilenet_v2_int8_224_nchw")
ALL_SHARED = (*DEFAULT_MODELS, "micro_speech_quantized", "hello_world_int8")
VELA_INSTALL = "pip install ethos-u-vela"


class BenchError(Exception):
    """A tool is missing or a command failed."""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + sys of the child process


@dataclass(frozen=True)
class Row:
    model: str
    convert_wall: float  # medians, seconds
    vela_wall: float
    ratio: float  # median of the per-round ratios convert / Vela (wall)
    convert_cpu: float
    vela_cpu: float
    runs: int


def child_env(work: Path) -> dict[str, str]:
    """The environment of the timed processes: Python bytecode compiled once and reused
    (as an installed package has it), in a cache of its own (no files in the tree)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def run_timed(cmd: list[str], cwd: Path) -> Timing:
    """Wall and CPU seconds of one process; BenchError with its output when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(cwd), capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{shlex.join(cmd)} exited {proc.returncode}: {' / '.join(tail)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def vela_command() -> list[str]:
    exe = shutil.which("vela")
    if exe is None:
        raise BenchError(f"Vela is not installed: {VELA_INSTALL}")
    return [exe]


def convert_command() -> list[str]:
    exe = shutil.which("tflm-patch")
    return [exe] if exe else [sys.executable, "-m", "tflm_patch.cli"]


def version(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[-1] if proc.returncode == 0 \
        else "?"


def bench_model(name: str, path: Path, runs: int, convert_args: list[str], work: Path) -> Row:
    vela = [*vela_command(), "--optimise", "Size", str(path), "--output-dir",
            str(work / "vela")]
    convert = [*convert_command(), "convert", str(path), "-o", str(work / "patched.tflite"),
               *convert_args]
    pairs: list[tuple[Timing, Timing]] = []
    for round_ in range(runs + 1):  # round 0 warms the caches up and is not counted
        v = run_timed(vela, work)
        c = run_timed(convert, work)
        if round_:
            pairs.append((c, v))
        log.info("%s round %d: convert %.2f s, vela %.2f s", name, round_, c.wall, v.wall)
    med = statistics.median
    return Row(name, med(c.wall for c, _ in pairs), med(v.wall for _, v in pairs),
               med(c.wall / v.wall for c, v in pairs), med(c.cpu for c, _ in pairs),
               med(v.cpu for _, v in pairs), runs)


def resolve(spec: str, shared: Path) -> tuple[str, Path]:
    if spec.startswith("zoo:"):
        from tflm_patch.zoo import ensure_model

        return spec, ensure_model(spec[4:])
    path = Path(spec)
    if path.suffix != ".tflite":
        path = shared / f"{spec}.tflite"
    if not path.exists():
        raise BenchError(f"{path}: no such model")
    return path.stem, path


def model_list(args: argparse.Namespace) -> list[tuple[str, Path]]:
    specs = list(args.models) or list(ALL_SHARED if args.all else DEFAULT_MODELS)
    if args.all and not args.models:
        from tflm_patch.zoo import ZOO_NAMES

        specs += [f"zoo:{n}" for n in ZOO_NAMES]
    out = []
    for spec in specs:
        try:
            out.append(resolve(spec, args.shared))
        except BenchError as e:
            log.warning("%s: skipped", e)
    return out


def header(convert_args: list[str]) -> dict[str, str]:
    from tflm_patch import __version__

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} "
                       f"{platform.release()}, load average {load} at the start",
            "python": platform.python_version(),
            "tflm-patch": f"{__version__} (convert {shlex.join(convert_args) or 'defaults'})",
            "vela": version([*vela_command(), "--version"])}


def table(info: dict[str, str], rows: list[Row]) -> str:
    lines = [f"{k}: {v}" for k, v in info.items()]
    lines += ["", "| model | convert (s) | Vela (s) | convert / Vela | convert CPU (s) | "
              "Vela CPU (s) | runs |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.model} | {r.convert_wall:.2f} | {r.vela_wall:.2f} | {r.ratio:.2f}x | "
              f"{r.convert_cpu:.2f} | {r.vela_cpu:.2f} | {r.runs} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help="a .tflite path, a name in --shared, or zoo:NAME")
    ap.add_argument("-n", "--runs", type=int, default=5, help="counted rounds (default 5)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--all", action="store_true", help="every shared and zoo model")
    ap.add_argument("--convert-args", default="", help="more arguments for convert")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    convert_args = shlex.split(args.convert_args)
    try:
        info = header(convert_args)
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
            for name, path in model_list(args):
                rows.append(bench_model(name, path, args.runs, convert_args, Path(tmp)))
    except BenchError as e:
        print(f"bench_convert: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**info, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(table(info, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The x86 TFLM interpreter (tflite-micro wheel), always in a child process.

TFLM aborts the whole process on some degenerate quantizations (SIGABRT from
QuantizeMultiplierGreaterThanOne, for instance) and prints through C stdio. Every
call here therefore starts `python -m tflm_patch._tflm_child`, sends it a pickled
request and reads a pickled response; a signal exit, a timeout or an error status
becomes a `TflmRunError` with one clear line, including TFLM's last log line.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tflm_patch._tflm_child import HEADER, Request, Response
from tflm_patch.errors import TflmRunError

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class AllocationRecord:
    name: str
    used_bytes: int
    requested_bytes: int
    count: int


@dataclass(frozen=True)
class AllocationReport:
    total: int
    head: int
    tail: int
    records: tuple[AllocationRecord, ...]

    def record(self, name: str) -> AllocationRecord | None:
        return next((r for r in self.records if r.name == name), None)


@dataclass(frozen=True)
class ArenaMeasurement:
    smallest: int
    report: AllocationReport
    probes: int


def parse_report(text: str) -> AllocationReport:
    """Parse RecordingMicroAllocator::PrintAllocations() output."""
    total = head = tail = -1
    records = []
    for line in text.splitlines():
        if not line.startswith(HEADER):
            continue
        body = line[len(HEADER):].strip()
        if body.startswith("Arena allocation "):
            kind, value = body[len("Arena allocation "):].split()[:2]
            number = int(value)
            if kind == "total":
                total = number
            elif kind == "head":
                head = number
            elif kind == "tail":
                tail = number
        elif body.startswith("'"):
            name, rest = body[1:].split("'", 1)
            words = rest.replace("(", " ").replace(")", " ").split()
            used = int(words[words.index("used") + 1])
            requested = int(words[words.index("requested") + 1])
            count = int(words[words.index("for") + 1])
            records.append(AllocationRecord(name, used, requested, count))
    if min(total, head, tail) < 0:
        raise TflmRunError(f"cannot read TFLM's allocation report: {text.strip()[:200]!r}")
    return AllocationReport(total, head, tail, tuple(records))


def _last_log_line(stderr: str, stdout: str) -> str:
    lines = [ln.strip() for ln in (stdout + "\n" + stderr).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Number of resource variables", HEADER))]
    return lines[-1] if lines else "no log output"


def _call(req_kwargs: dict[str, Any], what: str, timeout: float) -> Response:
    with tempfile.TemporaryDirectory(prefix="tflm_patch_") as tmp:
        result_path = os.path.join(tmp, "response.pkl")
        req = Request(result_path=result_path, **req_kwargs)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", "from tflm_patch._tflm_child import main; main()"],
                input=pickle.dumps(req), capture_output=True, timeout=timeout, env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TflmRunError(f"TFLM did not finish {what} within {timeout:.0f} s") from None
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            raise TflmRunError(
                f"TFLM aborted ({sig}) while {what}: {_last_log_line(stderr, stdout)}")
        if proc.returncode != 0 or not os.path.exists(result_path):
            raise TflmRunError(
                f"TFLM child process failed (exit {proc.returncode}) while {what}: "
                f"{_last_log_line(stderr, stdout)}")
        with open(result_path, "rb") as f:
            resp: Response = pickle.load(f)
    if not resp.ok:
        detail = _last_log_line(stderr, "")
        raise TflmRunError(f"TFLM failed while {what}: {resp.error} ({detail})")
    return resp


def run_model(model: bytes, inputs: Sequence[np.ndarray], *, arena_size: int | None = None,
              registerers: Sequence[str] = (), preload: Sequence[str] = (),
              timeout: float = DEFAULT_TIMEOUT) -> list[np.ndarray]:
    """Invoke the model once on `inputs`; returns the output tensors."""
    resp = _call(dict(action="run", model=bytes(model), arena_size=arena_size,
                      inputs=[np.asarray(x) for x in inputs], registerers=list(registerers),
                      preload=list(preload)), "running the model", timeout)
    return resp.outputs


def run_all_tensors(model: bytes, inputs: Sequence[np.ndarray], *,
                    arena_size: int | None = None, registerers: Sequence[str] = (),
                    preload: Sequence[str] = (),
                    timeout: float = DEFAULT_TIMEOUT) -> dict[int, np.ndarray]:
    """Invoke with every tensor preserved (kPreserveAllTensors); tensor index -> value."""
    resp = _call(dict(action="run", model=bytes(model), arena_size=arena_size,
                      inputs=[np.asarray(x) for x in inputs], registerers=list(registerers),
                      preload=list(preload), preserve_all=True),
                 "running the model with all tensors preserved", timeout)
    return resp.tensors


def allocation_report(model: bytes, *, arena_size: int | None = None,
                      registerers: Sequence[str] = (), preload: Sequence[str] = (),
                      timeout: float = DEFAULT_TIMEOUT) -> AllocationReport:
    """RecordingMicroAllocator's report after AllocateTensors at `arena_size`."""
    resp = _call(dict(action="report", model=bytes(model), arena_size=arena_size,
                      registerers=list(registerers), preload=list(preload)),
                 "allocating tensors", timeout)
    return parse_report(resp.report_text)


def smallest_arena(model: bytes, *, granularity: int = 16, registerers: Sequence[str] = (),
                   preload: Sequence[str] = (), invoke: bool = True,
                   timeout: float = DEFAULT_TIMEOUT) -> ArenaMeasurement:
    """Smallest arena_size (a multiple of `granularity`) with which AllocateTensors (and
    one Invoke on zero inputs, if `invoke`) succeed; bisection inside one child process,
    started from the recording allocator's total as a hint and verified at hint - granularity.
    """
    if granularity <= 0:
        raise ValueError("granularity must be positive")
    resp = _call(dict(action="smallest", model=bytes(model), granularity=granularity,
                      registerers=list(registerers), preload=list(preload), invoke=invoke),
                 "measuring the smallest arena", timeout)
    log.debug("smallest arena %d after %d probes", resp.smallest, resp.probes)
    return ArenaMeasurement(resp.smallest, parse_report(resp.report_text), resp.probes)

"""The PATCH_EXEC C++ core under AddressSanitizer + UndefinedBehaviorSanitizer, in a child.

The asan variant of `tflm_patch.native` only loads in a process whose first library is the
ASan runtime: `run_sanitized` starts ``python tools/native_child.py ARGV`` with
`tflm_patch.native.sanitizer_env()` (LD_PRELOAD of libasan and libubsan, halt on the first
report). `run_job_sanitized` pickles a `NativeJob` (validate and run cases with expected
results) for the child's ``job`` command.
"""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tflm_patch import native
from tflm_patch.native import SANITIZER_REPORT_MARKS, NativeRunError, Status

CHILD = Path(__file__).resolve().with_name("native_child.py")


@dataclass(frozen=True)
class SanitizedRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> str | None:
        """The first sanitizer report line, or None."""
        for line in self.stderr.splitlines():
            if any(mark in line for mark in SANITIZER_REPORT_MARKS):
                return line.strip()
        return None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.report is None


def child_command(argv: Sequence[str]) -> list[str]:
    """The command line of a native_child.py child (it imports its siblings of tools/)."""
    return [sys.executable, str(CHILD), *argv]


def run_sanitized(argv: Sequence[str], timeout: float = 600.0) -> SanitizedRun:
    """Run ``python tools/native_child.py ARGV`` under ASan + UBSan."""
    native.build("asan")
    try:
        proc = subprocess.run(child_command(argv), capture_output=True, text=True,
                              timeout=timeout, env=native.sanitizer_env(), check=False)
    except subprocess.TimeoutExpired as e:
        raise NativeRunError(f"sanitized child {shlex.join(argv)} timed out after "
                             f"{timeout:.0f} s") from e
    return SanitizedRun(proc.returncode, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class ValidateCase:
    label: str
    blob: bytes
    status: int | None  # expected Status; None: any rejection


@dataclass(frozen=True)
class RunCase:
    label: str
    blob: bytes
    stage_input: np.ndarray
    constants: tuple[np.ndarray | None, ...]
    expect: np.ndarray


@dataclass(frozen=True)
class NativeJob:
    """Work for a child process (typically under sanitizers): every validate case must
    give its status, every run case its output."""

    variant: str
    validate: tuple[ValidateCase, ...] = ()
    run: tuple[RunCase, ...] = ()


def run_job(job: NativeJob) -> list[str]:
    """The failures of a job (empty when all cases pass)."""
    lib = native.load(job.variant)
    failures = []
    for v in job.validate:
        got = lib.validate(v.blob)
        if (v.status is None and got.ok) or (v.status is not None and got.status != v.status):
            failures.append(f"validate {v.label}: {got.status.name} ({got.message}), expected "
                            f"{'a rejection' if v.status is None else Status(v.status).name}")
    for r in job.run:
        out = lib.run(r.blob, r.stage_input, r.constants)
        if out.shape != r.expect.shape or not np.array_equal(out, r.expect):
            diff = np.abs(out.astype(int) - r.expect.astype(int)).max() \
                if out.shape == r.expect.shape else "shape"
            failures.append(f"run {r.label}: output differs (max |diff| {diff})")
    return failures


def run_job_sanitized(job: NativeJob, timeout: float = 600.0) -> SanitizedRun:
    """Pickle `job` to a temporary file and run it in a sanitized child."""
    with tempfile.TemporaryDirectory(prefix="tflm_patch_job_") as tmp:
        path = Path(tmp) / "job.pickle"
        path.write_bytes(pickle.dumps(job))
        return run_sanitized(["job", str(path)], timeout)

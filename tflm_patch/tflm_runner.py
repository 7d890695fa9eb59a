"""The x86 TFLM interpreter (tflite-micro wheel), always in a child process.

TFLM aborts the whole process on some degenerate quantizations (SIGABRT from a
failed TFLITE_CHECK such as QuantizeMultiplierGreaterThanOne's), crashes on arenas
too small for its own allocator objects, and prints through C stdio. So every call
here verifies the flatbuffer, then runs ``python -m tflm_patch._tflm_child`` in its
own process group, sends it a pickled request and reads back a pickled response. A
signal exit, a timeout or a failure status becomes a `TflmRunError` with one line
naming the step that failed and TFLM's last log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import tflm_patch
from tflm_patch._tflm_child import (
    PHASE_MARK,
    REPORT_HEADER,
    RESOURCE_VARIABLES_LINE,
    IsolatedRun,
    Request,
    Response,
)
from tflm_patch.errors import ModelFormatError, TflmRunError
from tflm_patch.fbverify import verify_tflite
from tflm_patch.schema import schema

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # seconds for one child process
MIN_DEFAULT_ARENA = 16 << 20  # default arena: max(16 MiB, 10 x model size)
ARENA_ALIGNMENT = 16  # new uint8_t[] on glibc x86_64; MicroArenaBufferAlignment()
MAX_LOG_LINES = 4  # TFLM messages of the failing step quoted in an error


@dataclass(frozen=True)
class AllocationRecord:
    """One "'<name>' used U bytes with alignment overhead (requested R bytes for C ...)" line."""

    name: str
    used_bytes: int
    requested_bytes: int
    count: int


@dataclass(frozen=True)
class AllocationReport:
    """RecordingMicroAllocator::PrintAllocations(): arena total = head + tail, and records."""

    total: int
    head: int
    tail: int
    records: tuple[AllocationRecord, ...]

    def record(self, name: str) -> AllocationRecord | None:
        return next((r for r in self.records if r.name == name), None)


@dataclass(frozen=True)
class ArenaMeasurement:
    """Smallest working arena_size, the allocation report at that size, probes it took."""

    smallest: int
    report: AllocationReport
    probes: int


@dataclass(frozen=True)
class _ModelShape:
    inputs: int
    outputs: int
    tensors: int


def default_arena_size(model: bytes) -> int:
    """A generous arena: max(16 MiB, 10 x the model size), a multiple of 16."""
    size = max(MIN_DEFAULT_ARENA, 10 * len(model))
    return -(-size // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def parse_report(text: str) -> AllocationReport:
    """Parse the lines of RecordingMicroAllocator::PrintAllocations() (other lines ignored)."""
    totals: dict[str, int] = {}
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(REPORT_HEADER):
            continue
        body = line[len(REPORT_HEADER):].strip()
        words = body.split()
        if words[:2] == ["Arena", "allocation"] and len(words) >= 4:
            totals[words[2]] = int(words[3])
        elif body.startswith("'") and body.count("'") >= 2:
            records.append(_parse_record(body))
    missing = [k for k in ("total", "head", "tail") if k not in totals]
    if missing:
        raise TflmRunError(f"TFLM's allocation report has no {', '.join(missing)}: "
                           f"{text.strip()[:200]!r}")
    return AllocationReport(totals["total"], totals["head"], totals["tail"], tuple(records))


def _parse_record(body: str) -> AllocationRecord:
    # 'NAME' used U bytes with alignment overhead (requested R bytes for C WHAT)
    name, rest = body[1:].rsplit("'", 1)
    words = rest.replace("(", " ").replace(")", " ").split()
    try:
        used = int(words[words.index("used") + 1])
        requested = int(words[words.index("requested") + 1])
        count = int(words[words.index("for") + 1])
    except (ValueError, IndexError):
        raise TflmRunError(f"cannot read TFLM's allocation record: {body!r}") from None
    return AllocationRecord(name, used, requested, count)


def _model_shape(model: bytes, verify: bool = True) -> _ModelShape:
    """Verify the flatbuffer (TFLM itself does not) and count main-subgraph I/O and tensors.
    verify=False: hand TFLM what a device would get, unchecked (tests of the kernel's own
    checks, e.g. misaligned constants, which the verifier refuses first)."""
    try:
        if verify:
            verify_tflite(model)
    except ModelFormatError as e:
        raise TflmRunError(f"TFLM cannot run the model: {e}") from e
    root = schema().Model.GetRootAs(model, 0)
    if root.SubgraphsLength() == 0:
        raise TflmRunError("TFLM cannot run the model: it has no subgraph")
    graph = root.Subgraphs(0)
    return _ModelShape(graph.InputsLength(), graph.OutputsLength(), graph.TensorsLength())


# First lines of an ASan / UBSan report (a kernel built with sanitizers, run with
# child_env preloading their runtimes)
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer")


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tflm_patch.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # the child forks: keep it single-threaded
    return env


@dataclass(frozen=True)
class _ChildLog:
    phase: str  # the last step the child announced
    last_line: str  # TFLM's last message, "" if none
    # TFLM's messages since the last phase marker: a kernel's own message (e.g. why
    # PATCH_EXEC's Prepare failed) comes before TFLM's "Node ... failed to prepare"
    recent: tuple[str, ...] = ()

    @classmethod
    def parse(cls, stderr: bytes) -> _ChildLog:
        phase, last = "starting", ""
        recent: list[str] = []
        for raw in stderr.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line.startswith(PHASE_MARK):
                phase = line[len(PHASE_MARK):]
                recent = []
            elif line and not line.startswith((RESOURCE_VARIABLES_LINE, REPORT_HEADER)):
                last = line
                recent.append(line)
        return cls(phase, last, tuple(recent))

    @property
    def message(self) -> str:
        """The last few messages of the failing step (else TFLM's last message)."""
        if len(self.recent) > 1:
            return " | ".join(self.recent[-MAX_LOG_LINES:])
        return self.last_line

    def suffix(self, sig: signal.Signals | None = None) -> str:
        if self.message:
            return f": {self.message}"
        if sig == signal.SIGABRT:
            return (" (no TFLM log output; a failed internal check such as a degenerate "
                    "quantization scale aborts TFLM this way)")
        return " (no TFLM log output)"


def _sanitizer_report(log: str) -> str:
    """The first line of a sanitizer report in a child's log, "" when none."""
    return next((line.strip() for line in log.splitlines()
                 if any(mark in line for mark in SANITIZER_MARKS)), "")


def _call(request: Request, timeout: float, env: Mapping[str, str] | None = None
          ) -> Response:
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tflm_patch._tflm_child"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(env),
        start_new_session=True)  # own process group: a timeout also ends probe processes
    try:
        out, err = proc.communicate(pickle.dumps(request), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        child = _ChildLog.parse(err)
        raise TflmRunError(f"TFLM did not finish {child.phase} within {timeout:g} s "
                           "(child process killed)") from None
    child = _ChildLog.parse(err)
    log.debug("TFLM child: %s in %.2f s, exit %d", request.action,
              time.monotonic() - start, proc.returncode)
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        verb = "aborted" if sig == signal.SIGABRT else "crashed"
        raise TflmRunError(f"TFLM {verb} ({sig.name}) while {child.phase}{child.suffix(sig)}")
    try:
        response = pickle.loads(out)
    except Exception:
        raise TflmRunError(f"TFLM child process failed (exit {proc.returncode}) while "
                           f"{child.phase}{child.suffix()}") from None
    if not isinstance(response, Response):
        raise TflmRunError(f"TFLM child process answered {type(response).__name__}")
    if response.error:
        log_part = f"; TFLM log: {child.message}" if child.message else ""
        raise TflmRunError(f"TFLM failed while {child.phase}: {response.error}{log_part}")
    return response


def _request(action: str, model: bytes, *, arena_size: int | None = None,
             registerers: Sequence[str] = (), preload: Sequence[str] = (),
             inputs: Sequence[np.ndarray] | None = None, granularity: int = 16,
             invoke: bool = True, preserve_all: bool = False,
             extra_models: Sequence[bytes] = (), repeats: int = 0,
             verify: bool = True) -> Request:
    data = bytes(model)
    shape = _model_shape(data, verify)
    extra = tuple(bytes(m) for m in extra_models)
    for other in extra:
        s = _model_shape(other, verify)
        if (s.inputs, s.outputs) != (shape.inputs, shape.outputs):
            raise TflmRunError(f"the models have different numbers of inputs/outputs: "
                               f"{shape.inputs}/{shape.outputs} and {s.inputs}/{s.outputs}")
    largest = max((data, *extra), key=len)
    arena = default_arena_size(largest) if arena_size is None else int(arena_size)
    if arena <= 0:
        raise TflmRunError(f"arena_size must be positive, got {arena}")
    arrays = () if inputs is None else tuple(np.ascontiguousarray(x) for x in inputs)
    if inputs is not None and len(arrays) != shape.inputs:
        raise TflmRunError(f"the model has {shape.inputs} input tensor(s) but "
                           f"{len(arrays)} array(s) were given")
    return Request(
        action=action, model=data, arena_size=arena, num_inputs=shape.inputs,
        num_outputs=shape.outputs, num_tensors=shape.tensors, inputs=arrays,
        registerers=tuple(str(r) for r in registerers),
        preload=tuple(os.fspath(p) for p in preload), granularity=granularity,
        invoke=invoke, preserve_all=preserve_all, extra_models=extra, repeats=repeats)


def run_model(model: bytes, inputs: Sequence[np.ndarray], *, arena_size: int | None = None,
              registerers: Sequence[str] = (), preload: Sequence[str] = (),
              timeout: float = DEFAULT_TIMEOUT, verify: bool = True) -> list[np.ndarray]:
    """Invoke the model once on `inputs` (one array per model input); its outputs.
    `verify`: see _model_shape."""
    req = _request("run", model, arena_size=arena_size, registerers=registerers,
                   preload=preload, inputs=inputs, verify=verify)
    return list(_call(req, timeout).outputs)


def run_all_tensors(model: bytes, inputs: Sequence[np.ndarray], *,
                    arena_size: int | None = None, registerers: Sequence[str] = (),
                    preload: Sequence[str] = (),
                    timeout: float = DEFAULT_TIMEOUT) -> dict[int, np.ndarray]:
    """Invoke once with every tensor preserved (kPreserveAllTensors): the value of each
    tensor of the main subgraph after the inference, by tensor index."""
    req = _request("run", model, arena_size=arena_size, registerers=registerers,
                   preload=preload, inputs=inputs, preserve_all=True)
    return _call(req, timeout).tensors


@dataclass(frozen=True)
class IsolatedOutcome:
    """How one model of `run_isolated` ended: outputs, or the error (a verifier refusal,
    TFLM's failure with the phase, a signal, a sanitizer report, a timeout)."""

    outputs: tuple[np.ndarray, ...] = ()
    error: str = ""
    phase: str = ""  # the child's last phase ("allocating tensors", "invoking", ...)
    log: str = ""  # TFLM's messages of that phase (" | "-joined)
    signal: str = ""  # e.g. "SIGSEGV" when the process was killed by a signal
    sanitizer: str = ""  # the first sanitizer report line
    timed_out: bool = False

    @property
    def ran(self) -> bool:
        return not (self.error or self.signal or self.sanitizer or self.timed_out)


def run_isolated(models: Sequence[bytes], inputs: Sequence[np.ndarray], *,
                 registerers: Sequence[str] = (), preload: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, verify: bool = True,
                 timeout: float = 60.0) -> list[IsolatedOutcome]:
    """Run each model once on the same inputs, each in its own forked process of one TFLM
    child (one interpreter start for all): a crash, a sanitizer report or a timeout
    (`timeout` seconds per model) ends that model's process only. `env`: variables added
    to the child's environment (e.g. the sanitizer runtimes preloaded for a kernel built
    with them). Models the flatbuffer verifier refuses never reach TFLM (unless
    verify=False)."""
    results: list[IsolatedOutcome | None] = []
    todo: list[bytes] = []
    for m in models:
        try:
            _model_shape(bytes(m), verify)
            results.append(None)
            todo.append(bytes(m))
        except TflmRunError as e:
            results.append(IsolatedOutcome(error=str(e), phase="verifying"))
        except Exception as e:  # an unverified file the schema reader cannot even read
            results.append(IsolatedOutcome(error=f"{type(e).__name__}: {e}", phase="reading"))
    runs: list[IsolatedOutcome] = []
    if todo:
        req = _request("isolated", todo[0], registerers=registerers, preload=preload,
                       inputs=inputs, extra_models=todo[1:], verify=False)
        req = dataclasses.replace(req, timeout=timeout)
        response = _call(req, timeout * len(todo) + 120, env)
        runs = [_isolated_outcome(run) for run in response.isolated]
    it = iter(runs)
    return [r if r is not None else next(it) for r in results]


def _isolated_outcome(run: IsolatedRun) -> IsolatedOutcome:
    child = _ChildLog.parse(run.log.encode())
    report = _sanitizer_report(run.log)
    code = run.exit_code
    sig = signal.Signals(-code).name if code < 0 else ""
    timed_out = sig == "SIGALRM"
    error = run.error
    if not error and (code != 0 or not run.outputs):
        error = f"the process ended with exit code {code}" if code >= 0 else f"killed by {sig}"
    return IsolatedOutcome(outputs=run.outputs, error=error, phase=child.phase,
                           log=child.message, signal="" if timed_out else sig,
                           sanitizer=report, timed_out=timed_out)


def allocation_report(model: bytes, *, arena_size: int | None = None,
                      registerers: Sequence[str] = (), preload: Sequence[str] = (),
                      timeout: float = DEFAULT_TIMEOUT) -> AllocationReport:
    """RecordingMicroAllocator's report after AllocateTensors with `arena_size`."""
    req = _request("report", model, arena_size=arena_size, registerers=registerers,
                   preload=preload)
    return parse_report(_call(req, timeout).report_text)


def allocation_reports(models: Sequence[bytes], *, timeout: float = 60.0
                       ) -> list[AllocationReport | str]:
    """RecordingMicroAllocator's report after AllocateTensors (generous arena) of each
    model, each in its own forked process of ONE TFLM child; a model TFLM cannot allocate
    gives one line saying why instead (its error, crash or timeout)."""
    if not models:
        return []
    data = [bytes(m) for m in models]
    for m in data:
        _model_shape(m)
    arena = max(4 * MIN_DEFAULT_ARENA, default_arena_size(max(data, key=len)))
    req = dataclasses.replace(_request("reports", data[0], arena_size=arena, verify=False),
                              extra_models=tuple(data[1:]), timeout=timeout)
    response = _call(req, timeout * len(data) + 120)
    out: list[AllocationReport | str] = []
    for run in response.isolated:
        outcome = _isolated_outcome(dataclasses.replace(run, outputs=(np.zeros(0),)))
        if outcome.ran and run.report_text:
            out.append(parse_report(run.report_text))
        else:
            why = outcome.error or outcome.signal or ("timed out" if outcome.timed_out else "")
            out.append(f"{why}{f' ({outcome.log})' if outcome.log else ''}")
    return out


def smallest_arena(model: bytes, *, granularity: int = 16, registerers: Sequence[str] = (),
                   preload: Sequence[str] = (), invoke: bool = True,
                   timeout: float = DEFAULT_TIMEOUT) -> ArenaMeasurement:
    """The smallest arena_size (a multiple of `granularity`) with which AllocateTensors
    and, if `invoke`, one Invoke on zero inputs succeed, measured in one child process.

    The recording allocator's total at a generous arena is the first guess; it is
    accepted when it works and one granule less does not, otherwise the search gallops
    from it and bisects (each probe in a forked process, so crashes count as misses).
    """
    if granularity <= 0:
        raise ValueError(f"granularity must be positive, got {granularity}")
    start = time.monotonic()
    req = _request("smallest", model, registerers=registerers, preload=preload,
                   granularity=int(granularity), invoke=bool(invoke))
    resp = _call(req, timeout)
    log.info("smallest arena %d bytes after %d probes (%.2f s)", resp.smallest, resp.probes,
             time.monotonic() - start)
    return ArenaMeasurement(resp.smallest, parse_report(resp.report_text), resp.probes)


@dataclass(frozen=True)
class Latency:
    """Seconds of each timed Invoke, and the outputs, per model (in the order given)."""

    seconds: tuple[tuple[float, ...], ...]
    outputs: tuple[tuple[np.ndarray, ...], ...]

    def median(self, k: int) -> float:
        return float(np.median(self.seconds[k]))


def invoke_latency(models: Sequence[bytes], inputs: Sequence[np.ndarray], *,
                   repeats: int = 7, arena_size: int | None = None,
                   registerers: Sequence[str] = (), preload: Sequence[str] = (),
                   timeout: float = DEFAULT_TIMEOUT) -> Latency:
    """Time Invoke of each model on the same inputs in ONE child process, `repeats` rounds
    alternating the models (after one warm-up Invoke each)."""
    if not models:
        raise ValueError("no model to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    req = _request("latency", models[0], arena_size=arena_size, registerers=registerers,
                   preload=preload, inputs=inputs, extra_models=models[1:],
                   repeats=int(repeats))
    resp = _call(req, timeout)
    return Latency(resp.seconds, resp.model_outputs)

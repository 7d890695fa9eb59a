"""Child-process side of `tflm_patch.tflm_runner`: runs the x86 TFLM interpreter once.

Started as ``python -m tflm_patch._tflm_child``. Protocol: the parent writes one
pickled `Request` to stdin; the child answers with one pickled `Response` on its
original stdout. Everything else the process prints (TFLM's MicroPrintf goes to C
stderr, the wheel's ``print()`` to Python stdout) is redirected to stderr, which the
parent keeps as the log. Before each step the child writes a phase marker line to
stderr, so that when TFLM aborts the process the parent can still say what it was
doing ("allocating tensors", "invoking", ...).

The smallest-arena search runs every probe in a forked grandchild: an arena too
small even for TFLM's own allocator objects makes TFLM dereference a null pointer,
and such a crash must count as "does not fit", not end the search. The "isolated"
action runs each of several models in its own forked grandchild too (its log, exit
status and outputs kept apart): one process start for many untrusted models.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

PHASE_MARK = "[tflm_patch phase] "
REPORT_HEADER = "[RecordingMicroAllocator]"
# Python-level line of the wheel's Interpreter.__init__, not a TFLM message
RESOURCE_VARIABLES_LINE = "Number of resource variables"


@dataclass(frozen=True)
class Request:
    action: str  # "run" | "report" | "smallest" | "latency" | "isolated" | "reports"
    model: bytes
    arena_size: int
    num_inputs: int
    num_outputs: int
    num_tensors: int
    inputs: tuple[np.ndarray, ...] = ()
    registerers: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    granularity: int = 16
    invoke: bool = True
    preserve_all: bool = False
    # "latency": more models (same inputs) timed alternately with `model`, `repeats` rounds;
    # "isolated" ("reports"): more models, each run once (allocated once) in its own process
    extra_models: tuple[bytes, ...] = ()
    repeats: int = 0
    timeout: float = 0.0  # "isolated": seconds per model (0: none)


@dataclass(frozen=True)
class IsolatedRun:
    """One model of an "isolated" request: its outputs, or the error TFLM reported, and
    how its process ended (exit code, or minus the signal number) with its log."""

    outputs: tuple[np.ndarray, ...] = ()
    error: str = ""
    exit_code: int = 0
    log: str = ""
    report_text: str = ""  # "reports": the allocation report after AllocateTensors


@dataclass(frozen=True)
class Response:
    error: str = ""  # empty when the request succeeded
    outputs: tuple[np.ndarray, ...] = ()
    tensors: dict[int, np.ndarray] = field(default_factory=dict)
    report_text: str = ""
    smallest: int = 0
    probes: int = 0
    # "latency": per model (`model`, then `extra_models`), seconds of each Invoke, outputs
    seconds: tuple[tuple[float, ...], ...] = ()
    model_outputs: tuple[tuple[np.ndarray, ...], ...] = ()
    isolated: tuple[IsolatedRun, ...] = ()


def phase(text: str) -> None:
    """Tell the parent what comes next (read back if the process dies)."""
    sys.stdout.flush()
    os.write(2, f"{PHASE_MARK}{text}\n".encode())


def _load_runtime() -> Any:
    from tflite_micro.python.tflite_micro import runtime

    return runtime


def _make(req: Request, arena_size: int, runtime: Any) -> Any:
    """Construct the interpreter (this runs AllocateTensors); RuntimeError if it fails."""
    config = (runtime.InterpreterConfig.kPreserveAllTensors if req.preserve_all
              else runtime.InterpreterConfig.kAllocationRecording)
    # Interpreter.__init__ print()s the number of resource variables
    with contextlib.redirect_stdout(io.StringIO()):
        return runtime.Interpreter.from_bytes(
            req.model, custom_op_registerers=list(req.registerers), arena_size=arena_size,
            intrepreter_config=config)


def _set_zero_inputs(interp: Any, num_inputs: int) -> None:
    for i in range(num_inputs):
        details = interp.get_input_details(i)
        interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), i)


def _fits(req: Request, arena_size: int, runtime: Any) -> bool:
    """True if the interpreter can be built (and, if asked, invoked) with this arena."""
    try:
        interp = _make(req, arena_size, runtime)
        if req.invoke:
            _set_zero_inputs(interp, req.num_inputs)
            interp.invoke()
    except RuntimeError:
        return False
    return True


def _probe_in_grandchild(req: Request, arena_size: int, runtime: Any) -> bool:
    """`_fits` in a forked process: a crash (signal) means the arena does not fit."""
    pid = os.fork()
    if pid == 0:  # grandchild: silent, never returns
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = 0 if _fits(req, arena_size, runtime) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _report_text(interp: Any) -> str:
    """print_allocations() writes through C stdio (stderr): capture fd 2 meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            interp.print_allocations()
            ctypes.CDLL(None).fflush(None)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode("utf-8", "replace")


def _report_total(text: str) -> int:
    for line in text.splitlines():
        words = line.split()
        if line.startswith(REPORT_HEADER) and words[1:4] == ["Arena", "allocation", "total"]:
            return int(words[4])
    raise RuntimeError(f"TFLM printed no allocation total: {text.strip()[:200]!r}")


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _bisect(fits: Callable[[int], bool], lo: int, hi: int, step: int) -> int:
    """Smallest multiple of `step` in (lo, hi] that fits; `lo` does not fit, `hi` does."""
    while hi - lo > step:
        mid = lo + (hi - lo) // step // 2 * step
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def find_smallest(fits: Callable[[int], bool], hint: int, ceiling: int, step: int) -> int:
    """Smallest multiple of `step` that fits, assuming "fits" is monotonic in the size.

    `hint` (a multiple of `step`) is the expected answer: it costs two probes when right
    (hint fits, hint - step does not). Otherwise gallop away from it in doubling steps
    and bisect. `ceiling` is known to fit; 0 is taken not to fit.
    """
    if fits(hint):
        if hint <= step or not fits(hint - step):
            return hint
        lo, hi, gap = 0, hint - step, step
        while hi - gap > 0:
            if not fits(hi - gap):
                lo = hi - gap
                break
            hi, gap = hi - gap, 2 * gap
        return _bisect(fits, lo, hi, step)
    lo, hi, gap = hint, ceiling, step
    while lo + gap < ceiling:
        if fits(lo + gap):
            hi = lo + gap
            break
        lo, gap = lo + gap, 2 * gap
    return _bisect(fits, lo, hi, step)


def _smallest(req: Request, runtime: Any) -> Response:
    step = req.granularity
    phase("allocating tensors")
    interp = _make(req, req.arena_size, runtime)
    if req.invoke:
        phase("invoking")
        _set_zero_inputs(interp, req.num_inputs)
        interp.invoke()
    phase("reading the allocation report")
    hint = _round_up(_report_total(_report_text(interp)), step)
    del interp
    probes = 0

    def fits(size: int) -> bool:
        nonlocal probes
        probes += 1
        return _probe_in_grandchild(req, size, runtime)

    phase("measuring the smallest arena")
    ceiling = _round_up(req.arena_size, step)
    smallest = find_smallest(fits, min(hint, ceiling), ceiling, step)
    phase("allocating tensors at the smallest arena")
    interp = _make(req, smallest, runtime)
    return Response(smallest=smallest, probes=probes, report_text=_report_text(interp))


def _run(req: Request, runtime: Any) -> Response:
    phase("allocating tensors")
    interp = _make(req, req.arena_size, runtime)
    if req.action == "report":
        phase("reading the allocation report")
        return Response(report_text=_report_text(interp))
    phase("setting inputs")
    for i, x in enumerate(req.inputs):
        interp.set_input(x, i)
    phase("invoking")
    interp.invoke()
    phase("reading outputs")
    outputs = tuple(np.array(interp.get_output(i)) for i in range(req.num_outputs))
    tensors: dict[int, np.ndarray] = {}
    if req.preserve_all:
        # GetTensor has no bounds check in TFLM: stay within the model's tensor count
        for i in range(req.num_tensors):
            tensors[i] = np.array(interp.GetTensor(i, 0)["tensor_data"])
    return Response(outputs=outputs, tensors=tensors)


def _latency(req: Request, runtime: Any) -> Response:
    """Invoke every model on the same inputs, alternating models (the order reversed every
    other round) so that drifts of the machine hit them alike; one warm-up Invoke each."""
    phase("allocating tensors")
    models = (req.model, *req.extra_models)
    interps = [_make(replace(req, model=m), req.arena_size, runtime) for m in models]

    def set_inputs(interp: Any) -> None:
        # again before every Invoke: TFLM's plan reuses the input's bytes for later tensors
        for i, x in enumerate(req.inputs):
            interp.set_input(x, i)

    phase("invoking")
    for interp in interps:
        set_inputs(interp)
        interp.invoke()
    seconds: list[list[float]] = [[] for _ in models]
    for r in range(req.repeats):
        order = range(len(models)) if r % 2 == 0 else range(len(models) - 1, -1, -1)
        for k in order:
            set_inputs(interps[k])
            start = time.perf_counter()
            interps[k].invoke()
            seconds[k].append(time.perf_counter() - start)
    phase("reading outputs")
    outputs = tuple(tuple(np.array(interp.get_output(i)) for i in range(req.num_outputs))
                    for interp in interps)
    return Response(seconds=tuple(map(tuple, seconds)), model_outputs=outputs)


def _run_one_isolated(req: Request, runtime: Any, log: int, result: int) -> None:
    """Grandchild of "isolated": fd 1 and 2 to `log`, the pickled outputs (or error) to
    `result`; a SIGALRM after req.timeout seconds ends it."""
    os.dup2(log, 1)
    os.dup2(log, 2)
    if req.timeout > 0:
        signal.alarm(max(1, int(req.timeout)))
    try:
        if req.action == "reports":
            run = IsolatedRun(report_text=_report_text(_make(req, req.arena_size, runtime)))
        else:
            run = IsolatedRun(outputs=_run(req, runtime).outputs)
    except RuntimeError as e:
        run = IsolatedRun(error=str(e))
    except Exception as e:
        run = IsolatedRun(error=f"{type(e).__name__}: {e}")
    os.write(result, pickle.dumps(run))


def _isolated(req: Request, runtime: Any) -> Response:
    runs = []
    for model in (req.model, *req.extra_models):
        one = replace(req, model=model, extra_models=())
        with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as result:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # grandchild: never returns
                code = 0
                try:
                    _run_one_isolated(one, runtime, log.fileno(), result.fileno())
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            log.seek(0)
            result.seek(0)
            text = log.read().decode("utf-8", "replace")
            data = result.read()
        try:
            run = pickle.loads(data)
        except Exception:  # the process died before writing all of it
            run = IsolatedRun(error="no result")
        runs.append(replace(run, exit_code=os.waitstatus_to_exitcode(status), log=text))
    return Response(isolated=tuple(runs))


def serve(req: Request) -> Response:
    phase("loading custom-op libraries")
    for path in req.preload:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise RuntimeError(f"cannot load {path}: {e}") from e
    phase("importing the tflite-micro runtime")
    runtime = _load_runtime()
    if req.action == "smallest":
        return _smallest(req, runtime)
    if req.action == "latency":
        return _latency(req, runtime)
    if req.action in ("isolated", "reports"):
        return _isolated(req, runtime)
    return _run(req, runtime)


def main() -> None:
    response = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever TFLM or Python prints goes to the log (stderr)
    sys.stdout = sys.stderr
    request: Request = pickle.load(sys.stdin.buffer)
    try:
        result = serve(request)
    except RuntimeError as e:  # the wrapper's way of reporting a TFLM error status
        result = Response(error=str(e))
    except Exception as e:  # reported by the parent as one clear line
        result = Response(error=f"{type(e).__name__}: {e}")
    with response:
        pickle.dump(result, response)


if __name__ == "__main__":
    # Run this module's own copy under its package name, so that the pickled Response
    # refers to tflm_patch._tflm_child.Response (the parent cannot import __main__'s).
    from tflm_patch import _tflm_child

    _tflm_child.main()

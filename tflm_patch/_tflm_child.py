"""Child-process side of tflm_runner: runs the x86 TFLM interpreter on one request.

Protocol: the parent writes a pickled `Request` to stdin; the child writes a pickled
`Response` to the file named in the request (stdout and stderr stay free for TFLM's
own MicroPrintf output, which the parent collects for error messages). TFLM can
abort the process; the parent sees that as a signal exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER = "[RecordingMicroAllocator]"


@dataclass
class Request:
    action: str  # "run" | "report" | "smallest"
    model: bytes
    result_path: str
    arena_size: int | None = None
    inputs: list[np.ndarray] = field(default_factory=list)
    registerers: list[str] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)
    granularity: int = 16
    invoke: bool = True
    preserve_all: bool = False


@dataclass
class Response:
    ok: bool
    error: str = ""
    outputs: list[np.ndarray] = field(default_factory=list)
    report_text: str = ""
    smallest: int = 0
    probes: int = 0
    tensors: dict[int, np.ndarray] = field(default_factory=dict)


def _runtime() -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        from tflite_micro.python.tflite_micro import runtime
    return runtime


def _make(req: Request, arena_size: int, runtime: Any) -> Any:
    config = (runtime.InterpreterConfig.kPreserveAllTensors if req.preserve_all
              else runtime.InterpreterConfig.kAllocationRecording)
    # Interpreter.__init__ print()s the number of resource variables: keep stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        return runtime.Interpreter.from_bytes(
            req.model, custom_op_registerers=list(req.registerers), arena_size=arena_size,
            intrepreter_config=config)


def _zero_inputs(interp: Any) -> None:
    i = 0
    while True:
        try:
            details = interp.get_input_details(i)
        except Exception:
            return
        interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), i)
        i += 1


def _works(req: Request, arena_size: int, runtime: Any) -> bool:
    try:
        interp = _make(req, arena_size, runtime)
    except RuntimeError:
        return False
    if req.invoke:
        _zero_inputs(interp)
        try:
            interp.invoke()
        except RuntimeError:
            return False
    return True


def _report_text(interp: Any) -> str:
    """print_allocations() writes through C stdio (MicroPrintf -> stderr): capture fds 1 and 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            interp.print_allocations()
            ctypes.CDLL(None).fflush(None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        f.seek(0)
        return f.read().decode("utf-8", "replace")


def _smallest(req: Request, runtime: Any) -> tuple[int, int]:
    g = req.granularity
    probes = 0

    def works(size: int) -> bool:
        nonlocal probes
        probes += 1
        return _works(req, size, runtime)

    # hint: the recording allocator's total at a generous size
    generous = req.arena_size or max(16 << 20, 10 * len(req.model))
    interp = _make(req, generous, runtime)
    hint = _parse_total(_report_text(interp))
    del interp
    hint = -(-hint // g) * g
    if works(hint) and (hint <= g or not works(hint - g)):
        return hint, probes
    lo, hi = 0, hint  # lo fails (or is 0), hi unknown
    while not works(hi):
        lo, hi = hi, hi * 2
        if hi > (4 << 30):
            raise RuntimeError("no arena up to 4 GiB works")
    while hi - lo > g:
        mid = (lo + hi) // 2 // g * g
        if mid <= lo:
            mid = lo + g
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi, probes


def _parse_total(text: str) -> int:
    for line in text.splitlines():
        if "Arena allocation total" in line:
            return int(line.split("total")[1].split()[0])
    raise RuntimeError("no allocation report from TFLM")


def serve(req: Request) -> Response:
    for lib in req.preload:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    runtime = _runtime()
    arena = req.arena_size or max(16 << 20, 10 * len(req.model))
    if req.action == "smallest":
        smallest, probes = _smallest(req, runtime)
        interp = _make(req, smallest, runtime)
        return Response(True, smallest=smallest, probes=probes, report_text=_report_text(interp))
    interp = _make(req, arena, runtime)
    if req.action == "report":
        return Response(True, report_text=_report_text(interp))
    for i, x in enumerate(req.inputs):
        interp.set_input(x, i)
    interp.invoke()
    outputs = []
    i = 0
    while True:
        try:
            outputs.append(np.array(interp.get_output(i)))
        except Exception:
            break
        i += 1
    tensors: dict[int, np.ndarray] = {}
    if req.preserve_all:
        n = 0
        while True:
            try:
                t = interp.GetTensor(n, 0)
            except Exception:
                break
            if t is None:
                break
            tensors[n] = np.array(t)
            n += 1
    return Response(True, outputs=outputs, tensors=tensors)


def main() -> None:
    req: Request = pickle.load(sys.stdin.buffer)
    try:
        resp = serve(req)
    except Exception as e:  # reported to the parent as a clear error, not a traceback
        resp = Response(False, error=f"{type(e).__name__}: {e}")
    with open(req.result_path, "wb") as f:
        pickle.dump(resp, f)


if __name__ == "__main__":
    main()

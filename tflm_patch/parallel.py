"""Planning work spread over the CPU cores: `split_map` runs a list of independent tasks
in forked child processes and this one, and gives the results in task order.

Every task depends on its input alone (the planner's caches only save work), so the
results are the ones one process computes. A child sends its results and its log
records back pickled through a pipe; the records are handled here once the child is done,
so `-v` prints every line one process prints (a child's after this process's own). A
child that fails for any reason has its share computed here again (an error a task raises
is then raised here). Without fork (not Linux) or with one job, everything runs here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
JOBS_ENV = "TFLM_PATCH_JOBS"
MAX_DEFAULT_JOBS = 4  # beyond it the planner's few large tasks do not divide further


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def default_jobs() -> int:
    """$TFLM_PATCH_JOBS when it is a positive number, else the CPUs this process may
    use (at most MAX_DEFAULT_JOBS); 1 where processes cannot be forked."""
    text = os.environ.get(JOBS_ENV, "")
    if text.isdigit() and int(text) > 0:
        return int(text) if can_fork() else 1
    return min(MAX_DEFAULT_JOBS, available_cpus()) if can_fork() else 1


class _Collect(logging.Handler):
    """A child's log records, kept to be handled by the parent."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None
        record.exc_info, record.exc_text = None, None
        self.records.append(record)


@dataclass
class _Child:
    pid: int
    fd: int
    indices: list[int]


def split_map(fn: Callable[[T], R], items: Sequence[T], jobs: int,
              done: Callable[[], None] | None = None,
              groups: Sequence[tuple[Hashable, float]] | None = None) -> list[R]:
    """[fn(x) for x in items], computed by `jobs` processes: item i by process i % jobs
    (this one takes i % jobs == 0), or with `groups` ((key, weight) per item) the items of
    one key by one process (they share cached work), the heaviest keys first, each to the
    least loaded process. done() is called once per item, here."""
    jobs = max(1, min(jobs, len(items))) if can_fork() else 1
    shares = ([list(range(k, len(items), jobs)) for k in range(jobs)] if groups is None
              else _by_group(groups, jobs))
    children: list[_Child] = []
    try:
        for share in shares[1:]:
            if share:
                children.append(_fork(fn, items, share))
        results: dict[int, R] = {}
        for i in shares[0]:
            results[i] = fn(items[i])
            if done is not None:
                done()
        for child in children:
            results.update(_collect(fn, items, child, done))
        return [results[i] for i in range(len(items))]
    finally:
        for child in children:
            _reap(child, kill=True)


def _by_group(groups: Sequence[tuple[Hashable, float]], jobs: int) -> list[list[int]]:
    """Item indices per process: whole groups, the heaviest first to the least loaded
    (ties: the lower process)."""
    members: dict[Hashable, list[int]] = {}
    weights: dict[Hashable, float] = {}
    for i, (key, weight) in enumerate(groups):
        members.setdefault(key, []).append(i)
        weights[key] = weights.get(key, 0.0) + weight
    shares: list[list[int]] = [[] for _ in range(jobs)]
    loads = [0.0] * jobs
    for key in sorted(members, key=lambda k: -weights[k]):  # stable: first seen first
        k = loads.index(min(loads))
        shares[k] += members[key]
        loads[k] += weights[key]
    return [sorted(share) for share in shares]


def _fork(fn: Callable[[T], R], items: Sequence[T], share: list[int]) -> _Child:
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "process is multi-threaded": see _child
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover (child: measured by its results)
        os.close(read)
        _child(fn, items, share, write)
    os.close(write)
    return _Child(pid, read, share)


def _child(fn: Callable[[T], R], items: Sequence[T], share: list[int], fd: int) -> None:
    """Compute `share`, write (results, log records) to `fd`, and exit without running
    the parent's exit handlers. Only this thread exists in the child and it runs the
    planner's own Python code, so locks other threads held at the fork are never taken."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent cleans up
        root, collect = logging.getLogger(), _Collect()
        root.handlers = [collect]
        out = {i: fn(items[i]) for i in share}
        data = pickle.dumps((out, collect.records), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        code = 0
    finally:
        os._exit(code)


def _collect(fn: Callable[[T], R], items: Sequence[T], child: _Child,
             done: Callable[[], None] | None) -> dict[int, R]:
    """A child's results (its log records handled here), or its share computed here when
    the child failed."""
    with os.fdopen(child.fd, "rb") as f:
        data = f.read()
    child.fd = -1
    ok = _reap(child, kill=False)
    try:
        out, records = pickle.loads(data) if ok else (None, [])
    except Exception:  # a broken child's share is recomputed, whatever broke
        out, records = None, []
    if out is None:
        log.debug("planning process %d failed; its share is computed here", child.pid)
        out = {i: fn(items[i]) for i in child.indices}
    for record in records:
        logging.getLogger(record.name).handle(record)
    for _ in child.indices:
        if done is not None:
            done()
    return out


def _reap(child: _Child, kill: bool) -> bool:
    """Wait for the child (killed first with kill=True); did it exit with 0?"""
    if child.pid <= 0:
        return False
    if child.fd >= 0:
        os.close(child.fd)
        child.fd = -1
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
    _, status = os.waitpid(child.pid, 0)
    child.pid = -1
    return os.waitstatus_to_exitcode(status) == 0

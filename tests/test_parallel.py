"""Planning in several processes (parallel.split_map): the same results as one process,
in task order, whatever a child does; and the same plan with any number of jobs."""

from __future__ import annotations

import logging
import os

import pytest

from tflm_patch import parallel
from tflm_patch.model import load_model
from tflm_patch.parallel import default_jobs, split_map
from tflm_patch.planner import PlanRequest, plan
from tflm_patch.zoo import ensure_model

PARENT = os.getpid()
log = logging.getLogger("tflm_patch.test_parallel")

needs_fork = pytest.mark.skipif(not parallel.can_fork(),
                                reason="processes are forked on Linux only")


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_results_come_in_task_order(jobs: int) -> None:
    assert split_map(_square, list(range(7)), jobs) == [x * x for x in range(7)]


def test_no_items_and_more_jobs_than_items() -> None:
    assert split_map(_square, [], 4) == []
    assert split_map(_square, [3], 4) == [9]


@needs_fork
def test_children_do_share_the_work() -> None:
    pids = split_map(lambda _: os.getpid(), list(range(4)), 2)
    assert pids[0] == pids[2] == PARENT != pids[1] == pids[3]


@needs_fork
def test_groups_stay_together_heaviest_first() -> None:
    groups = [("a", 1.0), ("b", 4.0), ("a", 1.0), ("c", 1.0), ("b", 1.0)]
    pids = split_map(lambda _: os.getpid(), list(range(5)), 2, groups=groups)
    assert pids[1] == pids[4] == PARENT  # "b", the heaviest, here
    assert pids[0] == pids[2] == pids[3] != PARENT  # "a" and then "c", the lighter load


def test_one_group_forks_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork(*_: object) -> None:
        raise AssertionError("a child for nothing")

    monkeypatch.setattr(parallel, "_fork", no_fork)
    pids = split_map(lambda _: os.getpid(), [0, 1, 2], 2, groups=[("a", 1.0)] * 3)
    assert pids == [PARENT] * 3


@needs_fork
def test_done_is_called_once_per_item_here() -> None:
    calls: list[int] = []
    split_map(_square, list(range(5)), 2, lambda: calls.append(os.getpid()))
    assert calls == [PARENT] * 5


def _dies_in_child(x: int) -> int:
    if os.getpid() != PARENT and x == 1:
        os._exit(3)  # a child that dies without a word
    return x + 100


@needs_fork
def test_a_dead_child_has_its_share_computed_here() -> None:
    assert split_map(_dies_in_child, list(range(4)), 2) == [100, 101, 102, 103]


def _fails(x: int) -> int:
    if x == 3:
        raise ValueError(f"task {x} failed")
    return x


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_task_error_is_raised_here(jobs: int) -> None:
    with pytest.raises(ValueError, match="task 3 failed"):
        split_map(_fails, list(range(5)), jobs)


def _logs(x: int) -> int:
    log.warning("task %d in %s", x, "child" if os.getpid() != PARENT else "parent")
    return x


@needs_fork
def test_child_log_records_are_handled_here(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tflm_patch.test_parallel"):
        split_map(_logs, list(range(4)), 2)
    assert sorted(r.getMessage() for r in caplog.records) == [
        "task 0 in parent", "task 1 in child", "task 2 in parent", "task 3 in child"]


@pytest.mark.parametrize("text, jobs", [("3", 3), ("1", 1)])
def test_jobs_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str,
                                   jobs: int) -> None:
    monkeypatch.setattr(parallel, "can_fork", lambda: True)
    monkeypatch.setenv(parallel.JOBS_ENV, text)
    assert default_jobs() == jobs


@pytest.mark.parametrize("text", ["", "0", "-2", "two"])
def test_default_jobs_without_a_usable_setting(monkeypatch: pytest.MonkeyPatch,
                                               text: str) -> None:
    monkeypatch.setattr(parallel, "can_fork", lambda: True)
    monkeypatch.setenv(parallel.JOBS_ENV, text)
    assert default_jobs() == min(parallel.MAX_DEFAULT_JOBS, parallel.available_cpus())


def test_one_job_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    monkeypatch.setenv(parallel.JOBS_ENV, "4")
    assert default_jobs() == 1
    assert split_map(lambda _: os.getpid(), [0, 1, 2], 3) == [PARENT] * 3


@pytest.mark.first_case_quick
@needs_fork
@pytest.mark.parametrize("name", ["se_blocks", "mbv1_025_96"])
@pytest.mark.parametrize("objective", ["latency", "memory"])
def test_plan_is_the_same_with_any_number_of_jobs(name: str, objective: str) -> None:
    results = [plan(load_model(ensure_model(name)), PlanRequest(objective=objective,
                                                               jobs=jobs))
               for jobs in (1, 2, 3)]
    assert results[0].chosen is not None
    for r in results[1:]:
        assert r.chosen is not None
        assert r.to_json(r.chosen) == results[0].to_json(results[0].chosen)
        assert r.candidates == results[0].candidates  # every candidate, in order

"""The forked worker: results, errors and crashes come back to the parent; a stuck child is killed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from verifier.errors import InputError, VerifierError
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.worker import Worker, WorkerCrash, run_once


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "awake"


def test_a_stuck_child_is_killed_at_the_deadline():
    deadline = Deadline(0.3)
    with Worker(_sleep) as worker:
        with pytest.raises(DeadlineReached):
            worker.call(600.0, deadline=deadline)
        assert worker._process is None  # killed and reaped, not left running
        assert worker.call(0.0, deadline=Deadline(60)) == "awake"  # a fresh child serves the next job
    assert deadline.elapsed() < 30  # generous: only "long before the child would have woken up"


def test_results_come_back_and_the_child_keeps_its_state_between_jobs():
    seen = []

    def remember(item):
        seen.append(item)
        return list(seen)

    with Worker(remember) as worker:
        assert worker.call("a", deadline=Deadline(None)) == ["a"]
        assert worker.call("b", deadline=Deadline(60)) == ["a", "b"]
    assert seen == []  # the appends happened in the child only


def _raise(error: Exception):
    raise error


def test_errors_keep_their_message_and_bugs_their_traceback():
    with pytest.raises(VerifierError, match="bad.onnx: no such file"):
        run_once(_raise, InputError("bad.onnx: no such file"), deadline=Deadline(60))
    with pytest.raises(WorkerCrash, match=r"(?s)Traceback.*ZeroDivisionError: boom"):
        run_once(_raise, ZeroDivisionError("boom"), deadline=Deadline(60))
    with pytest.raises(DeadlineReached, match="stopped itself"):
        run_once(_raise, DeadlineReached("stopped itself"), deadline=Deadline(60))


def _die(how: str):
    if how == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def test_a_child_that_dies_is_a_crash_not_a_timeout():
    with pytest.raises(WorkerCrash, match="killed by signal SIGKILL"):
        run_once(_die, "signal", deadline=Deadline(60))
    with pytest.raises(WorkerCrash, match="exit status 3"):
        run_once(_die, "exit", deadline=Deadline(60))


def test_a_spent_budget_starts_no_child():
    worker = Worker(_sleep)
    with pytest.raises(DeadlineReached):
        worker.call(0.0, deadline=Deadline(0.0))
    assert worker._process is None


def test_a_child_killed_between_jobs_is_a_crash():
    with Worker(_sleep) as worker:
        assert worker.call(0.0, deadline=Deadline(60)) == "awake"
        worker._process.kill()
        worker._process.join()
        with pytest.raises(WorkerCrash, match="SIGKILL"):
            worker.call(0.0, deadline=Deadline(60))

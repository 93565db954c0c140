"""Hard deadlines enforced from outside the work: jobs run in a forked child, the parent only waits.

A ``Deadline`` is polled between stages, so one long torch call, or a starved thread that cannot get the
GIL, used to overrun a budget by many seconds. Here the parent blocks in ``poll`` on a pipe (it needs
neither a core nor the child's GIL to wake up) and sends ``SIGKILL`` when the deadline passes, which the
kernel delivers whatever the child is doing; the parent then reports the timeout itself.

The child is forked after the imports (torch, the engine), so it starts in milliseconds without paying
them again. The parent must not run torch computations before forking: a thread pool started in the
parent does not survive the fork. A ``Worker`` serves jobs one after the other, keeping the child (and
whatever it caches, e.g. loaded models) alive between them until a deadline forces a kill; the next job
then forks a fresh child.

What a job raises in the child comes back to the parent: ``VerifierError`` as a ``VerifierError`` with
the same message, ``DeadlineReached`` as itself, any other exception (a bug) as ``WorkerCrash`` carrying
the child's traceback, and a child that dies without answering (a signal, ``os._exit``) as
``WorkerCrash`` naming how it died. A crash is never turned into a verdict.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

from verifier.errors import VerifierError
from verifier.verify.deadline import Deadline, DeadlineReached

_PR_SET_PDEATHSIG = 1  # prctl(2) option: a signal the kernel sends this process when its parent dies


class WorkerCrash(RuntimeError):
    """The job failed with an unexpected exception (the message holds its traceback) or its process died."""


class Worker:
    """Runs ``job(*args)`` in a forked child per ``call``; the child is reused until it has to be killed.

    Use as a context manager (or call ``close``) so that no child outlives its use.
    """

    def __init__(self, job: Callable[..., Any]):
        self._job = job
        self._process = None
        self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def call(self, *args: Any, deadline: Deadline) -> Any:
        """``job(*args)`` in the child, waiting no later than ``deadline``.

        Returns the job's result (pickled across the pipe). Raises ``DeadlineReached`` when the deadline
        passes first (the child is killed), ``VerifierError`` for the job's own errors, ``WorkerCrash``
        for anything else.
        """
        self.submit(*args, deadline=deadline)
        return self.result(deadline)

    def submit(self, *args: Any, deadline: Deadline) -> None:
        """Hand ``job(*args)`` to the child (forked now if there is none) without waiting for it.

        Raises ``DeadlineReached`` if ``deadline`` has passed already, ``WorkerCrash`` if the child died
        since its last job.
        """
        if deadline.expired():
            raise _spent(deadline)
        if self._process is None:
            self._start()
        try:
            self._conn.send(args)
        except OSError:  # the child died between two jobs
            raise self._died() from None

    def result(self, deadline: Deadline) -> Any:
        """The submitted job's result, waiting no later than ``deadline``; raises as ``call``."""
        wait = deadline.remaining()
        if not self._conn.poll(max(wait, 0.0) if math.isfinite(wait) else None):
            self.close()
            raise _spent(deadline)
        try:
            kind, value = self._conn.recv()
        except EOFError:  # the child died without answering
            raise self._died() from None
        return unpack(kind, value)

    @property
    def connection(self):
        """The pipe to the child of a submitted job: ready for ``multiprocessing.connection.wait`` once
        ``result`` will not block (the job answered or the child died)."""
        return self._conn

    def close(self) -> None:
        """Kill the child, if any (it holds no state worth a clean exit)."""
        if self._process is not None:
            self._reap()

    def _start(self) -> None:
        parent_end, child_end = multiprocessing.Pipe()
        context = multiprocessing.get_context("fork")
        self._process = context.Process(target=_serve, args=(child_end, self._job, os.getpid()), daemon=True)
        self._process.start()
        child_end.close()
        self._conn = parent_end

    def _died(self) -> WorkerCrash:
        return died(self._reap())

    def _reap(self) -> int | None:
        process, self._process = self._process, None
        self._conn.close()
        process.kill()
        process.join()
        return process.exitcode


def _spent(deadline: Deadline) -> DeadlineReached:
    return DeadlineReached(f"time budget of {deadline.seconds:g} s spent")


def run_once(job: Callable[..., Any], *args: Any, deadline: Deadline) -> Any:
    """``job(*args)`` in a child of its own; raises as ``Worker.call``."""
    with Worker(job) as worker:
        return worker.call(*args, deadline=deadline)


def _serve(conn, job: Callable[..., Any], parent: int) -> None:
    """The child's loop: one reply per request until the parent closes the pipe."""
    die_with_parent(parent)
    while True:
        try:
            args = conn.recv()
        except EOFError:
            os._exit(0)  # the parent is gone or done; skip interpreter shutdown
        conn.send(reply(job, args))


def reply(job: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    """``job(*args)`` as a reply ``(kind, value)`` for ``unpack``: never raises (but ``BaseException``)."""
    try:
        return "done", job(*args)
    except DeadlineReached as reached:
        return "timeout", str(reached)
    except VerifierError as error:
        return "error", str(error)
    except Exception:  # noqa: BLE001 (a bug: its traceback goes to the parent, which reports it)
        return "crash", traceback.format_exc()


def unpack(kind: str, value: Any) -> Any:
    """A job's result from its ``reply``, or the exception it stands for (see the module docstring)."""
    if kind == "done":
        return value
    if kind == "timeout":
        raise DeadlineReached(value)
    if kind == "error":
        raise VerifierError(value)
    raise WorkerCrash(f"the verification process failed:\n{value}")


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this child when the parent dies (Linux), so that a ``verify-model`` killed
    by its caller leaves nothing computing behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child still ends at its own deadline checks
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def died(code: int | None) -> WorkerCrash:
    """The crash of a child that ended with exit ``code`` (negative: killed by that signal) unanswered."""
    if code is not None and code < 0:
        return WorkerCrash(f"the verification process died (killed by signal {signal.Signals(-code).name})")
    return WorkerCrash(f"the verification process died (exit status {code})")

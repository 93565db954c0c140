"""Batch runs on a Ray cluster: each instance is one Ray task, which runs it in a forked ``Worker`` so
that its budget is still enforced by a kill from outside the work.

Ray is the optional ``distributed`` extra and is imported only here, when a ``RayPool`` is made. Tasks
are never retried: a task whose process dies is an ``error`` row (the first line of Ray's exception as
its note), and the batch goes on. At most ``slots`` tasks are in flight, so that a task starts soon after
it is submitted and its budget, which starts with the task, is close to the wall time the caller sees.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from verifier.verify import distributed
from verifier.verify.batch import BatchRow, Instance, error_row, run_in
from verifier.verify.deadline import Deadline
from verifier.verify.worker import Worker

_kept: dict[str, Worker] = {}  # in a Ray worker process: the Worker of the batch it serves now


def _task(job: Callable[[Instance, Deadline], BatchRow], batch: str, instance: Instance, seconds: float,
          threads: int) -> BatchRow:  # fmt: skip
    """In a Ray worker process: ``instance`` in a forked ``Worker``, its budget starting now. The Worker
    (and the model its child keeps loaded) serves the next tasks of the same ``batch`` in this process."""
    worker = _kept.get(batch)
    if worker is None:
        import torch

        for old in _kept.values():
            old.close()
        _kept.clear()
        torch.set_num_threads(threads)  # before the fork: the child inherits it
        worker = _kept[batch] = Worker(job)
    return run_in(worker, instance, Deadline(seconds))


class RayPool:
    """A ``batch.Pool`` of Ray tasks on the cluster at ``address`` (``"auto"``: the one this machine
    belongs to); ``workers`` tasks in flight if above 1, else one per CPU of the cluster. Connects on creation,
    disconnects on ``close``."""

    def __init__(self, job: Callable[[Instance, Deadline], BatchRow], address: str, workers: int,
                 threads: int):  # fmt: skip
        self._ray = ray = distributed.connect(address)
        self.slots = distributed.slots(ray, workers)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_task)
        self._job = ray.put(job)
        self._threads, self._batch = threads, uuid.uuid4().hex
        self._running: dict = {}  # task reference -> (index, instance, budget, start time)

    def submit(self, index: int, instance: Instance, seconds: float) -> None:
        # the task's process has a working directory of its own: the instance's folder from the root
        located = replace(instance, base=instance.base.resolve())
        reference = self._remote.remote(self._job, self._batch, located, seconds, self._threads)
        self._running[reference] = (index, instance, seconds, time.monotonic())

    def finished(self) -> list[tuple[int, BatchRow]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        done = []
        for reference in ready:
            index, instance, seconds, start = self._running.pop(reference)
            try:
                row = self._ray.get(reference)
            except self._ray.exceptions.RayError as error:  # the task's process died, or Ray failed it
                note = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                row = error_row(instance, time.monotonic() - start, seconds, note)
            done.append((index, row))
        return done

    def close(self) -> None:
        for reference in self._running:
            self._ray.cancel(reference, force=True)
        self._ray.shutdown()

"""Branch and bound shared between several workers: local processes, or Ray actors on a cluster.

The coordinator (the process that runs ``run``) keeps the ``DomainQueue``, the counts and the deadline in
a ``driver.Search``, pops batches and hands each to a worker; a worker runs ``driver.bound_batch`` on it
(attack round when due, split, bound, check points, ONNX confirmation) and sends back a
``driver.Outcome``: the open children only, the count bounded and a checked counterexample if any. The
coordinator pushes the children back. Verdicts are the single process's: ``sat`` only with a
counterexample confirmed on the ONNX file (in the worker, through the same ``check_points``), ``unsat``
only when the queue is empty and no batch is being bounded, ``timeout`` at the deadline; the workers
are stopped (killed) as soon as the search is over. A worker that dies or fails raises ``WorkerCrash``
out of the run (a ``VerifierError`` it raises comes back as one); it never becomes a verdict.

Each worker receives the brancher, the ``Problem`` and the ``BabConfig`` pickled once (tens of
kilobytes and milliseconds on ACAS Xu; the ONNX checker reopens the model from its path, which must
exist where the worker runs, as must this package for Ray actors) and bounds with one torch thread. Local workers are fresh interpreters (a
fork of a process that already ran torch can hang in its thread pool, see ``verify.worker``), which
costs each one the imports (seconds) once per run.

Where 64 workers would bottleneck: the coordinator is one process, and per hand-out it pops (a merge and
a top-k over the whole queue), pickles the parents and unpickles and pushes their open children. With
ReLU splitting a domain carries its split state and its ``param:*`` slopes and multipliers
(about 10 kB per domain on mnist_fc 256x4, more on wider nets; a hand-out of 256 parents a few MB each
way), and that transfer, not the bounding, would limit the rate. What the design does
about it: a hand-out holds about ``BabConfig.iteration_seconds`` of a worker's bounding (the driver's
rate rule), so the coordinator's work per batch is amortised over many domains; ``IN_FLIGHT`` batches
per worker are queued so a worker never waits for the coordinator's round trip; only open children
travel back, never the closed ones. What it does not do: shard the queue itself (each worker keeping
its own subtree and sending back only its bound, with work stealing), which many more workers would need.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, wait
from pathlib import Path
from queue import SimpleQueue
from typing import Protocol

import torch

import verifier
from verifier.verify import distributed
from verifier.verify.bab import driver
from verifier.verify.deadline import Deadline
from verifier.verify.worker import WorkerCrash, die_with_parent, died, reply, unpack

IN_FLIGHT = 2  # batches queued per worker: one being bounded, the next one waiting
Task = tuple  # (parents, attack due, seconds left): the arguments of ``Shard.step``


class Pool(Protocol):
    """Workers that each bound one batch after the other (``Shard.step``)."""

    size: int

    def submit(self, task: Task) -> None:
        """Queue ``task`` for the worker with the fewest batches queued."""
        ...

    def results(self, seconds: float) -> list[driver.Outcome]:
        """The outcomes of the batches finished so far, waiting up to ``seconds`` for at least one; raises
        ``WorkerCrash`` (or the job's own error) for a worker that died or failed."""
        ...

    def close(self) -> None: ...


class Shard:
    """A worker's side: the brancher and problem, unpickled once, and one batch per ``step``."""

    def __init__(self, payload: bytes):
        torch.set_num_threads(1)
        self.brancher, self.problem, self.config = pickle.loads(payload)

    def step(self, parents: driver.Domains, attack: bool, seconds: float) -> driver.Outcome:
        return driver.bound_batch(
            self.brancher, parents, self.problem, self.config, Deadline(seconds), attack
        )


def run(brancher, roots: driver.Domains, problem: driver.Problem, config: driver.BabConfig,
        deadline: Deadline, workers: int, cluster: str | None) -> driver.BabResult:  # fmt: skip
    """``driver.run`` with the batches bounded by workers (``open_pool``), started only when the search
    is still open after ``config.local_seconds`` in this process, and stopped when it is over."""
    search = driver.Search.start(brancher, roots, problem, config, deadline)
    driver.run_until(search, problem, deadline.sub(config.local_seconds))
    if search.result is not None:
        return search.result
    pool = open_pool(brancher, problem, config, workers, cluster)
    try:
        _drive(search, pool)
    finally:
        pool.close()
    return search.result


def _drive(search: driver.Search, pool: Pool) -> None:
    """Hand out batches, ``IN_FLIGHT`` per worker at most, and record their outcomes until ``search``
    has a result."""
    busy = 0
    while search.result is None:
        free = IN_FLIGHT * pool.size - busy
        while len(search.queue) and free:
            # while the queue is short (the first levels), share it between the free slots
            parents, attack = search.next_batch(share=math.ceil(len(search.queue) / free))
            pool.submit((parents, attack, search.deadline.remaining()))
            busy, free = busy + 1, free - 1
        outcomes = pool.results(search.deadline.remaining())
        for outcome in outcomes:
            busy -= 1
            search.record(outcome, busy=busy > 0)
            if search.result is not None:
                return
        if not outcomes:
            search.settle(busy=True)


def open_pool(brancher, problem: driver.Problem, config: driver.BabConfig, workers: int,
              cluster: str | None) -> Pool:  # fmt: skip
    """Ray actors on ``cluster`` (an address or ``auto``: ``workers`` of them if above 1, else one per CPU
    of the cluster) if given, else ``workers`` local processes."""
    payload = pickle.dumps((brancher, problem, config))
    if cluster is not None:
        return RayPool(payload, workers, cluster)
    return LocalPool(payload, workers)


class LocalPool:
    """``size`` worker processes, each a fresh interpreter (``serve``; not ``multiprocessing``: the
    command line's own worker is a daemon process, which may not start those). Each has a pipe for tasks
    (drained by a thread in the worker, so that queueing a task never waits for the batch in progress)
    and one for results; a worker that dies closes the latter, which ``results`` notices. Messages are
    plain pickles (``Connection.send`` would share tensors' memory through a server the workers cannot
    reach)."""

    def __init__(self, payload: bytes, size: int):
        self.size, self._tasks, self._results, self._processes = size, [], [], []
        self._queued = [0] * size
        code = "from verifier.verify.bab.shards import serve; serve()"
        # the workers import this very package, wherever it was imported from here
        path = os.pathsep.join([str(Path(verifier.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
        for _ in range(size):
            (task_out, task_in), (result_out, result_in) = os.pipe(), os.pipe()
            process = subprocess.Popen([sys.executable, "-c", code, str(task_out), str(result_in), str(os.getpid())],
                                       pass_fds=(task_out, result_in), env=os.environ | {"PYTHONPATH": path})  # fmt: skip
            os.close(task_out)
            os.close(result_in)
            self._tasks.append(Connection(task_in, readable=False))
            self._results.append(Connection(result_out, writable=False))
            self._processes.append(process)
        for i, tasks in enumerate(self._tasks):  # once all are started: a write may wait for the imports
            try:
                tasks.send_bytes(payload)
            except OSError:  # the worker is gone
                crash = self._died(i)
                self.close()
                raise crash from None

    def submit(self, task: Task) -> None:
        i = min(range(self.size), key=self._queued.__getitem__)
        self._queued[i] += 1
        try:
            self._tasks[i].send_bytes(pickle.dumps(task))
        except OSError:  # the worker is gone
            raise self._died(i) from None

    def results(self, seconds: float) -> list[driver.Outcome]:
        wait(self._results, timeout=_finite(seconds))
        out = []
        for i, conn in enumerate(self._results):
            while conn.poll():
                try:
                    kind, value = pickle.loads(conn.recv_bytes())
                except EOFError:  # the worker died
                    raise self._died(i) from None
                self._queued[i] -= 1
                out.append(unpack(kind, value))
        return out

    def _died(self, i: int) -> WorkerCrash:
        return died(self._processes[i].wait())

    def close(self) -> None:
        """Kill the workers (they hold nothing worth a clean exit)."""
        for process in self._processes:
            process.kill()
        for process, tasks, results in zip(self._processes, self._tasks, self._results):
            process.wait()
            tasks.close()
            results.close()


def serve() -> None:
    """A local worker (``LocalPool``): its arguments are the task and result pipes and the coordinator's
    process id; it replies to one task after the other until the task pipe closes."""
    task_fd, result_fd, parent = map(int, sys.argv[1:])
    die_with_parent(parent)
    tasks, results = Connection(task_fd, writable=False), Connection(result_fd, readable=False)
    shard = Shard(tasks.recv_bytes())
    inbox: SimpleQueue = SimpleQueue()
    threading.Thread(target=_receive, args=(tasks, inbox), daemon=True).start()
    while (task := inbox.get()) is not None:
        results.send_bytes(pickle.dumps(reply(shard.step, task)))
    os._exit(0)  # the coordinator is done: skip interpreter shutdown


def _receive(tasks: Connection, inbox: SimpleQueue) -> None:
    """Move tasks from the pipe to ``inbox`` as they come; ``None`` when the pipe closes (or this fails:
    the worker then ends, which the coordinator reports)."""
    try:
        while True:
            inbox.put(pickle.loads(tasks.recv_bytes()))
    finally:
        inbox.put(None)


class RayPool:
    """Ray actors, one CPU each, on the cluster at ``address``; ``ray.shutdown()`` at ``close``."""

    def __init__(self, payload: bytes, workers: int, address: str):
        self._ray = ray = distributed.connect(address)
        try:
            self.size = distributed.slots(ray, workers)
            actor = ray.remote(num_cpus=1)(_RayShard)
            shared = ray.put(payload)
            self._actors = [actor.remote(shared) for _ in range(self.size)]
        except BaseException:
            ray.shutdown()
            raise
        self._queued = [0] * self.size
        self._pending: dict = {}  # object ref -> actor index

    def submit(self, task: Task) -> None:
        i = min(range(self.size), key=self._queued.__getitem__)
        self._queued[i] += 1
        self._pending[self._actors[i].step.remote(*task)] = i

    def results(self, seconds: float) -> list[driver.Outcome]:
        ray = self._ray
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=_finite(seconds))
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            self._queued[self._pending.pop(ref)] -= 1
            try:
                kind, value = ray.get(ref)
            except ray.exceptions.RayError as error:  # the actor died or could not be created
                raise WorkerCrash(f"a Ray branch and bound worker failed: {error}") from None
            out.append(unpack(kind, value))
        return out

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._ray.shutdown()


class _RayShard:
    """The Ray actor around ``Shard``: replies as a local worker does (``worker.reply``)."""

    def __init__(self, payload: bytes):
        self._shard = Shard(payload)

    def step(self, parents: driver.Domains, attack: bool, seconds: float) -> tuple:
        return reply(self._shard.step, (parents, attack, seconds))


def _finite(seconds: float) -> float | None:
    """A wait's timeout: ``None`` (no limit) for an infinite budget, never negative."""
    return max(seconds, 0.0) if math.isfinite(seconds) else None

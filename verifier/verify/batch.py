"""Batch runs of benchmark suites: every row of an ``instances.csv`` to one row of a results CSV.

``instances.csv`` rows are ``onnx,vnnlib,timeout_s`` with paths relative to the CSV (no header), as in
VNN-COMP. The benchmark's name is the CSV's folder name. Results are written as they come, one CSV row
per instance (``RESULT_FIELDS``), so an interrupted run keeps what it finished, and running again with
the same results file resumes it: the instances with a row there are not run again (but those whose
verdict the caller asks to rerun, by default ``error``).

Instances run in forked ``Worker``s, killed at their budget: one at a time, or several at once in a
``LocalPool``, or as Ray tasks on a cluster (``verifier.verify.cluster``, imported only then).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from verifier.errors import InputError, VerifierError
from verifier.verify.bab import driver
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.instance import VERDICTS, InstanceResult, ModelCache, VerifyConfig, verify_instance
from verifier.verify.worker import Worker, WorkerCrash

RESULT_FIELDS = ("benchmark", "onnx", "vnnlib", "verdict", "time_s", "method", "timeout_s", "note")
ROW_VERDICTS = (*VERDICTS, "error")
DEFAULT_RERUN = frozenset({"error"})


@dataclass(frozen=True)
class Instance:
    """One row of an instances CSV; ``onnx`` and ``vnnlib`` as written, relative to ``base``."""

    benchmark: str
    base: Path
    onnx: str
    vnnlib: str
    timeout: float


@dataclass(frozen=True)
class BatchRow:
    """One result; ``verdict`` is a VNN-COMP verdict or ``error`` (then ``note`` says why)."""

    benchmark: str
    onnx: str
    vnnlib: str
    verdict: str
    seconds: float
    method: str
    timeout: float
    note: str = ""


def read_instances(csv_path: str | Path) -> list[Instance]:
    """The rows of an instances CSV; ``InputError`` if it cannot be read or a row is malformed."""
    path = Path(csv_path)
    try:
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    except OSError as error:
        raise InputError(f"cannot read instances file {path}: {error.strerror}") from error
    instances = []
    for number, row in enumerate(rows, start=1):
        if len(row) != 3:
            raise InputError(f"{path}:{number}: expected onnx,vnnlib,timeout; got {','.join(row)!r}")
        try:
            timeout = float(row[2])
        except ValueError:
            raise InputError(f"{path}:{number}: timeout {row[2]!r} is not a number") from None
        instances.append(Instance(path.parent.name, path.parent, row[0].strip(), row[1].strip(), timeout))
    return instances


def budget(instance: Instance, scale: float = 1.0, cap: float | None = None) -> float:
    """The time budget of one instance: its timeout times ``scale``, at most ``cap``."""
    seconds = instance.timeout * scale
    return seconds if cap is None else min(seconds, cap)


def run_one(instance: Instance, deadline: Deadline, config: VerifyConfig, cache: ModelCache) -> BatchRow:
    """Verify one instance in this process; an input error becomes an ``error`` row, not an exception."""
    try:
        result = verify_instance(
            instance.base / instance.onnx, instance.base / instance.vnnlib, config, deadline, cache
        )
    except VerifierError as error:
        result = InstanceResult("error", "", deadline.elapsed())
        return _row(instance, result, deadline.seconds, str(error).splitlines()[0])
    return _row(instance, result, deadline.seconds, search_note(result.verdict, result.stats))


def search_note(verdict: str, stats: dict) -> str:
    """A suite row's note on an undecided branch and bound (from its result's ``stats``): why it gave up,
    and where it stood."""
    stopped = stats.get("bab_stopped", "") if verdict == "unknown" else ""
    bound = stats.get("bab_bound") if verdict in ("unknown", "timeout") else None
    notes = [f"branch and bound gave up: {stopped}" if stopped else "",
             f"lowest open score {bound:.3g} (verified above 0)" if bound is not None else ""]  # fmt: skip
    return "; ".join(n for n in notes if n)


def run_in(worker: Worker, instance: Instance, deadline: Deadline) -> BatchRow:
    """``run_one`` on ``instance`` in ``worker``; a kill at the deadline is a ``timeout`` row, a dead or
    crashed worker an ``error`` row."""
    return _guarded(instance, deadline, lambda: worker.call(instance, deadline, deadline=deadline))


def _guarded(instance: Instance, deadline: Deadline, step: Callable[[], BatchRow | None]) -> BatchRow | None:
    try:
        return step()
    except DeadlineReached:  # the worker was killed at the deadline
        return _row(instance, InstanceResult("timeout", "", deadline.elapsed()), deadline.seconds)
    except WorkerCrash as crash:  # not a verdict: an error row naming how the worker failed
        return error_row(instance, deadline.elapsed(), deadline.seconds, _crash_note(crash))


def error_row(instance: Instance, seconds: float, budget_s: float, note: str) -> BatchRow:
    """The ``error`` row of an instance whose worker failed, ``note`` saying how."""
    return _row(instance, InstanceResult("error", "", seconds), budget_s, note)


def _crash_note(crash: WorkerCrash) -> str:
    """The crash message's first line, and its last (the exception, after a traceback) if there are more."""
    lines = [line.strip() for line in str(crash).splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _row(instance: Instance, result: InstanceResult, seconds: float, note: str = "") -> BatchRow:
    return BatchRow(
        instance.benchmark,
        instance.onnx,
        instance.vnnlib,
        result.verdict,
        result.seconds,
        result.method,
        seconds,
        note,
    )


class Pool(Protocol):
    """Where a batch's instances run: at most ``slots`` at a time, each within its own budget."""

    slots: int

    def submit(self, index: int, instance: Instance, seconds: float) -> None:
        """Start ``instance`` with a budget of ``seconds``; ``index`` names it in ``finished``."""

    def finished(self) -> list[tuple[int, BatchRow]]:
        """Wait until at least one submitted instance ends; ``(index, row)`` of every one that has."""

    def close(self) -> None:
        """Stop whatever still runs."""


class LocalPool:
    """``slots`` forked ``Worker``s on this machine, all waited for from this one thread (so every fork
    happens in a single-threaded process); a worker killed at a deadline or dead is re-forked."""

    def __init__(self, job: Callable[[Instance, Deadline], BatchRow], slots: int):
        self.slots = slots
        self._idle = [Worker(job) for _ in range(slots)]
        self._busy: list[tuple[Worker, int, Instance, Deadline]] = []
        self._done: list[tuple[int, BatchRow]] = []

    def submit(self, index: int, instance: Instance, seconds: float) -> None:
        worker, deadline = self._idle.pop(), Deadline(seconds)
        early = _guarded(instance, deadline, lambda: worker.submit(instance, deadline, deadline=deadline))
        if early is None:
            self._busy.append((worker, index, instance, deadline))
        else:  # no budget, or the worker died between jobs
            self._idle.append(worker)
            self._done.append((index, early))

    def finished(self) -> list[tuple[int, BatchRow]]:
        if not self._done:
            soonest = min(deadline.remaining() for _, _, _, deadline in self._busy)
            ready = wait([worker.connection for worker, *_ in self._busy],
                         max(soonest, 0.0) if math.isfinite(soonest) else None)  # fmt: skip
            for job in list(self._busy):
                worker, index, instance, deadline = job
                if worker.connection in ready or deadline.expired():
                    self._busy.remove(job)
                    self._idle.append(worker)
                    collect = functools.partial(worker.result, deadline)
                    self._done.append((index, _guarded(instance, deadline, collect)))
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for worker in self._idle + [worker for worker, *_ in self._busy]:
            worker.close()


@dataclass(frozen=True)
class Spread:
    """Where a batch runs: ``workers`` local processes, or a Ray cluster at ``cluster`` (``"auto"``: the
    one this machine belongs to) with ``workers`` tasks in flight (1: one per CPU of the cluster); each
    instance uses ``threads`` torch threads."""

    workers: int = 1
    cluster: str | None = None
    threads: int = 1

    def pool(self, job: Callable[[Instance, Deadline], BatchRow]) -> Pool:
        if self.cluster is None:
            return LocalPool(job, self.workers)
        from verifier.verify.cluster import RayPool  # imports Ray, which only --cluster needs

        return RayPool(job, self.cluster, self.workers, self.threads)


def instance_config(config: VerifyConfig, spread: Spread) -> VerifyConfig:
    """``config`` as each instance of a batch runs it: alone (no workers of its own), and with several
    local workers, its branch and bound's queue of domains held to a share of a quarter of the physical
    memory (unless ``config`` sets that budget; see ``driver.queue_budget``): searches side by side must
    not together exhaust it."""
    config = replace(config, workers=1, cluster=None)
    if spread.cluster is None and spread.workers > 1 and config.bab.max_queue_bytes is None:
        share = driver.physical_memory() // (4 * spread.workers)
        config = replace(config, bab=replace(config.bab, max_queue_bytes=share))
    return config


def run_batch(
    instances: list[Instance],
    config: VerifyConfig,
    results_path: str | Path | None = None,
    scale: float = 1.0,
    cap: float | None = None,
    progress: bool = True,
    spread: Spread = Spread(),
    rerun: Collection[str] = DEFAULT_RERUN,
) -> list[BatchRow]:
    """Run every instance, with a progress bar of running verdict counts; returns the rows in instance
    order.

    Each instance runs in a forked ``Worker`` (which keeps the last model loaded), killed when the
    instance's budget is spent: a stuck instance becomes a ``timeout`` row, a worker that crashes or dies
    an ``error`` row, and the next instance starts in a fresh child. ``spread`` runs several instances
    at a time (each alone: ``config``'s own workers are not used). With ``results_path`` (CSV with
    ``RESULT_FIELDS``), rows are written as they finish; a file left by an earlier run of these instances
    is resumed: its rows are kept but those whose verdict is in ``rerun``, and only the rest run.
    Raises ``InputError`` for a results file that is not such a file.
    """
    rows: list[BatchRow | None] = [None] * len(instances)
    if results_path:
        old = read_results(results_path) if Path(results_path).is_file() else []
        rows = resume(instances, old, rerun)
    todo = [i for i, row in enumerate(rows) if row is None]
    job = functools.partial(run_one, config=instance_config(config, spread), cache=ModelCache())
    kept = [row for row in rows if row is not None]
    with contextlib.closing(spread.pool(job)) as pool, _results_writer(results_path, kept) as writer:
        # No tqdm monitor thread: a worker forked while it holds a lock (say, stderr's) would inherit it held.
        tqdm.monitor_interval = 0
        bar = tqdm(total=len(instances), initial=len(instances) - len(todo), unit="inst",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        counts = Counter(row.verdict for row in rows if row is not None)
        queue = iter(todo)

        def start(index: int) -> None:
            pool.submit(index, instances[index], budget(instances[index], scale, cap))

        for index in itertools.islice(queue, pool.slots):
            start(index)
        while any(row is None for row in rows):
            for index, row in pool.finished():
                rows[index] = row
                counts[row.verdict] += 1
                bar.set_description(row.benchmark)
                bar.set_postfix_str(" ".join(f"{k}={counts[k]}" for k in sorted(counts)), refresh=False)
                bar.update()
                if writer:
                    writer(row)
                for following in itertools.islice(queue, 1):
                    start(following)
        bar.close()
    return rows


def rerun_verdicts(text: str) -> frozenset[str]:
    """The verdicts of a ``--rerun`` comma list; ``InputError`` for one that is not a result verdict."""
    verdicts = frozenset(v.strip() for v in text.split(",") if v.strip())
    unknown = sorted(verdicts - set(ROW_VERDICTS))
    if unknown:
        raise InputError(f"--rerun: {', '.join(unknown)} is not one of {', '.join(ROW_VERDICTS)}")
    return verdicts


def read_results(path: str | Path) -> list[BatchRow]:
    """The rows of a results CSV written by ``run_batch``; ``InputError`` for anything else."""
    try:
        with Path(path).open(newline="") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read results file {path}: {error}") from error
    if not lines:
        return []
    if tuple(lines[0]) != RESULT_FIELDS:
        raise InputError(f"{path} is not a results file (header {','.join(lines[0])!r}); not overwriting it")
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        try:
            benchmark, onnx, vnnlib, verdict, seconds, method, timeout, note = fields
            rows.append(
                BatchRow(benchmark, onnx, vnnlib, verdict, float(seconds), method, float(timeout), note)
            )
        except ValueError:
            raise InputError(f"{path}:{number}: malformed results row {','.join(fields)!r}") from None
    return rows


def resume(instances: list[Instance], old: list[BatchRow], rerun: Collection[str]) -> list[BatchRow | None]:
    """Per instance, its row in ``old`` (matched on benchmark, onnx and vnnlib, in order when an instance
    is listed twice) unless that row's verdict is in ``rerun``; ``None``: to run. ``InputError`` when
    ``old`` holds rows of other instances (the results file of another run)."""
    by_key: dict[tuple[str, str, str], list[BatchRow]] = {}
    for row in old:
        by_key.setdefault((row.benchmark, row.onnx, row.vnnlib), []).append(row)
    kept = []
    for instance in instances:
        found = by_key.get((instance.benchmark, instance.onnx, instance.vnnlib))
        row = found.pop(0) if found else None
        kept.append(row if row is not None and row.verdict not in rerun else None)
    stray = [row for rows in by_key.values() for row in rows]
    if stray:
        first = stray[0]
        raise InputError(f"the results file holds {len(stray)} row(s) of instances not in this run, e.g. "
                         f"{first.benchmark} {first.onnx} {first.vnnlib}; give another --results file")  # fmt: skip
    return kept


@contextlib.contextmanager
def _results_writer(
    path: str | Path | None, kept: list[BatchRow]
) -> Iterator[Callable[[BatchRow], None] | None]:
    """A function appending one row to ``path`` (flushed at once), after ``path`` has been replaced by
    the header and the ``kept`` rows (at once: an interruption leaves the old file); ``None`` without
    a path."""
    if not path:
        yield None
        return
    temporary = Path(f"{path}.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RESULT_FIELDS)
        writer.writerows(result_fields(row) for row in kept)
    os.replace(temporary, path)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")

        def append(row: BatchRow) -> None:
            writer.writerow(result_fields(row))
            handle.flush()

        yield append


def result_fields(row: BatchRow) -> list[str]:
    """The CSV fields of ``row``, in ``RESULT_FIELDS`` order."""
    return [
        row.benchmark,
        row.onnx,
        row.vnnlib,
        row.verdict,
        f"{row.seconds:.3f}",
        row.method,
        f"{row.timeout:g}",
        row.note,
    ]

"""Batch runs of benchmark suites: every row of an ``instances.csv`` to one row of a results CSV.

``instances.csv`` rows are ``onnx,vnnlib,timeout_s`` with paths relative to the CSV (no header), as in
VNN-COMP. The benchmark's name is the CSV's folder name. Results are written as they come, one CSV row
per instance (``RESULT_FIELDS``), so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import contextlib
import csv
import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from verifier.errors import InputError, VerifierError
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.instance import InstanceResult, ModelCache, VerifyConfig, verify_instance
from verifier.verify.worker import Worker

RESULT_FIELDS = ("benchmark", "onnx", "vnnlib", "verdict", "time_s", "method", "timeout_s", "note")


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
    return _row(instance, result, deadline.seconds)


def _run_in(worker: Worker, instance: Instance, deadline: Deadline) -> BatchRow:
    try:
        return worker.call(instance, deadline, deadline=deadline)
    except DeadlineReached:  # the worker was killed at the deadline
        return _row(instance, InstanceResult("timeout", "", deadline.elapsed()), deadline.seconds)


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


def run_batch(
    instances: list[Instance],
    config: VerifyConfig,
    results_path: str | Path | None = None,
    scale: float = 1.0,
    cap: float | None = None,
    progress: bool = True,
) -> list[BatchRow]:
    """Run every instance in order, with a progress bar of running verdict counts.

    The instances run one after the other in a forked ``Worker`` (which keeps the last model loaded),
    killed when an instance's budget is spent: a stuck instance becomes a ``timeout`` row and the next
    one starts in a fresh child. Writes ``results_path`` (CSV with ``RESULT_FIELDS``) row by row when
    given. Returns all rows; a crash of the work (a bug) raises ``WorkerCrash``.
    """
    rows: list[BatchRow] = []
    counts: Counter[str] = Counter()
    worker = Worker(functools.partial(run_one, config=config, cache=ModelCache()))
    with worker, open(results_path, "w", newline="") if results_path else contextlib.nullcontext() as handle:
        writer = csv.writer(handle, lineterminator="\n") if handle else None
        if writer:
            writer.writerow(RESULT_FIELDS)
        # No tqdm monitor thread: a worker forked while it holds a lock (say, stderr's) would inherit it held.
        tqdm.monitor_interval = 0
        bar = tqdm(instances, unit="inst", disable=not progress, dynamic_ncols=True)
        for instance in bar:
            bar.set_description(instance.benchmark)
            row = _run_in(worker, instance, Deadline(budget(instance, scale, cap)))
            rows.append(row)
            counts[row.verdict] += 1
            bar.set_postfix_str(" ".join(f"{k}={counts[k]}" for k in sorted(counts)))
            if writer:
                writer.writerow(result_fields(row))
                handle.flush()
    return rows


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

"""Benchmark verify-model's batch mode on VNN-COMP suites and store the figures as JSON.

    .venv/bin/python scripts/bench_vnncomp.py [BENCHMARK_DIR ...] --timeout-cap 30 --out bench.json

Each BENCHMARK_DIR holds an ``instances.csv`` (and optionally ``reference_results.csv``); the default
is test, acasxu, rl_benchmarks and mnist_fc under ``../shared/benchmarks``. Per benchmark the JSON
records solved / total, every verdict count, wrong answers (contradictions of the reference
consensus), the median time, and how many of the same instances the reference consensus solved.
``--every K`` runs every K-th instance only, for quick looks; per-instance rows go to ``--results-dir``.

``--mode batch`` (default) runs each suite through the batch mode (one worker process, models kept
between instances; times exclude start-up). ``--mode process`` runs every instance as its own
``verify-model`` process, as the competition harness does, and records each one's wall time, start-up
included; with ``--server SOCKET`` those processes go through the warm server listening there (started
beforehand with ``verify-model --serve --server SOCKET``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from verifier.cli import default_threads
from verifier.verify.bab.relu_split import BRANCHING, ReluSplitConfig
from verifier.verify.batch import (
    RESULT_FIELDS,
    BatchRow,
    Instance,
    Spread,
    budget,
    read_instances,
    result_fields,
    run_batch,
    search_note,
)
from verifier.verify.instance import VerifyConfig
from verifier.verify.report import BenchmarkSummary, format_table, read_consensus, summarise

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = [REPO.parent / "shared" / "benchmarks" / name for name in ("test", "acasxu", "rl_benchmarks", "mnist_fc")]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "benchmarks", nargs="*", type=Path, default=DEFAULT_BENCHMARKS, help="benchmark folders"
    )
    parser.add_argument(
        "--timeout-cap", type=float, default=30.0, help="per-instance time cap (s), default 30"
    )
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply the listed timeouts")
    parser.add_argument(
        "--attack-seconds", type=float, default=5.0, help="extra attack budget (s), default 5"
    )
    parser.add_argument("--method", default="auto", help="bound method (default auto: ibp then crown)")
    parser.add_argument("--every", type=int, default=1, help="run every K-th instance only")
    parser.add_argument("--threads", type=int,
                        help="torch threads per instance (default: as verify-model, the cores shared among "
                             "--workers)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="--mode batch: instances at a time, each in its own worker; --mode process: "
                             "the processes' --workers (branch and bound over N processes) (default 1)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench_vnncomp.json"), help="JSON output file")
    parser.add_argument("--results-dir", type=Path, help="write <benchmark>.csv per-instance results here")
    parser.add_argument("--mode", choices=("batch", "process"), default="batch",
                        help="batch mode, or one verify-model process per instance (wall time)")  # fmt: skip
    parser.add_argument("--server", metavar="SOCKET", help="--mode process: run through this warm server")
    parser.add_argument("--branching", choices=BRANCHING, default=ReluSplitConfig().branching,
                        help="ReLU-splitting branching rule (batch mode)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = default_threads(args.workers, cluster=False)
    return args


def run_benchmark(folder: Path, config: VerifyConfig, args) -> tuple[BenchmarkSummary, float, list[BatchRow]]:
    """Run one benchmark folder (``--mode``); returns its summary, the wall time in seconds and the rows."""
    instances = read_instances(folder / "instances.csv")[:: args.every]
    results = args.results_dir / f"{folder.name}.csv" if args.results_dir else None
    if results:  # a fresh file: run_batch would resume an old one, and the wall time would not be the suite's
        results.unlink(missing_ok=True)
    start = time.monotonic()
    if args.mode == "batch":
        spread = Spread(args.workers, None, args.threads)
        rows = run_batch(instances, config, results, args.timeout_scale, args.timeout_cap,
                         not args.no_progress, spread)  # fmt: skip
    else:
        rows = [
            run_process(inst, budget(inst, args.timeout_scale, args.timeout_cap), args) for inst in instances
        ]
        if results:
            with results.open("w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerows([RESULT_FIELDS, *(result_fields(row) for row in rows)])
    (summary,) = summarise(rows, {folder.name: read_consensus(folder / "reference_results.csv")})
    return summary, time.monotonic() - start, rows


def run_process(instance: Instance, seconds: float, args) -> BatchRow:
    """One ``verify-model`` process on ``instance``; its wall time and the verdict of its result file."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.txt"
        command = [sys.executable, "-m", "verifier.cli", str(instance.base / instance.onnx),
                   str(instance.base / instance.vnnlib), "--timeout", f"{seconds:g}", "--out", str(out),
                   "--method", args.method, "--attack-seconds", f"{args.attack_seconds:g}",
                   "--threads", str(args.threads), "--workers", str(args.workers), "--json"]  # fmt: skip
        command += ["--server", args.server] if args.server else []
        start = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
        wall = time.monotonic() - start
        text = out.read_text() if out.exists() else ""
    verdict = text.split("\n", 1)[0] if done.returncode == 0 and text else "error"
    reported = _reported(done.stdout)
    if verdict == "error":
        note = (done.stderr.strip().splitlines() or ["no result file"])[-1]
    else:  # as batch mode's rows say it
        note = search_note(verdict, reported.get("stats", {}))
    row = BatchRow(instance.benchmark, instance.onnx, instance.vnnlib, verdict, wall,
                   str(reported.get("method") or ""), seconds, note)  # fmt: skip
    if not args.no_progress:
        print(f"{instance.benchmark} {instance.vnnlib}: {verdict} {wall:.2f} s", file=sys.stderr)
    return row


def _reported(stdout: str) -> dict:
    """The object of ``verify-model --json``'s line (the stage that decided, the stats; {} when it printed
    none)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            reported = json.loads(line)
        except ValueError:
            continue
        if isinstance(reported, dict):
            return reported
    return {}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.results_dir:
        args.results_dir.mkdir(parents=True, exist_ok=True)
    config = VerifyConfig(method=args.method, extra_attack_seconds=args.attack_seconds,
                          relu_split=ReluSplitConfig(branching=args.branching))  # fmt: skip
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "benchmarks"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "benchmarks": {},
    }  # fmt: skip
    summaries = []
    for folder in args.benchmarks:
        summary, seconds, rows = run_benchmark(folder, config, args)
        summaries.append(summary)
        report["benchmarks"][folder.name] = summary.as_dict() | {
            "wall_time_s": round(seconds, 1),
            "instance_times_s": [round(row.seconds, 3) for row in rows],
        }
        args.out.write_text(
            json.dumps(report, indent=2) + "\n"
        )  # after every benchmark: partial runs survive
    print(format_table(summaries))
    wrong = sum(b["wrong"] for b in report["benchmarks"].values())
    print(f"\nwrong answers: {wrong}; figures in {args.out}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-benchmark summary of a batch run, compared with the reference results beside the instances CSV.

``reference_results.csv`` (``tool,onnx,vnnlib,result,time_s,competition``) holds one ``consensus`` row
per instance: the majority verdict of the competition's tools. An instance *agrees* when our verdict
is ``sat`` or ``unsat`` and equals the consensus; it is a *contradiction* when ours is ``sat`` or
``unsat`` and the consensus is the opposite one. Contradictions are wrong answers (or a disputed
reference) and are always listed by name.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from verifier.verify.batch import BatchRow

DECIDED = ("sat", "unsat")
COLUMNS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class BenchmarkSummary:
    name: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    times: list[float] = field(default_factory=list)
    has_reference: bool = False
    reference_solved: int = 0
    agree: int = 0
    contradictions: list[tuple[str, str, str, str]] = field(default_factory=list)
    decided_by: dict[str, int] = field(default_factory=dict)  # solved instances per deciding stage

    @property
    def solved(self) -> int:
        return self.counts["sat"] + self.counts["unsat"]

    @property
    def median_time(self) -> float:
        return statistics.median(self.times) if self.times else 0.0

    def as_dict(self) -> dict:
        """JSON-ready figures (what ``scripts/bench_vnncomp.py`` stores)."""
        return {
            "total": self.total, "solved": self.solved, **self.counts, "median_time_s": self.median_time,
            "reference": self.has_reference, "reference_solved": self.reference_solved, "agree": self.agree,
            "wrong": len(self.contradictions), "decided_by": dict(sorted(self.decided_by.items())),
            "contradictions": [dict(zip(("onnx", "vnnlib", "ours", "reference"), c)) for c in self.contradictions],
        }  # fmt: skip


def read_consensus(path: str | Path) -> dict[tuple[str, str], str]:
    """``{(onnx, vnnlib): consensus result}`` from a ``reference_results.csv``; empty if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {
            (row["onnx"], row["vnnlib"]): row["result"].strip().lower()
            for row in csv.DictReader(handle)
            if row.get("tool") == "consensus"
        }


def summarise(
    rows: list[BatchRow], references: dict[str, dict[tuple[str, str], str]]
) -> list[BenchmarkSummary]:
    """One summary per benchmark (in order of first appearance); ``references`` maps a benchmark name to
    its consensus table (missing or empty: no comparison)."""
    summaries: dict[str, BenchmarkSummary] = {}
    for row in rows:
        reference = references.get(row.benchmark, {})
        summary = summaries.setdefault(
            row.benchmark, BenchmarkSummary(row.benchmark, has_reference=bool(reference))
        )
        summary.total += 1
        summary.counts[row.verdict] = summary.counts.get(row.verdict, 0) + 1
        summary.times.append(row.seconds)
        if row.verdict in DECIDED:  # a row without its stage counts as "unrecorded"
            stage = row.method or "unrecorded"
            summary.decided_by[stage] = summary.decided_by.get(stage, 0) + 1
        expected = reference.get((row.onnx, row.vnnlib))
        if expected in DECIDED:
            summary.reference_solved += 1
        if row.verdict in DECIDED and expected in DECIDED:
            if row.verdict == expected:
                summary.agree += 1
            else:
                summary.contradictions.append((row.onnx, row.vnnlib, row.verdict, expected))
    return list(summaries.values())


def format_table(summaries: list[BenchmarkSummary]) -> str:
    """Aligned plain-text table, one line per benchmark, then every contradiction by name."""
    header = ("benchmark", "total", *COLUMNS, "solved", "ref solved", "agree", "wrong", "median s")
    lines = [header]
    for s in summaries:
        ref = (
            (str(s.reference_solved), str(s.agree), str(len(s.contradictions)))
            if s.has_reference
            else ("-",) * 3
        )
        counts = tuple(str(s.counts.get(c, 0)) for c in COLUMNS)
        lines.append((s.name, str(s.total), *counts, str(s.solved), *ref, f"{s.median_time:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    ]
    for s in summaries:
        for onnx, vnnlib, ours, expected in s.contradictions:
            text.append(f"CONTRADICTION {s.name}: {onnx} {vnnlib}: ours {ours}, reference {expected}")
    return "\n".join(text)

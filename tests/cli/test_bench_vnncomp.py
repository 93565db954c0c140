"""scripts/bench_vnncomp.py --mode process: each row from the process's result file and its ``--json`` line."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from verifier.verify.batch import Instance

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vnncomp", REPO / "scripts" / "bench_vnncomp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(verdict: str, reported: dict, returncode: int = 0, stderr: str = ""):
    """A stand-in for ``subprocess.run`` of ``verify-model``: writes the result file, prints the JSON line."""

    def run(command, **kwargs):
        Path(command[command.index("--out") + 1]).write_text(verdict + "\n")
        stdout = "some progress\n" + json.dumps(reported) + "\n"
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    return run


@pytest.mark.parametrize(
    "verdict, reported, stage, note",
    [
        ("unsat", {"verdict": "unsat", "method": "bab-relu", "stats": {"domains": 9}}, "bab-relu", ""),
        ("unknown", {"verdict": "unknown", "method": "", "stats": {"bab_stopped": "domain budget spent"}}, "",
         "branch and bound gave up: domain budget spent"),
        ("timeout", {"verdict": "timeout", "stats": {"bab_stopped": "ignored"}}, "", ""),
        ("timeout", {"verdict": "timeout", "stats": {"bab_bound": -0.0123}}, "",
         "lowest open score -0.0123 (verified above 0)"),
    ],
)  # fmt: skip
def test_a_process_row_takes_the_stage_and_why_branch_and_bound_gave_up(bench, monkeypatch, tmp_path, verdict,
                                                                        reported, stage, note):  # fmt: skip
    monkeypatch.setattr(bench.subprocess, "run", fake_run(verdict, reported))
    args = bench.parse_args(["--mode", "process"])
    row = bench.run_process(Instance("suite", tmp_path, "net.onnx", "prop.vnnlib", 30.0), 30.0, args)
    assert (row.verdict, row.method, row.note) == (verdict, stage, note)


def test_a_failed_process_row_is_an_error_naming_its_last_words(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(
        bench.subprocess, "run", fake_run("unsat", {}, returncode=1, stderr="Traceback\nBoom\n")
    )
    row = bench.run_process(Instance("suite", tmp_path, "n.onnx", "p.vnnlib", 9.0), 9.0, bench.parse_args([]))
    assert (row.verdict, row.method, row.note) == ("error", "", "Boom")

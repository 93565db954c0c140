"""verify-model on the bundled models: verdicts, result files, timeouts, errors and batch mode."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from tests.verify.paths import HARD, REPO, TEST_NANO, TEST_SAT, TEST_UNSAT
from verifier.cli import main
from verifier.spec.vnnlib import load_property
from verifier.verify.onnx_check import OnnxChecker, violated_disjunct
from verifier.verify.result_file import parse_vnncomp
from verifier.verify.standard import TOOL_NAME


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_sat_writes_a_counterexample_that_checks_out(tmp_path, capsys):
    out_file = tmp_path / "result.txt"
    status, out, err = run(capsys, *TEST_SAT, "--out", out_file)
    assert status == 0 and err == ""
    text = out_file.read_text()
    assert out == text
    verdict, x, y = parse_vnncomp(text)
    assert verdict == "sat"
    (case,) = load_property(TEST_SAT[1]).cases
    assert np.all(x >= case.lower) and np.all(x <= case.upper)
    checker = OnnxChecker(str(TEST_SAT[0]))
    y_again = checker.run(x.astype(np.float32))
    np.testing.assert_array_equal(y_again, y.astype(np.float32))
    assert violated_disjunct(case, y_again) is not None


def test_unsat(tmp_path, capsys):
    status, out, _ = run(capsys, *TEST_UNSAT, "--out", tmp_path / "r.txt", "--json")
    assert status == 0
    assert '"verdict": "unsat"' in out and (tmp_path / "r.txt").read_text() == "unsat\n"


def test_timeout_is_reported_and_written(tmp_path, capsys):
    """Stopping within the budget in wall-clock time: test_process_stops_within_its_budget_including_start_up
    (slow, as it measures time). The budget is far below what the instance needs: at 0.5 s, input
    splitting sometimes proved it in time (this test then failed, whichever code ran)."""
    status, out, _ = run(
        capsys, *HARD, "--timeout", "0.05", "--attack-seconds", "100", "--out", tmp_path / "r"
    )
    assert status == 0 and out == "timeout\n" and (tmp_path / "r").read_text() == "timeout\n"


@pytest.mark.parametrize(
    "args",
    [
        ("--method", "beta-crown", *TEST_SAT),
        ("--method", "nope", *TEST_SAT),
        ("--device", "tpu", *TEST_SAT),
        (TEST_SAT[0],),
        ("--timeout", "soon", *TEST_SAT),
    ],
)
def test_usage_errors_are_one_line_with_status_2(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("verify-model: error:")


def test_input_errors_are_one_line_with_status_1(tmp_path, capsys):
    status, out, err = run(capsys, tmp_path / "missing.onnx", TEST_SAT[1])
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "missing.onnx" in err


def test_name_and_version(capsys):
    assert run(capsys, "--version")[1].strip() == "0.1.0"
    assert run(capsys, "--name")[1] == TOOL_NAME + "\n"


def test_batch_mode_prints_a_table_with_reference_agreement(tmp_path, capsys):
    bench = tmp_path / "mini"
    bench.mkdir()
    rows = [(TEST_NANO, "unsat"), (TEST_SAT, "sat"), (TEST_UNSAT, "sat")]  # the last reference is wrong
    (bench / "instances.csv").write_text("".join(f"{m},{p},60\n" for (m, p), _ in rows))
    (bench / "reference_results.csv").write_text(
        "tool,onnx,vnnlib,result,time_s,competition\n"
        + "".join(f"consensus,{m},{p},{r},,test\n" for (m, p), r in rows)
    )
    results = tmp_path / "results.csv"
    status, out, _ = run(
        capsys, "--instances", bench / "instances.csv", "--results", results, "--no-progress"
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split() == [
        "mini",
        "3",
        "1",
        "2",
        "0",
        "0",
        "0",
        "3",
        "3",
        "2",
        "1",
        lines[1].split()[-1],
    ]
    assert lines[2].startswith("CONTRADICTION mini:") and "ours unsat, reference sat" in lines[2]
    assert len(results.read_text().splitlines()) == 4


def test_installed_entry_point_runs_as_a_process(tmp_path):
    """One real process: console script (or ``python -m verifier.cli``), start-up counted in the budget."""
    script = REPO / ".venv" / "bin" / "verify-model"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "verifier.cli"]
    out_file = tmp_path / "r.txt"
    done = subprocess.run(
        [*command, *map(str, TEST_NANO), "--timeout", "60", "--out", str(out_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "unsat\n" and out_file.read_text() == "unsat\n"


@pytest.mark.slow
def test_process_stops_within_its_budget_including_start_up(tmp_path):
    budget = 15.0
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            *map(str, HARD),
            "--timeout",
            str(budget),
            "--attack-seconds",
            "1000",
            "--method",
            "crown",  # no branch and bound, which decides this instance in time
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == "timeout\n"
    assert time.monotonic() - start < budget + 2.5

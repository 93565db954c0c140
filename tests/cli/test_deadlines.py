"""verify-model ends at its budget even when the work does not stop: the parent kills the child and
reports ``timeout`` itself, in every output mode; a crashing child is an error, never a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.verify.paths import TEST_NANO, TEST_SAT, shared
from verifier.cli import main
from verifier.verify import batch, instance, query, single
from verifier.verify.result_file import parse_vnncomp


def _stuck(*args, **kwargs):
    time.sleep(600)  # a computation that never polls its deadline


def _buggy(*args, **kwargs):
    raise ZeroDivisionError("a bug in the work")


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_stuck_run_reports_timeout_with_its_result_file(monkeypatch, tmp_path, capsys, json_mode):
    monkeypatch.setattr(single, "verify_instance", _stuck)
    out_file = tmp_path / "result.txt"
    start = time.monotonic()
    status, out, err = run(capsys, *TEST_SAT, "--timeout", "0.5", "--out", out_file, *["--json"] * json_mode)
    assert time.monotonic() - start < 30  # generous: far less than the stuck child's 600 s
    assert status == 0 and err == ""
    assert out_file.read_text() == "timeout\n"
    assert (json.loads(out)["verdict"] if json_mode else out) == ("timeout" if json_mode else "timeout\n")


def test_a_run_that_stops_itself_before_the_deadline_reports_its_stats(monkeypatch, capsys):
    """The work stops ``single.report_margin`` before the parent's deadline, so its timeout (with the
    seconds per stage) reaches the output before the parent would kill it."""

    def slow_schedule(loaded, methods, config, deadline, stats):
        stats["seconds"] = {"attack": 0.25}
        while True:  # polls its deadline, as every stage does
            deadline.check()
            time.sleep(0.01)

    monkeypatch.setattr(instance, "decide", slow_schedule)
    status, out, err = run(capsys, *TEST_SAT, "--timeout", "3", "--json")
    result = json.loads(out)
    assert status == 0 and err == ""
    assert result["verdict"] == "timeout" and result["stats"] == {"seconds": {"attack": 0.25}}
    assert 3 - single.report_margin(3) <= result["time_s"] < 3


def test_a_crash_in_the_work_is_an_error_with_its_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(single, "verify_instance", _buggy)
    status, out, err = run(capsys, *TEST_SAT, "--timeout", "60", "--out", tmp_path / "r.txt")
    assert status == 1 and out == "" and not (tmp_path / "r.txt").exists()
    assert err.startswith("verify-model: error:") and "ZeroDivisionError: a bug in the work" in err


def test_the_standard_verify_command_reports_timed_out(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(query, "decide_query", _stuck)
    status, out, err = run(capsys, "verify", TEST_SAT[1], "--network", f"n={TEST_SAT[0]}", "--timeout", "0.5")
    assert status == 0 and out == "timed-out\n" and err == ""
    monkeypatch.setattr(query, "decide_query", _buggy)
    status, out, err = run(capsys, "verify", TEST_SAT[1], "--network", f"n={TEST_SAT[0]}")
    assert status == 1 and out == "" and "ZeroDivisionError" in err


def test_a_stuck_instance_does_not_sink_the_batch(monkeypatch, tmp_path, capsys):
    def stuck_on_sat_model(onnx_path, *args):
        if "test_sat" in str(onnx_path):
            _stuck()
        return instance.verify_instance(onnx_path, *args)

    monkeypatch.setattr(batch, "verify_instance", stuck_on_sat_model)
    bench = tmp_path / "mini"
    bench.mkdir()
    (bench / "instances.csv").write_text(f"{TEST_NANO[0]},{TEST_NANO[1]},60\n{TEST_SAT[0]},{TEST_SAT[1]},1\n"
                                         f"{TEST_NANO[0]},{TEST_NANO[1]},60\n")  # fmt: skip
    results = tmp_path / "results.csv"
    status, _, _ = run(capsys, "--instances", bench / "instances.csv", "--results", results, "--no-progress")
    assert status == 0
    rows = [line.split(",") for line in results.read_text().splitlines()[1:]]
    assert [row[3] for row in rows] == ["unsat", "timeout", "unsat"]
    assert float(rows[1][4]) < 30


def _busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.slow
def test_a_hard_instance_ends_within_its_budget_while_both_cores_are_busy(tmp_path):
    onnx = shared("oval21", "onnx", "cifar_deep_kw.onnx")
    vnnlib = shared("oval21", "vnnlib", "cifar_deep_kw-img4405-eps0.036732026143790855.vnnlib")
    budget, out_file = 3.0, tmp_path / "result.txt"
    busy = _busy_loops(2)
    try:
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "verifier.cli", str(onnx), str(vnnlib), "--timeout", str(budget),
             "--attack-seconds", "1000", "--out", str(out_file)],
            check=False, capture_output=True, text=True, timeout=120, env=os.environ,
        )  # fmt: skip
        seconds = time.monotonic() - start
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "timeout\n" and parse_vnncomp(out_file.read_text())[0] == "timeout"
    assert seconds < budget + 2.0

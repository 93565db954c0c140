"""Batch mode spread over workers: parallel local runs, resumed results files, dead workers, Ray clusters."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli.test_cli import run
from tests.verify.paths import REPO, TEST_NANO, TEST_SAT, TEST_UNSAT, shared
from verifier.verify import batch
from verifier.verify.batch import RESULT_FIELDS, read_instances
from verifier.verify.distributed import MISSING_RAY

_run_one = batch.run_one  # the real job, for the stand-ins below (also when Ray pickles them by value)


def _bench(tmp_path, name: str, pairs) -> str:
    """An instances.csv in ``tmp_path/name`` listing ``pairs`` of absolute paths, 60 s each."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "instances.csv").write_text("".join(f"{onnx},{vnnlib},60\n" for onnx, vnnlib in pairs))
    return str(folder / "instances.csv")


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _verdicts(path) -> list[tuple[str, str, str]]:
    """``(onnx, vnnlib, verdict)`` of a results file, in instance order whatever the completion order."""
    return sorted((row["onnx"], row["vnnlib"], row["verdict"]) for row in _rows(path))


BUNDLED = [TEST_NANO, TEST_SAT, TEST_UNSAT, TEST_NANO]  # listed twice: one row each


def _rl_slice() -> list[tuple[str, str]]:
    instances = read_instances(shared("rl_benchmarks", "instances.csv"))[::37]
    return [(str(i.base / i.onnx), str(i.base / i.vnnlib)) for i in instances]


@pytest.mark.parametrize("suite", ["test", "rl_benchmarks"])
def test_two_workers_give_the_verdicts_of_one(tmp_path, capsys, suite):
    if suite == "test":
        instances = str(shared("test", "instances.csv"))
    else:
        instances = _bench(tmp_path, suite, _rl_slice())
    tables = []
    for workers in (1, 2):
        results = tmp_path / f"results{workers}.csv"
        status, out, err = run(capsys, "--instances", instances, "--results", results, "--workers", workers,
                               "--no-progress")  # fmt: skip
        assert status == 0 and err == ""
        tables.append(out.splitlines()[1].split()[:-1])  # all but the median time
    assert _verdicts(tmp_path / "results1.csv") == _verdicts(tmp_path / "results2.csv")
    assert tables[0] == tables[1]
    assert len(_rows(tmp_path / "results2.csv")) == len(read_instances(instances))


def _marking(marks):
    """A ``run_one`` that notes each instance it runs in the file ``marks`` (written by the forked worker)."""

    def run_one(instance, *args, **kwargs):
        with open(marks, "a") as handle:
            handle.write(f"{instance.onnx} {instance.vnnlib}\n")
        return _run_one(instance, *args, **kwargs)

    return run_one


def test_a_rerun_finishes_only_the_missing_and_chosen_rows(monkeypatch, tmp_path, capsys):
    instances = _bench(tmp_path, "mini", BUNDLED)
    results, marks = tmp_path / "results.csv", tmp_path / "ran.txt"
    monkeypatch.setattr(batch, "run_one", _marking(marks))

    def rerun(*args):
        marks.write_text("")
        status, out, err = run(capsys, "--instances", instances, "--results", results, "--no-progress", *args)
        assert status == 0 and err == ""
        assert len(results.read_text().splitlines()) == 1 + len(BUNDLED)  # one row per instance
        assert out.splitlines()[1].split()[1:7] == ["4", "1", "3", "0", "0", "0"]  # the table covers all rows
        return sorted(marks.read_text().splitlines())

    assert len(rerun()) == 4
    assert [row["verdict"] for row in _rows(results)] == ["unsat", "sat", "unsat", "unsat"]
    full, lines = _verdicts(results), results.read_text().splitlines()
    results.write_text("\n".join(lines[:3]) + "\n")  # stopped after two rows
    assert rerun() == sorted(f"{onnx} {vnnlib}" for onnx, vnnlib in BUNDLED[2:])
    assert _verdicts(results) == full and results.read_text().splitlines()[:3] == lines[:3]
    assert rerun() == []  # nothing left to do
    assert rerun("--rerun", "sat,timeout") == [f"{TEST_SAT[0]} {TEST_SAT[1]}"]
    errored = results.read_text().replace(",unsat,", ",error,", 1)  # the first row failed last time
    results.write_text(errored)
    assert rerun() == [f"{TEST_NANO[0]} {TEST_NANO[1]}"]  # default: errors only, the other row kept


def test_a_killed_run_is_finished_by_the_next_one(monkeypatch, tmp_path, capsys):
    """A real ``verify-model`` process killed once it has written a few rows; the rerun (two workers) runs
    exactly the instances without a row."""
    pairs = [(str(i.base / i.onnx), str(i.base / i.vnnlib))
             for i in read_instances(shared("rl_benchmarks", "instances.csv"))[::6]]  # fmt: skip
    instances, results = _bench(tmp_path, "rl", pairs), tmp_path / "results.csv"
    command = [sys.executable, "-m", "verifier.cli", "--instances", instances, "--results", str(results),
               "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and (not results.exists() or len(results.read_text().splitlines()) < 4):
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL  # stopped half way, not finished
    written = {(row["onnx"], row["vnnlib"]) for row in _rows(results)}
    assert 3 <= len(written) < len(pairs)
    marks = tmp_path / "ran.txt"
    monkeypatch.setattr(batch, "run_one", _marking(marks))
    status, _, err = run(
        capsys, "--instances", instances, "--results", results, "--workers", 2, "--no-progress"
    )
    assert status == 0 and err == ""
    ran = sorted(tuple(line.split(" ")) for line in marks.read_text().splitlines())
    assert ran == sorted(set(pairs) - written)
    assert sorted((row["onnx"], row["vnnlib"]) for row in _rows(results)) == sorted(pairs)


@pytest.mark.parametrize(
    "contents, message",
    [
        ("onnx,vnnlib,result\n", "is not a results file"),
        (",".join(RESULT_FIELDS) + "\nmini,a.onnx,p.vnnlib,unsat,1.0,ibp,60\n", "malformed results row"),
        (",".join(RESULT_FIELDS) + "\nother,a.onnx,p.vnnlib,unsat,1.0,ibp,60,\n", "not in this run"),
        (b"\xff\xfe\x00garbage", "cannot read results file"),
    ],
)
def test_a_results_file_of_something_else_is_an_error_and_kept(tmp_path, capsys, contents, message):
    instances = _bench(tmp_path, "mini", BUNDLED[:1])
    results = tmp_path / "results.csv"
    (results.write_bytes if isinstance(contents, bytes) else results.write_text)(contents)
    status, out, err = run(capsys, "--instances", instances, "--results", results, "--no-progress")
    assert status == 1 and out == "" and message in err and len(err.splitlines()) == 1
    assert (results.read_bytes() if isinstance(contents, bytes) else results.read_text()) == contents


def test_an_unknown_rerun_verdict_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run(capsys, "--instances", _bench(tmp_path, "mini", BUNDLED[:1]), "--rerun", "error,holds")
    assert stop.value.code == 2 and "holds" in capsys.readouterr().err


def _dying(instance, *args, **kwargs):
    """Dies three ways on the sat, unsat and tiny models; runs the others."""
    if "test_sat" in instance.onnx:
        os.kill(os.getpid(), signal.SIGKILL)
    if "test_unsat" in instance.onnx:
        os._exit(3)
    if "test_tiny" in instance.onnx:
        raise ZeroDivisionError("a bug in the work")
    return _run_one(instance, *args, **kwargs)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_dying_mid_instance_is_an_error_row_and_the_run_goes_on(
    monkeypatch, tmp_path, capsys, workers
):
    monkeypatch.setattr(batch, "run_one", _dying)
    tiny = shared("test", "test_tiny.onnx"), shared("test", "test_tiny.vnnlib")
    pairs = [TEST_SAT, TEST_NANO, TEST_UNSAT, tiny, TEST_NANO]
    results = tmp_path / "results.csv"
    status, out, err = run(capsys, "--instances", _bench(tmp_path, "mini", pairs), "--results", results,
                           "--workers", workers, "--no-progress")  # fmt: skip
    assert status == 0 and err == ""
    rows = {(row["onnx"], row["verdict"]): row["note"] for row in _rows(results)}
    assert sorted(rows) == sorted(
        [(str(TEST_SAT[0]), "error"), (str(TEST_NANO[0]), "unsat"), (str(TEST_UNSAT[0]), "error"),
         (str(tiny[0]), "error")]
    )  # fmt: skip
    assert "SIGKILL" in rows[str(TEST_SAT[0]), "error"]
    assert "exit status 3" in rows[str(TEST_UNSAT[0]), "error"]
    assert "ZeroDivisionError: a bug in the work" in rows[str(tiny[0]), "error"]
    assert len(_rows(results)) == len(pairs) and out.splitlines()[1].split()[1:7] == [
        "5",
        "0",
        "2",
        "0",
        "0",
        "3",
    ]


def test_cluster_without_ray_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` raises ImportError
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any instance runs
        run(capsys, "--instances", _bench(tmp_path, "mini", BUNDLED[:1]), "--cluster", "auto")
    assert exit_.value.code == 2
    assert capsys.readouterr() == ("", f"verify-model: error: {MISSING_RAY} (see --help)\n")


def test_cluster_without_a_cluster_there_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    ray = pytest.importorskip("ray")

    def no_cluster(
        *args, **kwargs
    ):  # what ray.init raises when it finds no cluster (a live one may run here)
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify one.")

    monkeypatch.setattr(ray, "init", no_cluster)
    status, out, err = run(capsys, "--instances", _bench(tmp_path, "mini", BUNDLED[:1]), "--cluster", "auto")
    assert (status, out) == (1, "")
    assert err == "verify-model: error: --cluster auto: Could not find any running Ray instance.\n"


def _killing_its_ray_task(instance, *args, **kwargs):
    """Kills the Ray worker process running this task (the forked child's parent) on the sat model."""
    if "test_sat" in instance.onnx:
        os.kill(os.getppid(), signal.SIGKILL)
    return _run_one(instance, *args, **kwargs)


def test_a_ray_cluster_gives_the_local_verdicts_and_survives_a_dead_task(
    ray_cluster, monkeypatch, tmp_path, capsys
):
    import ray.cloudpickle

    monkeypatch.chdir(shared("test").parent)  # a relative instances path: the tasks run elsewhere
    status, out, err = run(
        capsys, "--instances", "test/instances.csv", "--cluster", ray_cluster, "--no-progress"
    )
    assert status == 0 and err == ""
    assert out.splitlines()[1].split()[:-1] == ["test", "5", "1", "4", "0", "0", "0", "5", "5", "5", "0"]
    rl = _bench(tmp_path, "rl_benchmarks", _rl_slice())
    for where in (["--cluster", ray_cluster], ["--workers", "1"]):
        results = tmp_path / f"rl{where[0]}.csv"
        assert run(capsys, "--instances", rl, "--results", results, *where, "--no-progress")[0] == 0
    assert _verdicts(tmp_path / "rl--cluster.csv") == _verdicts(tmp_path / "rl--workers.csv")

    # the stand-in job travels to the cluster's workers by value (they need not import the tests)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(batch, "run_one", _killing_its_ray_task)
    instances, results = _bench(tmp_path, "mini", BUNDLED), tmp_path / "results.csv"
    try:
        status, out, err = run(capsys, "--instances", instances, "--results", results, "--cluster", ray_cluster,
                               "--no-progress")  # fmt: skip
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert status == 0 and err == ""
    rows = _rows(results)
    assert [row["verdict"] for row in rows if row["onnx"] == str(TEST_SAT[0])] == ["error"]
    assert sorted(row["verdict"] for row in rows) == ["error", "unsat", "unsat", "unsat"]
    note = next(row["note"] for row in rows if row["verdict"] == "error")
    assert note.startswith(("WorkerCrashedError", "ActorDiedError", "RayTaskError")) and "\n" not in note

"""The warm server: runs through it equal local runs (stdout, stderr, status, result file); a stale or
missing socket falls back; the client's deadline holds; crashes are worker crashes; stop; concurrency;
each request a fresh child with the client's directory, environment and settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.verify.paths import HARD, MODELS, REPO, SPECS, TEST_NANO, TEST_SAT, TEST_UNSAT
from verifier.cli import main
from verifier.verify import client

CLI = [sys.executable, "-m", "verifier.cli"]
TEST_SMALL = (MODELS / "test_small.onnx", SPECS / "test" / "test_small.vnnlib")
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _start(command: list[str], path: Path) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()  # "serving on ..." once it listens
    assert line.startswith(f"verify-model: serving on {path}"), line + server.stderr.read()
    return server


def _end(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
    server.wait(timeout=30)
    server.stderr.close()


@pytest.fixture(scope="module")
def sockets(tmp_path_factory):
    """The real server's socket, the probe server's (``server_probe``) and its process id."""
    folder = tmp_path_factory.mktemp("sock")
    real, probe = folder / "real.sock", folder / "probe.sock"
    commands = [
        [*CLI, "--serve", "--server", str(real)],
        [sys.executable, "-m", "tests.cli.server_probe", str(probe)],
    ]
    servers = [subprocess.Popen(c, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        for server, path in zip(servers, (real, probe)):
            line = server.stderr.readline()
            assert line.startswith(f"verify-model: serving on {path}"), line + server.stderr.read()
        yield real, probe, servers[1].pid
    finally:
        for server in servers:
            _end(server)


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def _both(capsys, tmp_path, path, *args):
    """(status, stdout, stderr, result file) of a local run and of one through the server at ``path``."""
    results = []
    for extra in ((), ("--server", path)):
        out_file = tmp_path / f"result{len(results)}.txt"
        status, out, err = run(capsys, *args, "--out", out_file, *extra)
        results.append((status, out, err, out_file.read_text() if out_file.exists() else None))
    return results


@pytest.mark.parametrize("instance", [TEST_NANO, TEST_SAT, TEST_UNSAT])
def test_runs_through_the_server_equal_local_runs(sockets, tmp_path, capsys, instance):
    local, served = _both(capsys, tmp_path, sockets[0], *instance, "--timeout", "60")
    assert served == local and local[0] == 0 and local[3]


def test_errors_through_the_server_equal_local_ones(sockets, tmp_path, capsys):
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_text("not onnx")
    local, served = _both(capsys, tmp_path, sockets[0], bad_model, TEST_NANO[1])
    assert served == local and local[0] == 1 and local[2].startswith("verify-model: error:")
    usage = []
    for extra in ((), ("--server", str(sockets[0]))):  # a usage error found by the job: the parser's exit 2
        with pytest.raises(SystemExit) as exit_:
            main([*map(str, TEST_NANO), "--method", "no-such-method", *extra])
        usage.append((exit_.value.code, capsys.readouterr()))
    assert usage[0] == usage[1] and usage[0][0] == 2 and "no-such-method" in usage[0][1].err


def test_a_process_through_the_server_equals_a_local_process(sockets, tmp_path):
    done = []
    for extra in ((), ("--server", str(sockets[0])), ()):
        out_file = tmp_path / f"r{len(done)}.txt"
        env = (
            dict(ENV, VERIFIER_SERVER=str(sockets[0])) if len(done) == 2 else ENV
        )  # the variable chooses too
        command = [*CLI, *map(str, TEST_SMALL), "--json", "--out", str(out_file), *extra]
        run_ = subprocess.run(
            command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        result = json.loads(run_.stdout)
        done.append((run_.returncode, run_.stderr, result["verdict"], result["method"], out_file.read_text()))
    assert done[0] == done[1] == done[2] and done[0][0] == 0 and done[0][1] == ""


def test_the_child_takes_the_clients_directory_environment_settings_and_stderr(sockets, tmp_path):
    command = [*CLI, *map(str, TEST_NANO), "--method", "probe", "--threads", "2", "--seed", "7",
               "--server", str(sockets[1])]  # fmt: skip
    env = dict(ENV, PROBE="hello")
    seen = []
    for _ in range(2):
        done = subprocess.run(
            command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stderr == "stray output of the job\n"
        seen.append(json.loads(done.stdout))
    for probe in seen:
        assert probe["threads"] == 2 and probe["product"] == 256.0**3 and probe["seed"] == 7
        assert probe["cwd"] == str(tmp_path) and probe["probe_env"] == "hello"
        assert probe["calls"] == 1  # each request a fresh fork: nothing of the previous one is left
    # without --threads a single run takes the cores it may use; with --workers they are shared
    cores = len(os.sched_getaffinity(0))
    for extra, expected in (((), cores), (("--workers", "2"), max(1, cores // 2))):
        command = [*CLI, *map(str, TEST_NANO), "--method", "probe", "--server", str(sockets[1]), *extra]
        done = subprocess.run(command, check=False, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0 and json.loads(done.stdout)["threads"] == expected


def test_the_deadline_holds_through_the_server_and_the_child_is_killed(sockets, tmp_path, capsys):
    server_pid = sockets[2]
    start = time.monotonic()
    status, out, err = run(capsys, *TEST_SAT, "--method", "stuck", "--timeout", "0.5", "--json", "--out",
                           tmp_path / "r.txt", "--server", sockets[1])  # fmt: skip
    assert time.monotonic() - start < 30  # generous: far less than the stuck child's 600 s
    assert status == 0 and err == "" and json.loads(out)["verdict"] == "timeout"
    assert (tmp_path / "r.txt").read_text() == "timeout\n"
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    for _ in range(300):  # the server kills the child once the client hangs up
        if not children.read_text().split():
            break
        time.sleep(0.1)
    assert children.read_text().split() == []


CRASHES = [
    ("crash", "ZeroDivisionError: a bug in the work"),
    ("die", "process died (killed by signal SIGKILL)"),
]


@pytest.mark.parametrize(("method", "message"), CRASHES)
def test_a_crashing_child_is_a_worker_crash(sockets, tmp_path, capsys, method, message):
    status, out, err = run(
        capsys, *TEST_SAT, "--method", method, "--out", tmp_path / "r", "--server", sockets[1]
    )
    assert status == 1 and out == "" and not (tmp_path / "r").exists()
    assert err.startswith("verify-model: error: the verification process") and message in err


def test_concurrent_requests(sockets, tmp_path):
    instances = [TEST_NANO, TEST_SAT, TEST_UNSAT, TEST_SMALL]
    commands = [[*CLI, *map(str, instance), "--server", str(sockets[0])] for instance in instances]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    clients = [subprocess.Popen(c, cwd=REPO, env=ENV, **pipes) for c in commands]
    verdicts = [c.communicate(timeout=300)[0].splitlines()[0] for c in clients]
    assert all(c.returncode == 0 for c in clients)
    assert verdicts == ["unsat", "sat", "unsat", "unsat"]


def test_a_stale_or_missing_socket_falls_back_to_a_local_worker(tmp_path, capsys):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # the file of a server that is gone: connecting is refused at once
    plain = tmp_path / "plain-file"
    plain.write_text("")
    local = run(capsys, *TEST_NANO)
    for path in (stale, plain, tmp_path / "missing.sock"):
        assert run(capsys, *TEST_NANO, "--server", path) == local
    assert client.stop(str(stale)) is None


def test_stop_and_restart_on_the_same_socket(tmp_path, capsys):
    path = tmp_path / "s.sock"
    command = [*CLI, "--serve", "--server", str(path)]
    server = _start(command, path)
    try:
        status, _, err = run(capsys, "--serve", "--server", path)  # one server per socket
        assert status == 1 and err == f"verify-model: error: a server already listens on {path}\n"
        assert run(capsys, "--stop-server", "--server", path) == (0, "", "")
        assert server.wait(timeout=30) == 0 and not path.exists()
        assert run(capsys, "--stop-server", "--server", path) == (
            1,
            "",
            f"verify-model: error: no server listens on {path}\n",
        )
    finally:
        _end(server)


def test_the_server_is_used_only_when_chosen(monkeypatch):
    monkeypatch.delenv(client.ENV_SERVER, raising=False)
    assert client.run_socket(None) is None
    assert client.server_socket(None) == client.default_socket()
    monkeypatch.setenv(client.ENV_SERVER, "/x/env.sock")
    assert client.run_socket(None) == "/x/env.sock" and client.run_socket("/x/opt.sock") == "/x/opt.sock"
    monkeypatch.setenv(client.ENV_SERVER, "")
    assert client.run_socket(None) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "instance", [HARD, (MODELS / "mnist-net_256x2.onnx", SPECS / "mnist_fc" / "prop_0_0.03.vnnlib")]
)
def test_bigger_instances_through_the_server_equal_local_runs(sockets, tmp_path, capsys, instance):
    local, served = _both(capsys, tmp_path, sockets[0], *instance, "--timeout", "120")
    assert served == local and local[0] == 0

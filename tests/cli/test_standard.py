"""The VNN-LIB 2.0 standard command line, checked against the ``vnnlib-test-solver`` reference output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import verifier
from tests.verify.paths import TEST_NANO, TEST_SAT, TEST_UNSAT
from verifier.cli import main
from verifier.verify.standard import CAPABILITIES

# ACAS Xu property 3 (the box and unsafe set of specs/test/test_prop.vnnlib) in VNN-LIB 2.0.
QUERY = """(vnnlib-version <2.0>)
(declare-network acas
  (declare-input X {type} [1,1,1,5])
  (declare-output Y {type} [1,5])
)
(assert (and (>= X[0,0,0,0] -0.30353115613746867) (<= X[0,0,0,0] -0.29855281193475053)))
(assert (and (>= X[0,0,0,1] -0.009549296585513092) (<= X[0,0,0,1] 0.009549296585513092)))
(assert (and (>= X[0,0,0,2] 0.4933803235848431) (<= X[0,0,0,2] 0.49999999998567607)))
(assert (and (>= X[0,0,0,3] 0.3) (<= X[0,0,0,3] 0.5)))
(assert (and (>= X[0,0,0,4] 0.3) (<= X[0,0,0,4] 0.5)))
(assert (and (<= Y[0,0] Y[0,1]) (<= Y[0,0] Y[0,2]) (<= Y[0,0] Y[0,3]) (<= Y[0,0] Y[0,4])))
"""
TEST_SOLVER = Path(sys.executable).parent / "vnnlibTestSolver"


@pytest.fixture
def query(tmp_path):
    path = tmp_path / "prop3.vnnlib"
    path.write_text(QUERY.format(type="real"))
    return path


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_sat_output_matches_the_reference_solver_byte_for_byte(query, tmp_path, capsys):
    status, out, err = run(capsys, "verify", query, "--network", f"acas={TEST_SAT[0]}", "--timeout", "60")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "sat" and lines[1] == "X real [1,1,1,5]" and lines[7] == "Y real [1,5]"
    x, y = lines[2:7], lines[8:13]
    config = tmp_path / "solver.toml"
    config.write_text(
        '[solver]\nname = "reference"\nversion = "0"\n\n[[rules]]\nmatch = "*.vnnlib"\nresult = "sat"\n'
        f"[rules.assignments]\nX = [{', '.join(x)}]\nY = [{', '.join(y)}]\n"
    )
    assert TEST_SOLVER.exists(), "vnnlib-test-solver (a pinned dev dependency) is not installed"
    reference = subprocess.run(
        [str(TEST_SOLVER), "--config", str(config), "verify", str(query), "--network", f"acas={TEST_SAT[0]}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reference.returncode == 0, reference.stderr
    assert out == reference.stdout


def test_unsat_and_timed_out(query, capsys):
    assert run(capsys, "verify", query, "--network", f"acas={TEST_UNSAT[0]}")[1] == "unsat\n"
    status, out, _ = run(capsys, "verify", query, "--network", f"acas={TEST_UNSAT[0]}", "--timeout", "0")
    assert status == 0 and out == "timed-out\n"


def test_vnnlib_1_query_needs_one_network(capsys):
    assert run(capsys, "verify", TEST_NANO[1], "--network", f"any={TEST_NANO[0]}")[1] == "unsat\n"
    status, out, err = run(capsys, "verify", TEST_NANO[1])
    assert status == 1 and out == "" and "exactly one --network" in err


@pytest.mark.parametrize(
    "networks",
    [[], ["other=x.onnx"], ["acas=a.onnx", "extra=b.onnx"], ["acas"]],
)
def test_network_mapping_errors_go_to_stderr_only(query, capsys, networks):
    args = [arg for mapping in networks for arg in ("--network", mapping)]
    status, out, err = run(capsys, "verify", query, *args)
    assert status == 1 and out == "" and len(err.strip().splitlines()) == 1


def test_unanalysed_floating_point_declarations_are_refused(tmp_path, capsys):
    path = tmp_path / "typed.vnnlib"
    path.write_text(QUERY.format(type="float16"))
    status, out, err = run(capsys, "verify", path, "--network", f"acas={TEST_SAT[0]}")
    assert status == 1 and out == ""
    assert "float16" in err
    assert run(capsys, "supports", "--onnx-element-types")[1].split() == ["real", "float32", "float64"]


def test_supports_answers_every_standard_capability(capsys):
    from vnnlib_test_solver.supports import CAPABILITIES as STANDARD

    assert set(CAPABILITIES) == set(STANDARD)
    for flag in STANDARD:
        status, out, err = run(capsys, "supports", flag)
        assert status == 0 and err == "" and out.endswith("\n") and out.strip()
    assert run(capsys, "supports", "--onnx-operators")[1].split() == verifier.supported_onnx_operators()
    assert run(capsys, "supports", "--hidden-node-theories")[1] == "NH\n"
    assert run(capsys, "supports", "--serialise-assignments")[1] == "false\n"


def test_supports_needs_exactly_one_capability(capsys):
    for args in (
        ["supports"],
        ["supports", "--onnx-operators", "--vnnlib-versions"],
        ["supports", "--bogus"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 1
    assert capsys.readouterr().out == ""

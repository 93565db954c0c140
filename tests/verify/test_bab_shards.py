"""Branch and bound shared between workers (``bab.shards``): the single process's verdicts, from local
processes and from Ray actors, and errors (a dead worker, a missing Ray) that never become verdicts."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests.verify.paths import MODELS, SPECS
from tests.verify.test_bab import problem_for, property_of, run_bab, tiny  # noqa: F401
from verifier.cli import main
from verifier.errors import InputError
from verifier.verify.bab import driver, shards
from verifier.verify.bab.input_split import InputSplit
from verifier.verify.bab.relu_split import ReluSplit
from verifier.verify.deadline import Deadline
from verifier.verify.onnx_check import violated_disjunct
from verifier.verify.worker import WorkerCrash

BRANCHERS = {"input": InputSplit, "relu": ReluSplit}


def properties(tiny):  # noqa: F811 (the fixture, imported above)
    """An ``unsat`` property that needs splitting and a ``sat`` one whose unsafe region is small."""
    _, _, low, high = tiny
    return {"unsat": property_of(*(low - 2e-3)), "sat": property_of(low[0] - 1e-2, high[1] + 1e-3)}


def sharded(problem: driver.Problem, brancher, workers: int = 2, cluster: str | None = None,
            local_seconds: float = 0.0):  # fmt: skip
    """``shards.run``, by default with the workers from the start (no local phase)."""
    roots = brancher.roots(np.flatnonzero(~problem.bounder.case_excluded()))
    config = driver.BabConfig(local_seconds=local_seconds)
    return shards.run(brancher, roots, problem, config, Deadline(120), workers, cluster)


def check_same_verdict(path, prop, kind: str, cluster: str | None = None) -> None:
    alone = run_bab(problem_for(path, prop), BRANCHERS[kind](problem_for(path, prop).bounder))
    problem = problem_for(path, prop)
    result = sharded(problem, BRANCHERS[kind](problem.bounder), cluster=cluster)
    assert result.verdict == alone.verdict
    if result.verdict == "unsat":
        assert result.domains > 0 and result.counterexample is None
    else:
        y = problem.checker.run(result.counterexample.x)
        assert violated_disjunct(prop.cases[0], y) is not None


@pytest.mark.parametrize("kind", ["input", "relu"])
@pytest.mark.parametrize("verdict", ["unsat", "sat"])
def test_two_local_workers_give_the_single_process_verdict(tiny, kind, verdict):  # noqa: F811
    path = tiny[0]
    check_same_verdict(path, properties(tiny)[verdict], kind)


@pytest.mark.parametrize(("kind", "verdict"), [("input", "unsat"), ("relu", "sat")])
def test_ray_actors_give_the_single_process_verdict(tiny, ray_cluster, kind, verdict):  # noqa: F811
    check_same_verdict(tiny[0], properties(tiny)[verdict], kind, cluster=ray_cluster)


def test_a_search_over_within_its_local_seconds_starts_no_worker(tiny, monkeypatch):  # noqa: F811
    def no_pool(*args):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(shards, "open_pool", no_pool)
    problem = problem_for(tiny[0], properties(tiny)["unsat"])
    result = sharded(problem, InputSplit(problem.bounder), local_seconds=60)
    assert result.verdict == "unsat" and result.domains > 0


class AwaySplit(InputSplit):
    """Input splitting that misbehaves in any process but the one that built it (in workers): it ends
    the process (``exit``) or raises its children's bounds by 10 (``unsound``)."""

    def __init__(self, bounder, away: str):
        super().__init__(bounder)
        self.home, self.away = os.getpid(), away

    def bound(self, children):
        lower = super().bound(children)
        if os.getpid() == self.home:
            return lower
        if self.away == "exit":
            os._exit(3)
        return lower + 10.0


@pytest.mark.parametrize(
    ("away", "error"), [("exit", "exit status 3"), ("unsound", "UnsoundBoundError: bab-input")]
)
def test_a_worker_that_dies_or_fails_raises_instead_of_a_verdict(tiny, away, error):  # noqa: F811
    problem = problem_for(tiny[0], properties(tiny)["unsat"])
    with pytest.raises(WorkerCrash, match=error):
        sharded(problem, AwaySplit(problem.bounder, away))


def test_a_cluster_without_ray_installed_says_how_to_install_it(tiny, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # makes ``import ray`` fail
    problem = problem_for(tiny[0], properties(tiny)["unsat"])
    with pytest.raises(InputError, match=r"pip install 'verifier\[distributed\]'"):
        sharded(problem, InputSplit(problem.bounder), cluster="auto")


def test_the_command_line_refuses_a_cluster_without_ray_at_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    instance = [str(MODELS / "ACASXU_run2a_1_2_batch_2000.onnx"), str(SPECS / "acasxu" / "prop_4.vnnlib")]
    with pytest.raises(SystemExit) as exit_:
        main(instance + ["--cluster", "auto"])
    assert exit_.value.code == 2
    assert "pip install 'verifier[distributed]'" in capsys.readouterr().err


def test_the_command_line_with_two_workers_decides_as_with_one(capsys):
    # ACAS Xu property 4 on net 1_2: unsat, a few hundred input splits
    instance = [str(MODELS / "ACASXU_run2a_1_2_batch_2000.onnx"), str(SPECS / "acasxu" / "prop_4.vnnlib")]
    verdicts = []
    for workers in ("1", "2"):
        assert main(instance + ["--json", "--timeout", "120", "--workers", workers]) == 0
        result = json.loads(capsys.readouterr().out)
        verdicts.append((result["verdict"], result["method"]))
    assert verdicts == [("unsat", "bab-input")] * 2

"""The spec margin and the PGD attack: it finds checked counterexamples and never invents one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verifier
from tests.helpers import CountdownDeadline
from tests.verify.paths import TEST_SAT, TEST_UNSAT
from verifier.spec.vnnlib import load_property
from verifier.verify.attack import Attack, AttackConfig, start_points
from verifier.verify.deadline import Deadline
from verifier.verify.onnx_check import OnnxChecker
from verifier.verify.spec_batch import margin, spec_batch

INF = float("inf")


def test_margin_min_over_disjuncts_of_max_over_rows():
    y = torch.tensor([[1.0, 2.0]])
    C = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]])  # rows y0, y1, y0 - y1
    d = torch.tensor([[0.5, 3.0, 0.0]])
    member = torch.tensor([[[True, False], [True, False], [False, True]]])  # {y0<=.5, y1<=3}, {y0<=y1}
    valid = torch.tensor([[True, True]])
    # disjunct 0: max(0.5, -1) = 0.5; disjunct 1: -1 -> min = -1 (unsafe)
    assert margin(y, C, d, member, valid).item() == -1.0
    assert margin(y, C, d, member, torch.tensor([[True, False]])).item() == 0.5
    no_rows = torch.zeros((1, 3, 2), dtype=torch.bool)
    assert margin(y, C, d, no_rows, valid).item() == -INF  # a disjunct without rows holds everywhere
    assert margin(y, C, d, member, torch.tensor([[False, False]])).item() == INF


def test_start_points_lie_in_the_box_and_lead_with_centre_and_corners():
    rng = np.random.default_rng(0)
    lo, hi = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 2.0])
    points = start_points(lo, hi, 20, rng, first=True)
    assert points.shape == (20, 3)
    assert np.all(points >= lo) and np.all(points <= hi)
    np.testing.assert_array_equal(points[:3], [(lo + hi) / 2, lo, hi])


def _attack(pair, **config):
    onnx_path, vnnlib_path = pair
    prop = load_property(vnnlib_path)
    checker = OnnxChecker(str(onnx_path))
    model = verifier.load(str(onnx_path))
    spec = spec_batch(prop, checker.dtype)
    return Attack(model, model.input_shape, spec, checker, prop, AttackConfig(**config)), prop


def test_attack_finds_a_checked_counterexample():
    attack, prop = _attack(TEST_SAT)
    found = attack.run_round(Deadline(30))
    assert found is not None
    case = prop.cases[found.case]
    assert np.all(found.x >= case.lower) and np.all(found.x <= case.upper)
    assert np.argmin(found.y) == 0  # property 3's unsafe set: output 0 minimal


@pytest.mark.parametrize("rounds", [3])
def test_attack_reports_nothing_on_a_safe_instance(rounds):
    attack, _ = _attack(TEST_UNSAT, probes=256, restarts=16, steps=20)
    assert all(attack.run_round(Deadline(30)) is None for _ in range(rounds))


def test_attack_stops_at_the_deadline():
    """10,000 PGD steps are asked for; the round ends at the first look at the clock after it expires."""
    attack, _ = _attack(TEST_UNSAT, steps=10_000)
    calls = []
    model = attack.forward
    attack.forward = lambda x: calls.append(len(x)) or model(x)
    deadline = CountdownDeadline(expires_on=20)
    assert attack.run_round(deadline) is None
    assert deadline.polls >= 20, calls  # the expiry was seen ...
    assert len(calls) <= 21, calls  # ... and nothing tried after it: the probes, a PGD step per look

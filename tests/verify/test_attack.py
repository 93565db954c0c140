"""The spec margin and the PGD attack: it finds checked counterexamples, fast, and never invents one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verifier
from tests.helpers import CountdownDeadline
from tests.verify.paths import TEST_SAT, TEST_UNSAT, shared
from verifier.spec.vnnlib import load_property
from verifier.verify.attack import (
    Attack,
    AttackConfig,
    Restarts,
    distinct_lowest,
    pgd,
    start_points,
    target_masks,
)
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


def test_start_points_lie_in_the_boxes_and_lead_with_the_given_point_centre_and_corners():
    rng = np.random.default_rng(0)
    lo = np.array([[-1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    hi = np.array([[1.0, 0.5, 2.0], [1.0, 1.0, 1.0]])
    lead = np.array([[5.0, 0.25, 2.0], [0.5, 0.5, 0.5]])  # the first one is clipped into its box
    points = start_points(lo, hi, lead, 20, rng)
    assert points.shape == (2, 20, 3)
    assert np.all(points >= lo[:, None]) and np.all(points <= hi[:, None])
    np.testing.assert_array_equal(points[0, :4], [[1.0, 0.25, 2.0], (lo[0] + hi[0]) / 2, lo[0], hi[0]])
    np.testing.assert_array_equal(points[1, :4], [lead[1], (lo[1] + hi[1]) / 2, lo[1], hi[1]])


def test_distinct_lowest_takes_each_margin_value_once_before_repeats():
    margins = np.array([0.5, 0.1, 0.1, 0.1, 0.3, -0.2, 0.3])
    # a flat piece repeats one value: its points come after every other value
    np.testing.assert_array_equal(distinct_lowest(margins, 5), [5, 1, 4, 0, 2])


def test_target_masks_cycle_through_the_spec_margin_and_each_valid_disjunct():
    valid = np.array([[True, False, True]] * 4 + [[True, False, False]])
    rank = np.array([0, 1, 2, 3, 1])
    expected = [
        [True, False, True],  # rank 0: the spec margin (every valid disjunct)
        [True, False, False],  # rank 1: the first valid disjunct alone
        [False, False, True],  # rank 2: the second valid one (disjunct 1 is padding)
        [True, False, True],  # rank 3 = 0 mod 3
        [True, False, False],
    ]
    np.testing.assert_array_equal(target_masks(valid, rank), expected)


def _one_row_spec(n: int, coefficient: float, rhs: float) -> tuple:
    """``(C, d, member, valid)`` of the single-row property ``coefficient * y <= rhs`` for ``n`` samples."""
    return (
        torch.full((n, 1, 1), coefficient),
        torch.full((n, 1), rhs),
        torch.ones((n, 1, 1), dtype=torch.bool),
        torch.ones((n, 1), dtype=torch.bool),
    )


def test_pgd_walks_off_a_flat_piece():
    # y = relu(x - 0.9) on [0, 1], unsafe when y >= 0.05; every start has y = 0 and gradient 0 there.
    n = 8
    spec = _one_row_spec(n, -1.0, -0.05)
    restarts = Restarts(
        x0=torch.full((n, 1), 0.2),
        lo=torch.zeros((n, 1)),
        hi=torch.ones((n, 1)),
        spec=spec,
        target=spec[3],
        direction=torch.zeros((n, 1)),
        step0=torch.full((n, 1), 0.1),
    )
    config = AttackConfig(steps=40, odi_steps=0)
    noise = torch.Generator().manual_seed(0)
    x, m = pgd(lambda x: torch.relu(x - 0.9), restarts, config, Deadline(30), noise)
    assert m.min().item() < 0 and x[m.argmin()].item() > 0.95


def test_pgd_diversifies_along_the_output_direction_first():
    # y = x on [-1, 1], unsafe when y >= 0.9. Both restarts take tiny PGD steps from 0; only the one with
    # an output direction first takes large steps along it, which carries it into the unsafe set.
    spec = _one_row_spec(2, -1.0, -0.9)
    restarts = Restarts(
        x0=torch.zeros((2, 1)),
        lo=-torch.ones((2, 1)),
        hi=torch.ones((2, 1)),
        spec=spec,
        target=spec[3],
        direction=torch.tensor([[1.0], [0.0]]),
        step0=torch.full((2, 1), 1e-3),
    )
    config = AttackConfig(steps=2, odi_steps=4, odi_step=0.25)
    x, m = pgd(lambda x: x, restarts, config, Deadline(30), torch.Generator().manual_seed(0))
    assert m[0].item() < 0 and x[0].item() >= 0.9
    assert m[1].item() > 0.85


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


def test_attack_boxes_returns_a_counterexample_inside_a_given_sub_box():
    attack, prop = _attack(TEST_SAT)
    point = attack.run_round(Deadline(30)).x.astype(np.float64)
    case = prop.cases[0]
    width = case.upper - case.lower
    near = (np.maximum(point - 0.1 * width, case.lower), np.minimum(point + 0.1 * width, case.upper))
    far = (case.lower, case.lower + 0.05 * width)  # a corner box: may or may not hold one
    lower, upper = np.stack([far[0], near[0]]), np.stack([far[1], near[1]])
    fresh, _ = _attack(TEST_SAT)
    found = fresh.attack_boxes(lower, upper, np.array([0, 0]), Deadline(30))
    assert found is not None and found.case == 0
    x = found.x.astype(np.float64)
    assert any(np.all(x >= lower[i]) and np.all(x <= upper[i]) for i in range(2))


def test_attack_boxes_reports_nothing_on_sub_boxes_of_a_safe_instance():
    attack, prop = _attack(TEST_UNSAT, probes=256, restarts=16, steps=20)
    case = prop.cases[0]
    middle = (case.lower + case.upper) / 2
    lower, upper = np.stack([case.lower, middle]), np.stack([middle, case.upper])
    assert attack.attack_boxes(lower, upper, np.array([0, 0]), Deadline(30)) is None


@pytest.mark.parametrize(
    "benchmark, onnx, vnnlib",
    [
        # a flat piece covers 76 % of the box and the unsafe set about 1e-6 of it
        ("acasxu", "onnx/ACASXU_run2a_1_9_batch_2000.onnx", "vnnlib/prop_7.vnnlib"),
        # reached only from output-diversified starts
        ("mnist_fc", "onnx/mnist-net_256x6.onnx", "vnnlib/prop_1_0.05.vnnlib"),
    ],
)
def test_attack_falsifies_hard_vnncomp_instances_in_a_few_rounds(benchmark, onnx, vnnlib):
    # The attack before output diversification, distinct starts and flat-piece walks missed both in 50 rounds.
    attack, _ = _attack((shared(benchmark, onnx), shared(benchmark, vnnlib)))
    assert any(attack.run_round(Deadline(60)) is not None for _ in range(5))

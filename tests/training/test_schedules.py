import itertools
import pickle

import pytest

from verifier.training.schedules import LinearRamp, SmoothRamp

SCHED = SmoothRamp(target=0.3, warmup=10, ramp=100, mid=0.25, exponent=4.0)


def test_zero_during_warmup_and_target_after():
    assert all(SCHED(step) == 0.0 for step in range(10))
    assert SCHED(10) == 0.0 and SCHED(11) > 0
    assert SCHED(109) < 0.3
    assert SCHED(110) == 0.3 and SCHED(10_000) == 0.3


def test_pieces_follow_the_formula():
    c = 0.3 / (1 + 4.0 * 0.75 / 0.25)  # = 0.3 / 13
    assert SCHED.knee == pytest.approx(c)
    assert SCHED(10 + 12.5) == pytest.approx(c * 0.5**4)  # f = 1/8, half way to mid
    assert SCHED(35) == pytest.approx(c)  # f = mid
    assert SCHED(60) == pytest.approx(c + (0.3 - c) * (0.5 - 0.25) / 0.75)


def test_continuous_and_monotone():
    steps = [i / 100 for i in range(12_001)]
    values = [SCHED(s) for s in steps]
    rises = [b - a for a, b in itertools.pairwise(values)]
    assert min(rises) >= 0
    # the largest slope of the ramp is the linear piece's, (target - c) / (1 - mid) per ramp length
    max_slope = (0.3 - SCHED.knee) / 0.75 / 100
    assert max(rises) <= max_slope * 0.01 * (1 + 1e-9)


@pytest.mark.parametrize("mid, exponent", [(0.25, 4.0), (0.5, 2.0), (0.1, 3.0)])
def test_slope_continuous_at_mid(mid, exponent):
    sched = SmoothRamp(target=1.0, warmup=5, ramp=1000, mid=mid, exponent=exponent)
    at, h = 5 + mid * 1000, 1e-3
    left = (sched(at) - sched(at - h)) / h
    right = (sched(at + h) - sched(at)) / h
    assert right == pytest.approx(left, rel=1e-3)
    assert right == pytest.approx((1.0 - sched.knee) / (1 - mid) / 1000)


def test_exponent_one_is_a_straight_line():
    sched = SmoothRamp(target=2.0, warmup=0, ramp=50, exponent=1.0)
    for step in (5, 12.5, 20, 49):
        assert sched(step) == pytest.approx(2.0 * step / 50)


def test_zero_ramp_jumps_at_warmup():
    sched = SmoothRamp(target=1.0, warmup=3, ramp=0)
    assert [sched(s) for s in (2, 3, 4)] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": -1.0, "warmup": 0, "ramp": 10},
        {"target": float("nan"), "warmup": 0, "ramp": 10},
        {"target": 1.0, "warmup": -1, "ramp": 10},
        {"target": 1.0, "warmup": 0, "ramp": -10},
        {"target": 1.0, "warmup": 0, "ramp": 10, "mid": 0.0},
        {"target": 1.0, "warmup": 0, "ramp": 10, "mid": 1.0},
        {"target": 1.0, "warmup": 0, "ramp": 10, "exponent": 0.5},
    ],
)
def test_smooth_ramp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="SmoothRamp"):
        SmoothRamp(**kwargs)


def test_linear_ramp():
    kappa = LinearRamp(start=1.0, end=0.5, begin=10, length=20)
    assert [kappa(s) for s in (0, 9, 10)] == [1.0, 1.0, 1.0]
    assert kappa(20) == pytest.approx(0.75)
    assert kappa(25) == pytest.approx(0.625)
    assert kappa(30) == 0.5 and kappa(1000) == 0.5
    values = [kappa(s) for s in range(40)]
    assert all(b <= a for a, b in itertools.pairwise(values))
    jump = LinearRamp(start=1.0, end=0.0, begin=5, length=0)
    assert [jump(4), jump(5)] == [1.0, 0.0]
    with pytest.raises(ValueError, match="LinearRamp"):
        LinearRamp(start=1.0, end=0.0, begin=0, length=-1)


@pytest.mark.parametrize("sched", [SCHED, LinearRamp(1.0, 0.0, 3, 7)])
def test_schedules_pickle(sched):
    copy = pickle.loads(pickle.dumps(sched))
    assert copy == sched
    assert [copy(s) for s in range(0, 120, 7)] == [sched(s) for s in range(0, 120, 7)]

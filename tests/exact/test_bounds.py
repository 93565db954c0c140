"""Every engine method against the exact optimum: the lower bound of ``c^T f(x)`` over a box never exceeds
the smallest value the network takes there (found by the MILP oracle and attained at a point).

Each network is bounded over a batch of nested boxes: its whole box, where bounds are loose, and boxes
shrunk around a random point down to the point itself, where bounds are nearly or exactly tight, so that
a bound raised by even a little above the truth is caught."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

import verifier
from tests.exact.milp import minimise
from tests.exact.properties import QUICK_SEEDS, exact_case
from tests.helpers import tolerance

SHRINK = (0.1, 0.01, 0.0)  # widths of the smaller boxes, relative to the whole box


@functools.cache
def _nested(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``lo, hi`` (``(B, n_in)``, float32 values), the rows ``C`` and the exact minima ``(B, S)``."""
    case = exact_case(seed)
    net = case.net
    rng = np.random.default_rng(seed)
    point = net.lo + (net.hi - net.lo) * rng.uniform(size=net.n_in)
    los, his, minima = [net.lo], [net.hi], [case.minima]
    for s in SHRINK:
        half = s * (net.hi - net.lo) / 2
        lo, hi = (np.clip((point + d).astype(np.float32), net.lo, net.hi) for d in (-half, half))
        sub = dataclasses.replace(net, lo=lo, hi=hi)
        los, his = los + [lo], his + [hi]
        minima.append(np.array([minimise(sub, c).value for c in case.C]))
    return np.stack(los), np.stack(his), case.C, np.stack(minima)


def _assert_below_minima(seed: int, dtype: torch.dtype) -> None:
    lo, hi, C, minima = (torch.from_numpy(a).to(dtype) for a in _nested(seed))
    model = verifier.load(exact_case(seed).net.module(), lo[:1]).to(dtype=dtype)
    above = {}
    for method in verifier.METHODS:
        lower = model.bounds(verifier.Box(lo, hi), method=method, C=C[None], upper=False).lower
        assert lower.dtype == dtype and torch.isfinite(lower).all(), method
        if (lower > minima + tolerance(minima)).any():
            above[method] = (lower - minima).max().item()
    assert not above, f"net {seed}: lower bounds above the exact minimum by (method: amount) {above}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_lower_bounds_never_exceed_the_exact_minimum(seed, dtype):
    _assert_below_minima(seed, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(100, 140))
def test_lower_bounds_never_exceed_the_exact_minimum_sweep(seed, dtype):
    _assert_below_minima(seed, dtype)

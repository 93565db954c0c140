"""The exact tests' own ground truth: generated networks agree across their three forms (torch, ONNX run by
onnxruntime, float64), the MILP optimum is attained and no sample goes below it, two independent exact
oracles agree, and the VNN-LIB files say what they are meant to."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import verifier
from tests.exact.milp import interval_bounds
from tests.exact.patterns import minimise_by_patterns
from tests.exact.properties import MARGINS, QUICK_SEEDS, exact_case, write_instance
from tests.graph.graph_testing import OnnxRunner
from verifier.spec.vnnlib import load_property


def _uniform(net, n: int, seed: int) -> np.ndarray:
    """``(n, n_in)`` float32 points of the net's box."""
    rng = np.random.default_rng(seed)
    return (net.lo + (net.hi - net.lo) * rng.uniform(size=(n, net.n_in))).astype(np.float32)


@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_torch_onnx_and_float64_forms_agree(seed, tmp_path):
    net = exact_case(seed).net
    x = _uniform(net, 64, seed)
    exact = net.evaluate(x)
    with torch.no_grad():
        ours = verifier.load(net.module(), torch.from_numpy(x[:1]))(torch.from_numpy(x)).double().numpy()
    onnx = net.save_onnx(tmp_path / "net.onnx", matmul=bool(seed % 2))
    with torch.no_grad():
        loaded = verifier.load(str(onnx))(torch.from_numpy(x)).double().numpy()
    runtime = OnnxRunner(onnx)(torch.from_numpy(x)).double().numpy()
    for name, y in (("module", ours), ("onnx file", loaded), ("onnxruntime", runtime)):
        assert np.allclose(y, exact, rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_milp_optimum_is_attained_and_below_every_sample(seed):
    case = exact_case(seed)
    net = case.net
    points = np.concatenate([_uniform(net, 20_000, seed), net.lo[None], net.hi[None]])
    sampled = net.evaluate(points) @ case.C.T
    for row, optimum in enumerate(case.optima):
        assert np.all(net.lo <= optimum.x) and np.all(optimum.x <= net.hi)
        # ``value`` is f at the solver's point: the solver's own bound must meet it, or the encoding is
        # loose (gap > 0) or cuts off reachable points (gap < 0).
        assert abs(optimum.gap) < 1e-7
        assert optimum.value <= sampled[:, row].min() + 1e-9


@pytest.mark.parametrize("seed", (0, 2, 3, 6, 9, 11))
def test_milp_agrees_with_pattern_enumeration(seed):
    case = exact_case(seed, "tiny")
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in interval_bounds(case.net))
    assert unstable <= 6, "keep the default run cheap: pick seeds with few unstable neurons"
    for c, optimum in zip(case.C, case.optima):
        assert minimise_by_patterns(case.net, c) == pytest.approx(optimum.value, abs=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 40))
def test_milp_agrees_with_pattern_enumeration_sweep(seed):
    case = exact_case(seed, "tiny")
    for c, optimum in zip(case.C, case.optima):
        assert minimise_by_patterns(case.net, c) == pytest.approx(optimum.value, abs=1e-8)


def test_properties_state_the_intended_margin(tmp_path):
    case = exact_case(0)
    for row, margin in itertools.product(range(len(case.C)), MARGINS):
        instance = write_instance(case, row, margin, tmp_path)
        (box,) = load_property(instance.vnnlib).cases
        (disjunct,) = box.disjuncts
        assert np.array_equal(box.lower, case.net.lo) and np.array_equal(box.upper, case.net.hi)
        assert np.array_equal(disjunct.C, case.C[row][None]) and np.array_equal(disjunct.d, [instance.d])
        assert case.optima[row].value - disjunct.d[0] == pytest.approx(margin, abs=1e-12)

"""Cutting planes (``engine.cuts``, ``verify.bab.mip_cuts``): the MILP encoding holds at every point of the
box, a ReLU's indicator lines bound its indicator, cuts valid on the box never make a bound unsound, and a
strong cut raises the bound as far as the cut allows."""

from __future__ import annotations

import dataclasses
import pickle
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint
from scipy.optimize import milp as solve_milp

import verifier
from tests.exact.milp import minimise
from tests.exact.nets import SMALL, random_direction, random_net
from tests.verify.test_bab_refine import CONFIG, HARD, _instance
from verifier.engine import alpha, crown
from verifier.engine import cuts as cutting
from verifier.engine.bounds import intermediate_bounds
from verifier.engine.params import Params, nonnegative
from verifier.engine.state import BoundConfig, BoundState
from verifier.ops.activations import ReLU
from verifier.spec.vnnlib import load_property
from verifier.verify.bab import milp, mip_cuts
from verifier.verify.bab.relu_split import ReluSplit, ReluSplitConfig
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline
from verifier.verify.instance import load_model, verify_instance
from verifier.verify.spec_batch import spec_batch

SEEDS = [3, 11, 29]


def _setup(seed: int, sizes=SMALL, net=None):
    """A random net (or ``net``) with CROWN's bounds on its box, and its MILP encoding."""
    net = random_net(seed, sizes) if net is None else net
    lo, hi = (torch.from_numpy(v)[None].double() for v in (net.lo, net.hi))
    model = verifier.load(net.module(), lo.float()).to(dtype=torch.float64)
    state = BoundState(model.graph, verifier.Box(lo, hi), BoundConfig(method="crown"))
    intermediate_bounds(state)
    bounds = {k: tuple(t[0].reshape(-1).numpy() for t in b) for k, b in state.bounds.items()}
    encoding = milp.encode(model.graph, net.lo, net.hi, bounds)
    return net, model, state, encoding


def _point_values(model, encoding, x: np.ndarray) -> np.ndarray:
    """The encoding's variables at input x: every node's value, and each indicator 1[input > 0]."""
    graph = model.graph
    values = {0: torch.from_numpy(x)[None]}
    for j in range(1, graph.output + 1):
        node = graph.nodes[j]
        values[j] = node.op.forward(*[values[i] for i in node.inputs])
    v = np.empty(len(encoding.lower))
    for i, (node, kind, pos) in enumerate(encoding.owner):
        if kind == milp.VALUE:
            v[i] = float(values[node].reshape(-1)[pos])
        else:
            v[i] = float(values[graph.nodes[node].inputs[0]].reshape(-1)[pos] > 0)
    return v


@pytest.mark.parametrize("seed", SEEDS)
def test_every_point_of_the_box_solves_the_encoding(seed):
    net, model, _, encoding = _setup(seed)
    assert milp.encodable(model.graph)
    rng = np.random.default_rng(seed)
    for x in net.lo + (net.hi - net.lo) * rng.uniform(size=(64, net.n_in)):
        v = _point_values(model, encoding, x)
        row = encoding.matrix @ v
        assert (v >= encoding.lower - 1e-9).all() and (v <= encoding.upper + 1e-9).all()
        assert (row >= encoding.row_lower - 1e-9).all() and (row <= encoding.row_upper + 1e-9).all()


def test_weights_that_highs_would_ignore_move_into_the_rows_sides():
    """HiGHS drops matrix entries of magnitude at most 1e-9 from its model; the encoding has none, and
    every point of the box still solves it (the dropped terms widen the affine rows)."""
    net = random_net(5)
    rng = np.random.default_rng(5)
    (w, b), *rest = net.layers
    w = np.where(rng.uniform(size=w.shape) < 0.5, np.float32(1e-9) * np.sign(w), w).astype(np.float32)
    net, model, _, encoding = _setup(5, net=dataclasses.replace(net, layers=((w, b), *rest)))
    assert (abs(encoding.matrix.data) > milp.TINY).all()
    both = np.isfinite(encoding.row_lower) & np.isfinite(encoding.row_upper)  # the affine rows
    assert (encoding.row_upper[both] > encoding.row_lower[both]).any()
    for x in net.lo + (net.hi - net.lo) * rng.uniform(size=(64, net.n_in)):
        v = _point_values(model, encoding, x)
        row = encoding.matrix @ v
        assert (row >= encoding.row_lower - 1e-12).all() and (row <= encoding.row_upper + 1e-12).all()


def test_indicator_lines_bound_the_indicator():
    gen = torch.Generator().manual_seed(5)
    lo = -torch.rand(2, 50, generator=gen, dtype=torch.float64)
    hi = torch.rand(2, 50, generator=gen, dtype=torch.float64)
    lo[:, :10], hi[:, 10:20] = 0.3, -0.2  # active and inactive neurons too
    lo[:, :10] = torch.minimum(lo[:, :10], hi[:, :10]).clamp(min=0)
    hi[:, 10:20] = torch.maximum(hi[:, 10:20], lo[:, 10:20]).clamp(max=0)
    hi = torch.maximum(hi, lo)
    q = torch.randn(3, 2, 50, generator=gen, dtype=torch.float64)
    out, into, const = ReLU().indicator_lines(q, lo, hi)
    for _ in range(200):
        h = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64)
        h[:, :3] = lo[:, :3]  # h = 0 where lo = 0 (the indicator is then taken as 1)
        d = torch.where(lo >= 0, 1.0, (h > 0).double())
        lhs = (q * d).sum(-1)
        rhs = (out * h.clamp(min=0)).sum(-1) + (into * h).sum(-1) + const
        assert (lhs >= rhs - 1e-12).all()


def _valid_cuts(encoding, rng: np.random.Generator, count: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``count`` random sparse rows ``a`` with ``rhs = max a v`` over the encoding (exact, by MILP): cuts
    valid at every solution, touching value and indicator variables alike."""
    n = len(encoding.lower)
    rows, rhs = [], []
    constraint = LinearConstraint(encoding.matrix, encoding.row_lower, encoding.row_upper)
    for _ in range(count):
        a = np.zeros(n)
        pick = rng.choice(n, size=min(6, n), replace=False)
        a[pick] = rng.standard_normal(len(pick))
        result = solve_milp(-a, constraints=constraint, integrality=encoding.integer.astype(int),
                      bounds=Bounds(encoding.lower, encoding.upper), options={"mip_rel_gap": 0.0})  # fmt: skip
        assert result.success
        rows.append(a)
        rhs.append(-result.fun + 1e-7)
    return sp.csr_matrix(np.array(rows)), np.array(rhs)


def _bound(model, state, c, cuts=None, steps=60, lr=0.2):
    state = BoundState(model.graph, state.region, BoundConfig(method="crown", alpha_steps=steps, alpha_lr=lr),
                       bounds=dict(state.bounds), cuts=cuts)  # fmt: skip
    rows = torch.from_numpy(c).reshape(1, 1, -1)
    with torch.no_grad():
        return float(alpha.optimise(state, rows, params=Params())[0, 0])


@pytest.mark.parametrize("seed", SEEDS)
def test_valid_cuts_keep_the_bound_sound_and_never_below_crown(seed):
    net, model, state, encoding = _setup(seed)
    rng = np.random.default_rng(seed)
    a, rhs = _valid_cuts(encoding, rng, 12)
    cuts = mip_cuts.to_cuts(encoding, model.graph, a, np.full(len(rhs), -np.inf), rhs, torch.float64)
    assert cuts.indicators, "the random cuts should touch some indicator"
    for _ in range(3):
        c = random_direction(net, rng)
        exact = minimise(net, c).value
        crown, cut = _bound(model, state, c, steps=0), _bound(model, state, c, cuts)
        assert cut <= exact + 1e-6, f"bound {cut} above the exact minimum {exact}"
        assert cut >= crown - 1e-9  # the first iterate: every multiplier at 0


@pytest.mark.parametrize("seed", SEEDS)
def test_the_objective_as_a_cut_gives_its_right_hand_side(seed):
    """``-c . f <= -min`` is valid; at multiplier 1 it cancels the objective's coefficients, leaving
    ``min`` (less the rounding slack) as the bound: the wiring of value terms, signs and constant."""
    net, model, state, encoding = _setup(seed)
    c = random_direction(net, np.random.default_rng(seed))
    exact = minimise(net, c)
    a = np.zeros((1, len(encoding.lower)))
    a[0, encoding.output] = -c
    cuts = mip_cuts.to_cuts(encoding, model.graph, sp.csr_matrix(a), np.array([-np.inf]),
                            np.array([-exact.dual_bound]), torch.float64)  # fmt: skip
    params = Params()
    params.tensors[cutting.KEY] = torch.ones(1, 1, 1, dtype=torch.float64)
    params.projections[cutting.KEY] = nonnegative
    params.freeze()
    state = BoundState(model.graph, state.region, state.cfg, bounds=dict(state.bounds), cuts=cuts)
    rows = torch.from_numpy(c).reshape(1, 1, -1)
    lower = float(crown.backward(state, model.graph.output, rows, params, ("out",), True)[0, 0])
    assert lower == pytest.approx(-float(cuts.rhs[0]), abs=1e-12)
    assert exact.dual_bound - 1e-3 < lower <= exact.dual_bound
    assert lower > _bound(model, state, c, steps=0)  # far above CROWN's


# HiGHS 1.15.1's cut pool at seed 10 excludes the MILP's optimum (by 0.61), and every other minimiser (the
# MILP with its cuts has minimum -0.206, not -0.307): the reason cuts are off by default (``mip_cuts``).
# Strict: should HiGHS's cuts become valid there, these fail.
INVALID = pytest.mark.xfail(strict=True, reason="HiGHS's cut pool holds cuts invalid for the MILP")


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
@pytest.mark.parametrize("seed", [0, 2, pytest.param(10, marks=INVALID)])
def test_highs_root_cuts_hold_below_the_cutoff_and_serve_their_row_alone(seed):
    net, model, state, encoding = _setup(seed, HARD)
    rng = np.random.default_rng(seed)
    c, other = random_direction(net, rng), random_direction(net, rng)
    best = minimise(net, c)
    cutoff = best.value + 0.05
    found = mip_cuts.root_cuts(encoding, c, cutoff, 30.0)
    assert found is not None, "HiGHS separated cuts at the root of these nets when this test was written"
    matrix, lower, upper = found
    points = net.lo + (net.hi - net.lo) * rng.uniform(size=(4096, net.n_in))
    points = np.concatenate([best.x[None], points[net.evaluate(points) @ c <= cutoff]])
    for x in points[:256]:
        row = matrix @ _point_values(model, encoding, x)
        assert (row <= upper + 1e-6).all() and (row >= lower - 1e-6).all()
    cuts = mip_cuts.to_cuts(encoding, model.graph, matrix, lower, upper, torch.float64, row=c, cutoff=cutoff)
    assert _bound(model, state, c, cuts) <= best.value + 1e-6
    # below the minimum, HiGHS's cuts may exclude every point: the bound then stops at the cutoff
    low = best.value - 0.05
    found = mip_cuts.root_cuts(encoding, c, low, 30.0)
    assert found is not None, "HiGHS separated cuts below the minimum too when this test was written"
    cuts = mip_cuts.to_cuts(encoding, model.graph, *found, torch.float64, row=c, cutoff=low)
    assert _bound(model, state, c, cuts) <= low
    assert _bound(model, state, other, cuts) == _bound(model, state, other)  # not their row: untouched


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
@pytest.mark.parametrize("seed", [2, pytest.param(10, marks=INVALID)])
def test_highs_root_cuts_keep_a_minimiser_of_their_row(seed):
    """What a lower bound of the row needs at the least: the MILP with the cuts added (solved exactly by
    scipy's HiGHS) keeps the MILP's minimum."""
    net, _, _, encoding = _setup(seed, HARD)
    c = random_direction(net, np.random.default_rng(seed))
    best = minimise(net, c)
    found = mip_cuts.root_cuts(encoding, c, best.value + 0.05, 30.0)
    assert milp_minimum(encoding, c, *found) <= best.value + 1e-6


def milp_minimum(encoding, c: np.ndarray, matrix, lower: np.ndarray, upper: np.ndarray) -> float:
    """The minimum of ``c . f`` over the encoding's MILP with the rows ``lower <= matrix v <= upper`` added
    (solved exactly by scipy's HiGHS)."""
    cost = np.zeros(len(encoding.lower))
    cost[encoding.output] = c
    rows = [LinearConstraint(encoding.matrix, encoding.row_lower, encoding.row_upper),
            LinearConstraint(matrix, lower, upper)]  # fmt: skip
    result = solve_milp(cost, constraints=rows, integrality=encoding.integer.astype(int),
                  bounds=Bounds(encoding.lower, encoding.upper), options={"mip_rel_gap": 0})  # fmt: skip
    assert result.success
    return result.fun


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_refined_roots_take_highs_cuts_and_stay_below_the_exact_minimum(tmp_path):
    instance = _instance(tmp_path)
    checker, model = load_model(instance.onnx)
    bounder = Bounder(model, spec_batch(load_property(instance.vnnlib), checker.dtype))
    brancher = ReluSplit(bounder, ReluSplitConfig(refine_share=0.02, cuts=True))
    roots = brancher.roots(np.arange(1), Deadline(60), refined=True)  # a tenth of it for the job
    assert brancher.cuts is not None and brancher.cuts.count > 0
    assert 0 < brancher.root_cuts.seconds < 60
    assert roots["param:cut"].shape == (1, 1, brancher.cuts.count)
    assert float(roots["lower"][0, 0]) <= instance.d + instance.margin + 1e-4
    without = ReluSplit(bounder, ReluSplitConfig(refine_share=0.02))  # cuts are off by default
    assert "param:cut" not in without.roots(np.arange(1), Deadline(20), refined=True)
    assert without.cuts is None


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_a_search_with_cuts_gives_the_exact_answer(tmp_path):
    """The hard property of ``test_bab_refine`` (exact margin 0.05): unsat or out of time, never sat,
    through roots refined briefly and cut, and children that carry the cuts' multipliers."""
    instance = _instance(tmp_path)
    config = dataclasses.replace(CONFIG, timeout=15, relu_split=ReluSplitConfig(refine_share=0.05, cuts=True))
    result = verify_instance(instance.onnx, instance.vnnlib, config)
    assert result.verdict in ("unsat", "timeout") and result.stats["cuts"] > 0


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_refined_roots_wait_a_tenth_of_the_time_left_at_most_for_cuts_still_coming(tmp_path, monkeypatch):
    waits = []

    class Silent:  # a job that does not answer within its time
        def __init__(self, *args):
            self.until, self.answered, self.seconds = time.monotonic() + args[-1], False, None

        def cuts(self, like, wait=0.0):
            waits.append(wait)

        def stop(self):
            pass

    monkeypatch.setattr(mip_cuts, "CutJob", Silent)
    instance = _instance(tmp_path)
    checker, model = load_model(instance.onnx)
    bounder = Bounder(model, spec_batch(load_property(instance.vnnlib), checker.dtype))
    brancher = ReluSplit(bounder, ReluSplitConfig(refine_share=0.02, cuts=True, cut_share=0.9))
    deadline = Deadline(20)
    brancher.roots(np.arange(1), deadline, refined=True)
    assert waits and max(waits) <= 0.1 * 20 and waits[-1] > 0
    assert brancher.cuts is None and not brancher.root_cuts.running


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_the_cut_job_starts_with_the_first_roots_and_stays_in_their_process(tmp_path):
    instance = _instance(tmp_path)
    checker, model = load_model(instance.onnx)
    bounder = Bounder(model, spec_batch(load_property(instance.vnnlib), checker.dtype))
    brancher = ReluSplit(bounder, ReluSplitConfig(cuts=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        brancher.roots(np.arange(1), Deadline(20))  # the first search's roots: open, so HiGHS starts
        job = brancher.root_cuts._job
        assert job is not None and job._process.poll() is None
        assert torch.get_num_threads() == 1  # the job's core is no longer the search's
        copy = pickle.loads(pickle.dumps(brancher))  # as ``shards`` sends it to its workers
        assert not copy.root_cuts.running and brancher.root_cuts._job is job
        brancher.root_cuts.close()
        assert job._process.poll() is not None and not brancher.root_cuts.running
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    default = ReluSplit(bounder, ReluSplitConfig())
    default.roots(np.arange(1), Deadline(20))
    assert not default.root_cuts.running


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_a_search_that_ends_before_refining_stops_the_cut_job(tmp_path, monkeypatch):
    jobs = []

    class Recorded(mip_cuts.CutJob):
        def __init__(self, *args):
            super().__init__(*args)
            jobs.append(self)

    monkeypatch.setattr(mip_cuts, "CutJob", Recorded)
    instance = _instance(tmp_path)
    split = ReluSplitConfig(cuts=True, probe_share=1.0)  # the first search takes the whole budget
    result = verify_instance(
        instance.onnx, instance.vnnlib, dataclasses.replace(CONFIG, timeout=4, relu_split=split)
    )
    assert result.verdict in ("unsat", "timeout") and "cuts" not in result.stats
    assert len(jobs) == 1 and jobs[0]._process.poll() is not None

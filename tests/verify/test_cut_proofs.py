"""Proofs of cutting planes (``verify.bab.cut_proofs``): the LP bound from any multipliers is a lower bound,
the cuts HiGHS derives that exclude points of the MILP are never proven, the ones proven hold, and the
search's cut job hands on proven cuts only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from tests.exact.milp import minimise
from tests.exact.nets import random_direction
from tests.verify.test_bab_refine import HARD
from tests.verify.test_mip_cuts import _point_values, _setup, milp_minimum
from verifier.verify.bab import cut_proofs, milp, mip_cuts

pytestmark = pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")


def _random_lp(seed: int):
    rng = np.random.default_rng(seed)
    m, n = 12, 20
    matrix = sp.random(m, n, density=0.4, random_state=seed, format="csr") * 3
    lower, upper = -rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
    centre = matrix @ rng.uniform(lower, upper)
    row_lower = np.where(rng.uniform(size=m) < 0.5, centre - rng.uniform(0, 1, m), -np.inf)
    row_upper = np.where(rng.uniform(size=m) < 0.7, centre + rng.uniform(0, 1, m), np.inf)
    return rng.standard_normal(n), matrix, row_lower, row_upper, lower, upper


@pytest.mark.parametrize("seed", range(5))
def test_the_bound_from_any_multipliers_is_below_the_lps_minimum(seed):
    cost, matrix, row_lower, row_upper, lower, upper = _random_lp(seed)
    stacked = sp.vstack([matrix, -matrix]).tocsr()
    sides = np.concatenate([row_upper, -row_lower])
    finite = np.isfinite(sides)
    exact = linprog(cost, A_ub=stacked[finite], b_ub=sides[finite], bounds=list(zip(lower, upper)))
    assert exact.status == 0
    marginals = np.zeros(len(sides))
    marginals[finite] = exact.ineqlin.marginals  # <= 0 for rows of A_ub v <= b_ub
    y = marginals[: len(row_upper)] - marginals[len(row_upper) :]
    best = cut_proofs.safe_lower(cost, matrix, row_lower, row_upper, lower, upper, y)
    assert exact.fun - 1e-9 <= best <= exact.fun  # the LP's own multipliers: its minimum, rounded down
    rng = np.random.default_rng(seed)
    for _ in range(50):
        any_y = rng.standard_normal(len(y)) * rng.uniform(0, 3)
        assert cut_proofs.safe_lower(cost, matrix, row_lower, row_upper, lower, upper, any_y) <= exact.fun


def test_a_farkas_certificate_proves_infeasible_rows():
    matrix = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, -1.0]]))
    lower, upper = np.zeros(2), np.ones(2)
    # v0 + v1 >= 3 is out of reach of the unit box
    row_lower, row_upper = np.array([3.0, -np.inf]), np.array([np.inf, np.inf])
    zero = np.zeros(2)
    assert cut_proofs.safe_lower(zero, matrix, row_lower, row_upper, lower, upper, np.array([1.0, 0.0])) > 0
    assert cut_proofs.safe_lower(zero, matrix, row_lower, row_upper, lower, upper, np.array([-1.0, 0.0])) <= 0


def _pool(seed: int) -> SimpleNamespace:
    """A HARD net of ``seed``, its encoding and bounds, a row ``c``, its minimiser ``best``, and HiGHS's root
    cuts ``found`` cut off just above it (at ``cutoff``)."""
    net, model, state, encoding = _setup(seed, HARD)
    c = random_direction(net, np.random.default_rng(seed))
    best = minimise(net, c)
    cutoff = best.value + 0.05
    bounds = {k: tuple(t[0].reshape(-1).numpy() for t in b) for k, b in state.bounds.items()}
    found = mip_cuts.root_cuts(encoding, c, cutoff, 30.0)
    return SimpleNamespace(net=net, model=model, encoding=encoding, bounds=bounds, c=c, best=best,
                           cutoff=cutoff, found=found)  # fmt: skip


@pytest.mark.parametrize("seed", [10, 25])
def test_the_cuts_that_exclude_the_minimiser_are_not_proven(seed):
    """Seeds 10 and 25: HiGHS 1.15.1's pool holds cuts violated at the MILP's minimiser
    (``test_mip_cuts``); none of them is proven, and many others are."""
    p = _pool(seed)
    net, model, encoding, c, best, cutoff = p.net, p.model, p.encoding, p.c, p.best, p.cutoff
    matrix, lower, upper = p.found
    row = matrix @ _point_values(model, encoding, best.x)
    violated = (row > upper + 1e-6) | (row < lower - 1e-6)
    assert violated.any(), "HiGHS's pool held invalid cuts here when this test was written"
    kept, kept_lower, kept_upper = mip_cuts.proven_rows(encoding, matrix, lower, upper, c, cutoff, 60.0)
    assert kept.shape[0] >= matrix.shape[0] // 3
    rng = np.random.default_rng(seed)
    points = net.lo + (net.hi - net.lo) * rng.uniform(size=(4096, net.n_in))
    points = np.concatenate([best.x[None], points[net.evaluate(points) @ c <= cutoff]])
    for x in points[:256]:
        row = kept @ _point_values(model, encoding, x)
        assert (row <= kept_upper + 1e-9).all() and (row >= kept_lower - 1e-9).all()


@pytest.mark.parametrize("seed", [10, 25])
def test_the_milp_with_the_proven_cuts_keeps_its_minimum(seed):
    """What HiGHS's own pool fails at seed 10 (``test_mip_cuts``, strict xfail) holds for the proven part."""
    p = _pool(seed)
    proven = mip_cuts.proven_rows(p.encoding, *p.found, p.c, p.cutoff, 60.0)
    assert milp_minimum(p.encoding, p.c, *proven) <= p.best.value + 1e-6


def test_a_cut_that_only_the_whole_network_could_justify_is_not_proven():
    """``c . f >= minimum + 0.1`` is false at the minimiser, which lies below the cutoff; ``c . f >= minimum
    - 1`` holds but is not for a local relaxation to show; a row of the program itself is (with a little
    slack: it is tight)."""
    p = _pool(10)
    encoding, best, cutoff = p.encoding, p.best, p.cutoff
    n = len(encoding.lower)
    objective = np.zeros(n)
    objective[encoding.output] = p.c
    relu_row = int(np.flatnonzero(np.isfinite(encoding.row_upper) & ~np.isfinite(encoding.row_lower))[-1])
    a = sp.csr_matrix(np.array([-objective, -objective, encoding.matrix[[relu_row]].toarray()[0]]))
    rhs = np.array([-(best.value + 0.1), -(best.value - 1.0), encoding.row_upper[relu_row] + 1e-7])
    program = sp.vstack([encoding.matrix, sp.csr_matrix(objective[None])]).tocsr()
    ok = cut_proofs.proven(a, rhs, program, np.append(encoding.row_lower, -np.inf),
                           np.append(encoding.row_upper, cutoff), encoding.lower, encoding.upper,
                           encoding.integer, 60.0, nodes=16, rounds=3)  # fmt: skip
    assert ok.tolist() == [False, False, True]


def _chain():
    """Two ReLUs in a row, big-M: ``h = x - 0.5``, ``y = relu(h)`` (indicator ``d``), ``h2 = y - 0.25``,
    ``y2 = relu(h2)`` (indicator ``d2``); variables x, h, y, d, h2, y2, d2, rows as ``encode`` writes them.
    Probing ``d2 = 1`` gives ``h2 >= 0``, ``y >= 0.25``, ``d = 1``, ``h >= 0.25``, ``x >= 0.75``."""
    rows = [  # (coefficients by variable, lower side, upper side)
        ({1: 1, 0: -1}, -0.5, -0.5),
        ({2: 1, 1: -1}, 0.0, np.inf),
        ({2: 1, 3: -0.5}, -np.inf, 0.0),
        ({2: 1, 1: -1, 3: 0.5}, -np.inf, 0.5),
        ({4: 1, 2: -1}, -0.25, -0.25),
        ({5: 1, 4: -1}, 0.0, np.inf),
        ({5: 1, 6: -0.25}, -np.inf, 0.0),
        ({5: 1, 4: -1, 6: 0.25}, -np.inf, 0.25),
    ]
    matrix = np.zeros((len(rows), 7))
    for i, (coefficients, _, _) in enumerate(rows):
        matrix[i, list(coefficients)] = list(coefficients.values())
    sides = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    lower = np.array([0.0, -0.5, 0.0, 0.0, -0.25, 0.0, 0.0])
    upper = np.array([1.0, 0.5, 0.5, 1.0, 0.25, 0.25, 1.0])
    integer = np.array([False, False, False, True, False, False, True])
    return sp.csr_matrix(matrix), *sides, lower, upper, integer


def test_a_probing_cut_is_proven_once_the_cone_of_its_variables_joins():
    """``0.75 d2 <= x`` holds (``_chain``), but no point that violates it breaks a row around the ones that
    hold x and d2 whatever the other variables are, so growing by broken rows stalls; the cone (here every
    row) proves it. ``0.8 d2 <= x`` fails at x = 0.75 and is proven by neither."""
    program = _chain()
    a = sp.csr_matrix(np.array([[-1.0, 0, 0, 0, 0, 0, 0.75], [-1.0, 0, 0, 0, 0, 0, 0.8]]))
    rhs = np.full(2, 1e-6)  # the first is tight at x = 0.75: a proof's rounding needs room
    alone = cut_proofs.proven(a, rhs, *program, 10.0)
    coned = cut_proofs.proven(a, rhs, *program, 10.0, cone=lambda columns: np.arange(program[0].shape[0]))
    assert alone.tolist() == [False, False] and coned.tolist() == [True, False]


def test_the_cone_of_a_variable_reaches_the_input_through_its_definitions():
    """``milp.cones``: an output variable's cone holds its own defining row, only rows of its node or
    below, and rows of the first affine node (written over the input), and stays within its limit."""
    _, _, _, encoding = _setup(3, HARD)
    node = encoding.owner[:, 0]
    by_row = encoding.matrix.tocsr()
    latest = np.array([node[by_row[i].indices].max() for i in range(by_row.shape[0])])
    variable = encoding.output[:1]
    rows = milp.cones(encoding, encoding.matrix)(variable)
    own = np.flatnonzero(encoding.matrix.tocsc()[:, variable].toarray()[:, 0])
    assert np.isin(own, rows).all()
    assert (latest[rows] <= node[variable[0]]).all() and (latest[rows] == 1).any()
    assert len(rows) < encoding.matrix.shape[0]  # not the other outputs' rows
    small = milp.cones(encoding, encoding.matrix, limit=len(own))(variable)
    assert np.array_equal(small, own)


def test_the_cut_job_hands_on_proven_cuts_only(monkeypatch):
    """``serve``'s path: HiGHS's pool at seed 10 goes through ``proven_rows`` before it becomes the
    engine's cuts."""
    p = _pool(10)
    seen = []
    original = mip_cuts.proven_rows

    def spy(*args):
        out = original(*args)
        seen.append((p.found[0].shape[0], out[0].shape[0]))
        return out

    monkeypatch.setattr(mip_cuts, "proven_rows", spy)
    monkeypatch.setattr(mip_cuts, "root_cuts", lambda *args: p.found)
    cuts = mip_cuts.job_cuts(p.model.graph, p.net.lo, p.net.hi, p.bounds, p.c, p.cutoff, 60.0)
    assert len(seen) == 1 and seen[0][1] < seen[0][0]
    proven = original(p.encoding, *p.found, p.c, p.cutoff, 60.0)
    assert cuts.count == mip_cuts.one_sided(p.encoding, *proven, 0.0)[1].size

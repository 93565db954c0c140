"""Branch and bound with input splitting on tiny random ReLU networks, checked against dense sampling."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

import verifier
from tests.graph.graph_testing import Net
from verifier.engine import branching, crown
from verifier.engine.bounds import refresh_after
from verifier.errors import BoundComputationError
from verifier.spec.property import Case, Disjunct, Property
from verifier.verify.attack import Attack, AttackConfig
from verifier.verify.bab import disjuncts, driver
from verifier.verify.bab.input_split import InputSplit, InputSplitConfig, joint_gaps
from verifier.verify.bab.relu_split import ReluSplit, ReluSplitConfig
from verifier.verify.bounding import Bounder, UnsoundBoundError
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.instance import load_model
from verifier.verify.onnx_check import in_box, violated_disjunct
from verifier.verify.spec_batch import spec_batch

LOWER, UPPER = np.array([-1.0, -0.5]), np.array([1.0, 1.5])
CELLS = 400  # grid cells per input coordinate for the dense minimum


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-16-16-2 ReLU network as an ONNX file; returns (path, loaded model, ``low``, ``high``): per output,
    the minimum over the box lies in ``[low, high]`` (``high`` is attained on a grid point, ``low`` bounds
    IBP on every cell of that grid, where cells are so small that IBP is nearly exact)."""
    net = Net([1, 2], seed=3)
    h = net.op("Relu", net.gemm("x", 2, 16))
    h = net.op("Relu", net.gemm(h, 16, 16))
    path = tmp_path_factory.mktemp("bab") / "tiny.onnx"
    onnx.save(net.model(net.gemm(h, 16, 2)), path)
    _, model = load_model(path)
    axes = [torch.linspace(lo, hi, CELLS + 1, dtype=torch.float64) for lo, hi in zip(LOWER, UPPER)]
    corner = lambda i, j: torch.stack(torch.meshgrid(axes[0][i], axes[1][j], indexing="ij"), -1).reshape(
        -1, 2
    )
    low_end, high_end = slice(0, CELLS), slice(1, CELLS + 1)
    cells = verifier.Box(corner(low_end, low_end).float(), corner(high_end, high_end).float())
    with torch.no_grad():
        low = model.bounds(cells, method="ibp", upper=False).lower.min(0).values.double()
        high = model(corner(slice(None), slice(None)).float()).min(0).values.double()
    return path, model, low.numpy(), high.numpy()


def property_of(d0: float, d1: float) -> Property:
    """Unsafe if ``y0 <= d0`` or ``y1 <= d1`` on the box."""
    rows = [
        Disjunct(np.array([[1.0, 0.0]]), np.array([d0])),
        Disjunct(np.array([[0.0, 1.0]]), np.array([d1])),
    ]
    return Property(2, 2, (Case(LOWER, UPPER, tuple(rows)),))


def problem_for(path, prop: Property) -> driver.Problem:
    """The bound methods' state after CROWN on the whole box, as ``decide`` hands it to branch and bound."""
    checker, model = load_model(path)
    bounder = Bounder(model, spec_batch(prop, checker.dtype))
    with torch.no_grad():
        bounder.run("crown", Deadline(30))
    attack = Attack(model, model.input_shape, bounder.spec, checker, prop, AttackConfig(), seed=0)
    return driver.Problem(bounder, checker, prop, attack)


def run_bab(problem: driver.Problem, brancher=None) -> driver.BabResult:
    brancher = brancher or InputSplit(problem.bounder)
    roots = brancher.roots(np.flatnonzero(~problem.bounder.case_excluded()))
    return driver.run(brancher, roots, problem, driver.BabConfig(), Deadline(120))


def test_a_small_positive_margin_is_proved(tiny):
    path, _, low, _ = tiny
    d = low - 2e-3  # the true minimum of y_k exceeds d_k by 2e-3 to 2e-3 + (high - low)
    problem = problem_for(path, property_of(*d))
    assert not problem.bounder.case_excluded().all(), "CROWN alone should not decide this property"
    result = run_bab(problem)
    assert result.verdict == "unsat" and result.domains > 0


def test_a_deadline_passing_inside_an_attack_round_does_not_end_the_instance(tiny, monkeypatch):
    """The attack inside a search polls the search's deadline. When that is a sub-deadline (the probe
    search before refining), its passing mid-round is the search's business: the search goes on to its
    own end, instead of the exception ending the whole instance as a ``timeout`` (oval21 cifar_base
    img9410 ended at 37.7 s of 720 so)."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    rounds = []

    def deadline_passes(*args):
        rounds.append(1)
        raise DeadlineReached("the probe's budget passed during the round")

    monkeypatch.setattr(problem.attacker, "attack_boxes", deadline_passes)
    result = run_bab(problem)
    assert rounds and result.verdict == "unsat"


def test_a_narrow_unsafe_region_gives_a_checked_counterexample(tiny):
    path, _, low, high = tiny
    prop = property_of(low[0] - 1e-2, high[1] + 1e-3)  # y1 <= min + 1e-3 holds on a small region only
    result = run_bab(problem_for(path, prop))
    assert result.verdict == "sat"
    cex = result.counterexample
    y = load_model(path)[0].run(cex.x)
    case = prop.cases[0]
    assert in_box(cex.x, case.lower, case.upper) and violated_disjunct(case, y) == 1


def test_deep_open_domains_get_optimised_slopes_that_stay_sound(tiny):
    """Open domains at ``alpha_depth`` or deeper are bounded again with optimised output slopes: never
    lower than CROWN's bounds, higher on some, below the model's values at sampled points; shallower
    domains keep CROWN's."""
    path, model, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    crown_only = InputSplit(problem.bounder, InputSplitConfig(alpha_depth=None))
    domains = driver.settle(crown_only, crown_only.roots(np.arange(1)), problem)
    for _ in range(3):
        domains = driver.expand(crown_only, domains, problem)  # depth 3, the open ones
    lower = {}
    for name, depth in (("crown", None), ("deep", 3), ("too deep", 4)):
        brancher = InputSplit(problem.bounder, InputSplitConfig(alpha_depth=depth))
        lower[name] = brancher.bound(dict(domains))
    assert torch.equal(lower["too deep"], lower["crown"])
    assert (lower["deep"] >= lower["crown"]).all() and (lower["deep"] > lower["crown"] + 1e-4).any()
    lo, hi = domains["lo"], domains["hi"]
    x = lo + (hi - lo) * torch.rand((512, *lo.shape), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = model(x.reshape(-1, 2)).reshape(512, -1, 2).double()
    assert (y.amin(0) >= lower["deep"] - 1e-5).all()  # C is the identity on (y0, y1) here


def test_children_bounds_are_sound_and_never_looser_than_their_parent(tiny):
    path, model, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = InputSplit(problem.bounder)
    domains = driver.settle(brancher, brancher.roots(np.arange(1)), problem)
    gen = torch.Generator().manual_seed(5)
    for _ in range(4):
        children = driver.expand(brancher, domains, problem)
        n = domains["lower"].shape[0]
        parent_of_child = torch.cat([torch.arange(n), torch.arange(n)])
        assert (children["lower"] >= domains["lower"][parent_of_child]).all()
        assert (children["depth"] == domains["depth"][parent_of_child] + 1).all()
        lo, hi = children["lo"], children["hi"]
        x = lo + (hi - lo) * torch.rand((256, *lo.shape), generator=gen)
        with torch.no_grad():
            y = model(x.reshape(-1, 2)).reshape(256, -1, 2).double()
        assert (y >= children["lower"] - 1e-5).all()  # C is the identity on (y0, y1) here
        domains = children


class LooseSplit(InputSplit):
    """Input splitting whose children bounds are useless: the parents' bounds must be kept."""

    def bound(self, children):
        return super().bound(children) - 1e9


class OverconfidentSplit(InputSplit):
    """Input splitting whose children bounds are raised by 10: unsound, which the driver must notice."""

    def bound(self, children):
        return super().bound(children) + 10.0


class NanSplit(InputSplit):
    """Input splitting whose children bounds are NaN: a NaN scores as neither open nor closed."""

    def bound(self, children):
        return super().bound(children) * torch.nan


def test_a_nan_bound_raises_instead_of_closing_the_domain(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = NanSplit(problem.bounder)
    with pytest.raises(BoundComputationError, match="NaN bound"):
        driver.settle(brancher, brancher.roots(np.arange(1)), problem)


def test_parent_bounds_survive_looser_children(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = LooseSplit(problem.bounder)
    domains = driver.settle(brancher, brancher.roots(np.arange(1)), problem)
    children = driver.expand(brancher, domains, problem)
    torch.testing.assert_close(children["lower"], domains["lower"].repeat(2, 1))


def test_unsound_child_bounds_raise_instead_of_unsat(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    with pytest.raises(UnsoundBoundError, match="bab-input lower bound"):
        run_bab(problem, OverconfidentSplit(problem.bounder))


class OverconfidentJoint(InputSplit):
    """Input splitting whose joint bounds (``disjuncts.JOINT``) are raised by 10: unsound, to be noticed."""

    def bound(self, children):
        lower = super().bound(children)
        children[disjuncts.JOINT] = children[disjuncts.JOINT] + 10.0
        return lower


def test_unsound_joint_bounds_raise_instead_of_unsat(tiny):
    path, _, low, _ = tiny
    both = Disjunct(np.eye(2), low - 2e-3)  # unsafe where both outputs are below their minimum: nowhere
    problem = problem_for(path, Property(2, 2, (Case(LOWER, UPPER, (both,)),)))
    with pytest.raises(UnsoundBoundError, match="bab-input joint lower bound"):
        run_bab(problem, OverconfidentJoint(problem.bounder))
    assert run_bab(problem).verdict == "unsat"


def test_the_domain_budget_ends_the_search_with_unknown(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = InputSplit(problem.bounder)
    roots = brancher.roots(np.arange(1))
    result = driver.run(brancher, roots, problem, driver.BabConfig(max_domains=4), Deadline(60))
    assert result.verdict == "unknown" and 4 <= result.domains
    # where it stood: its open domains' lowest score, which only rises as the search goes on
    longer = driver.run(brancher, roots, problem, driver.BabConfig(max_domains=8), Deadline(60))
    assert longer.verdict == "unknown" and result.bound <= longer.bound <= 0
    # while batches are out (workers), their domains are in no queue: no bound rather than too high a one
    search = driver.Search.start(brancher, roots, problem, driver.BabConfig(), Deadline(60))
    search.deadline = Deadline(0)
    search.settle(busy=True)
    assert search.result.verdict == "timeout" and search.result.bound is None
    search.settle(busy=False)
    assert search.result.bound == search.queue.global_bound() <= 0
    assert driver.run(brancher, roots, problem, driver.BabConfig(), Deadline(0)).verdict == "timeout"


def test_the_queue_memory_budget_ends_the_search_with_unknown_and_says_why(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = InputSplit(problem.bounder)
    roots = brancher.roots(np.arange(1))
    budget = 200  # bytes: one open input-split domain of this net takes 120, and the search reaches 3
    result = driver.run(brancher, roots, problem, driver.BabConfig(max_queue_bytes=budget), Deadline(60))
    assert result.verdict == "unknown" and result.domains > 0
    assert "open domains hold" in result.stopped and "budget" in result.stopped
    unlimited = driver.run(brancher, roots, problem, driver.BabConfig(), Deadline(60))
    assert unlimited.verdict == "unsat" and unlimited.stopped == "" and unlimited.domains > result.domains
    assert driver.queue_budget(driver.BabConfig()) > 2**20  # the default: a share of physical memory


def test_the_split_halves_the_coordinate_the_bound_depends_on(tmp_path):
    net = Net([1, 2])
    weights = net.const(np.array([[0.0], [3.0]]))  # y = 3 x1: the bound does not depend on x0 at all
    path = tmp_path / "linear.onnx"
    onnx.save(net.model(net.op("Gemm", "x", weights, net.const(np.zeros(1)))), path)
    case = Case(np.array([-5.0, 0.0]), np.array([5.0, 1.0]), (Disjunct(np.array([[1.0]]), np.array([-1.0])),))
    problem = problem_for(path, Property(2, 1, (case,)))
    brancher = InputSplit(problem.bounder)
    children = driver.expand(
        brancher, driver.settle(brancher, brancher.roots(np.arange(1)), problem), problem
    )
    np.testing.assert_array_equal(children["lo"].numpy(), [[-5.0, 0.0], [-5.0, 0.5]])
    np.testing.assert_array_equal(children["hi"].numpy(), [[5.0, 0.5], [5.0, 1.0]])


def _difference_of_squares(tmp_path):
    """``y = (x0 + x1)(x0 - x1) = x0^2 - x1^2``: a product of two graph tensors, at most 1 on [-1, 1]^2."""
    net = Net([1, 2])
    s = net.op("MatMul", "x", net.const(np.array([[1.0], [1.0]])))
    d = net.op("MatMul", "x", net.const(np.array([[1.0], [-1.0]])))
    path = tmp_path / "squares.onnx"
    onnx.save(net.model(net.op("Mul", s, d)), path)
    return path


def test_input_splitting_proves_a_product_whose_bound_ignores_one_coordinate(tmp_path):
    """Near x0 = +-1 the product's linear bound and gradient hardly depend on x1, so both linear scores
    pointed at x0 until its interval held no float32 midpoint (children equal to their parents, forever);
    gains far below the gap no longer count fully, and a coordinate that cannot be halved is not split."""
    path = _difference_of_squares(tmp_path)
    case = Case(
        np.array([-1.0, -1.0]), np.array([1.0, 1.0]), (Disjunct(np.array([[-1.0]]), np.array([-1.25])),)
    )
    result = run_bab(problem_for(path, Property(2, 1, (case,))))  # unsafe: y >= 1.25, never reached
    assert result.verdict == "unsat" and result.domains < 5000


def test_a_coordinate_without_a_float32_midpoint_is_not_split(tmp_path):
    path = _difference_of_squares(tmp_path)
    case = Case(
        np.array([-1.0, -1.0]), np.array([1.0, 1.0]), (Disjunct(np.array([[-1.0]]), np.array([-1.25])),)
    )
    problem = problem_for(path, Property(2, 1, (case,)))
    brancher = InputSplit(problem.bounder)
    parent = driver.settle(brancher, brancher.roots(np.arange(1)), problem)
    parent["lo"] = torch.tensor([[np.nextafter(np.float32(1), np.float32(0)), -1.0]])
    parent["hi"] = torch.tensor([[1.0, 1.0]])
    parent = driver.settle(brancher, parent, problem)
    children = brancher.split(parent)
    np.testing.assert_array_equal(children["hi"][0].numpy(), [1.0, 0.0])  # x1 halved, x0 kept


def relu_split_roots(problem: driver.Problem):
    brancher = ReluSplit(problem.bounder)
    roots = brancher.roots(np.flatnonzero(~problem.bounder.case_excluded()))
    return brancher, driver.settle(brancher, roots, problem)


def test_relu_splitting_branches_on_each_open_disjunct_with_its_own_rows(tiny):
    """Two disjuncts open at the root give two domains, each bounding only its own row: slopes and
    multipliers are cut to that row, and a domain's score ignores the other disjunct's row."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher, roots = relu_split_roots(problem)
    assert roots["lower"].shape == (1, 2)
    open_rows = (roots["lower"][0] - torch.as_tensor(low - 2e-3) <= 0).nonzero().flatten().tolist()
    assert len(open_rows) >= 1, "the root must leave a disjunct open"
    domains = disjuncts.by_disjunct(roots, problem.bounder, brancher.narrow)
    assert domains[disjuncts.ROWS].tolist() == [[r] for r in open_rows]
    for key, t in domains.items():
        if key.startswith("param:"):
            assert t.shape[:2] == (len(open_rows), 1), key
    lower = brancher.bound(domains)
    for n, r in enumerate(open_rows):
        assert torch.isfinite(lower[n, r]) and torch.isneginf(lower[n, 1 - r])
    gap = domains["lower"] - torch.as_tensor(low - 2e-3 + problem.bounder.decide_tol[0])
    assert torch.equal(domains[driver.BOUND], gap.gather(1, domains[disjuncts.ROWS])[:, 0])


@pytest.mark.parametrize("refresh", [False, True])
def test_relu_split_domains_get_their_parents_bounds_clamped_by_the_new_split(tiny, refresh):
    """Without ``refresh`` a domain carries no bounds: they are rebuilt from its case's root bounds and
    its splits, and must equal what splitting the parent's state gives; with it, they are carried. (The
    shallow-first order, which turns ``refresh`` on, is off: this tiny net's roots would choose it.)"""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = ReluSplit(problem.bounder, ReluSplitConfig(refresh=refresh, shallow=False))
    roots = driver.settle(brancher, brancher.roots(np.arange(1)), problem)
    assert any(key.startswith("lo:") for key in roots) == refresh
    parents = roots
    for _ in range(3):  # three generations: splits accumulate
        parents = driver.settle(brancher, brancher.split(parents), problem)
        state, params = brancher._unpack(parents)
        children = brancher.split(parents)
        expected, _ = branching.split(state, params, parents["branch_node"], parents["branch_pos"])
        if refresh:
            refresh_after(expected, int(parents["branch_node"].min()))
        rebuilt, _ = brancher._unpack(children)
        for k in brancher.nodes:
            for got, want in zip(rebuilt.bounds[k], expected.bounds[k]):
                assert torch.equal(got, want), k
        assert sum(int((t != 0).sum()) for t in rebuilt.splits.values()) > 0


def test_relu_split_domains_store_parameters_at_half_precision_and_unpack_them_projected(tiny):
    """The queue keeps slopes and multipliers as bfloat16 (half the bytes); unpacked, they are float32 on
    their sound sets again (rounding may leave them: values pushed off both ends here must come back)."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher = ReluSplit(problem.bounder, ReluSplitConfig(shallow=False))
    roots = driver.settle(brancher, brancher.roots(np.arange(1)), problem)
    children = driver.settle(brancher, brancher.split(roots), problem)
    keys = [key for key in children if key.startswith("param:")]
    assert {key.split("/")[0] for key in keys} == {"param:slope", "param:beta"}
    for key in keys:
        t = children[key]
        assert t.dtype == torch.bfloat16, key
        off = torch.where(torch.arange(t.numel()) % 2 == 0, 3.0, -3.0).reshape(t.shape)
        children[key] = t + off.to(t.dtype)
    _, params = brancher._unpack(children)
    for key, t in params.tensors.items():
        assert t.dtype == torch.float32 and t.requires_grad
        assert torch.equal(t.detach(), params.projections[key](t.detach())), key
    assert brancher.bound(children).isfinite().any()


def test_relu_split_domains_store_only_the_roots_unstable_neurons_and_bound_as_if_they_stored_all(tiny):
    """Split states and per-neuron parameters are kept at the positions unstable at the root alone; three
    generations of children bound exactly as with every position stored."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    compact = ReluSplit(problem.bounder, ReluSplitConfig(shallow=False))
    full = ReluSplit(problem.bounder, ReluSplitConfig(shallow=False))
    keep = full._keep_root_bounds
    full._keep_root_bounds = lambda case, state: (keep(case, state), full._stored.positions.clear())
    generations = [driver.settle(b, b.roots(np.arange(1)), problem) for b in (compact, full)]
    unstable = {k: int(((lo < 0) & (hi > 0)).sum()) for k, (lo, hi) in compact._root_bounds.items()}
    assert sum(unstable.values()) < sum(lo.numel() for lo, _ in compact._root_bounds.values())
    for k, n in unstable.items():
        assert generations[0][f"split:{k}"].shape[1:] == (n,)
        assert generations[1][f"split:{k}"].shape[1:] == compact._root_bounds[k][0].shape[1:]
    nbytes = lambda domains: sum(t.nbytes for t in domains.values() if torch.is_tensor(t))
    assert nbytes(generations[0]) < nbytes(generations[1])
    for _ in range(3):
        generations = [driver.settle(b, b.split(g), problem) for b, g in zip((compact, full), generations)]
        torch.testing.assert_close(generations[0]["lower"], generations[1]["lower"], rtol=0, atol=1e-6)
        got, _ = compact._unpack(generations[0])
        want, _ = full._unpack(generations[1])
        for k in compact.nodes:
            assert torch.equal(got.splits.get(k, torch.zeros(0)), want.splits.get(k, torch.zeros(0))), k


def test_relu_splitting_proves_a_disjunction_and_finds_a_counterexample_of_one_disjunct(tiny):
    path, _, low, high = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    result = run_bab(problem, ReluSplit(problem.bounder))
    assert result.verdict == "unsat" and result.domains > 0
    prop = property_of(low[0] - 2e-3, high[1] + 1e-3)  # the second disjunct holds on a small region
    result = run_bab(problem_for(path, prop), ReluSplit(problem_for(path, prop).bounder))
    assert result.verdict == "sat"
    y = load_model(path)[0].run(result.counterexample.x)
    assert violated_disjunct(prop.cases[0], y) == 1


def test_a_disjunct_without_rows_keeps_the_domains_together(tiny):
    path, _, low, _ = tiny
    empty = Disjunct(np.zeros((0, 2)), np.zeros(0))
    prop = Property(2, 2, (Case(LOWER, UPPER, (Disjunct(np.array([[1.0, 0.0]]), np.array([low[0] - 2e-3])),
                                              empty)),))  # fmt: skip
    problem = problem_for(path, prop)
    brancher, roots = relu_split_roots(problem)
    assert disjuncts.by_disjunct(roots, problem.bounder, brancher.narrow) is roots


def test_an_attack_round_attacks_each_distinct_box_once(tiny, monkeypatch):
    """ReLU-split domains all have their case's box: a round over many of them attacks that box once
    (64 copies were 64 rounds of the same PGD). Input-split domains keep one box each."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    attacked = []
    monkeypatch.setattr(problem.attacker, "attack_boxes", lambda lo, hi, cases, deadline: attacked.append(
        (lo, hi, cases)))  # fmt: skip
    brancher, roots = relu_split_roots(problem)
    parents = disjuncts.by_disjunct(roots, problem.bounder, brancher.narrow)
    children = brancher.split(parents)
    brancher.bound(children)
    assert len(children["case"]) >= 2
    driver._attack(brancher, children, problem, Deadline(30))
    lo, hi, cases = attacked.pop()
    np.testing.assert_array_equal(cases, [0])
    np.testing.assert_array_equal(lo[0], problem.bounder.box_lo[0])
    np.testing.assert_array_equal(hi[0], problem.bounder.box_hi[0])
    splitter = InputSplit(problem.bounder)
    parents = driver.settle(splitter, splitter.roots(np.array([0])), problem)
    children = splitter.split(parents)
    driver._attack(splitter, children, problem, Deadline(30))
    lo, hi, cases = attacked.pop()
    assert len(cases) == 2, "the two halves of the root's box"
    expected = [t.double().numpy() for t in splitter.boxes(children)]
    np.testing.assert_array_equal(lo, expected[0])
    np.testing.assert_array_equal(hi, expected[1])


def test_relu_splitting_roots_proved_at_once_leave_nothing_to_branch_on(tiny):
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low - 2e-3)))
    brancher, roots = relu_split_roots(problem)
    roots["lower"] = torch.full_like(roots["lower"], 1e3)  # as if alpha-CROWN had excluded both rows
    roots = driver.settle(brancher, roots, problem)
    assert driver.domain_count(disjuncts.by_disjunct(roots, problem.bounder, brancher.narrow)) == 0
    result = driver.run(brancher, roots, problem, driver.BabConfig(), Deadline(30))
    assert result.verdict == "unsat" and result.domains == 0


def _search_with_attack_time(attack_seconds: float, searched_for: float) -> driver.Search:
    """A search ``searched_for`` seconds old whose attack rounds took ``attack_seconds``, with open
    domains."""
    queue = driver.DomainQueue()
    n = 64
    queue.push({driver.BOUND: -torch.arange(n, dtype=torch.float64), driver.MARGIN: torch.zeros(n)})
    config = driver.BabConfig(attack_every=1, attack_share=0.25)
    began = time.monotonic() - searched_for
    return driver.Search(None, config, Deadline(60), queue, size=4, rate=1e6, began=began,
                         attack_seconds=attack_seconds)  # fmt: skip


def test_attack_rounds_keep_to_their_share_of_the_search_time():
    assert _search_with_attack_time(0.0, 0.0).next_batch()[1]  # the first round always runs
    assert _search_with_attack_time(2.0, 10.0).next_batch()[1]
    assert not _search_with_attack_time(3.0, 10.0).next_batch()[1]


def test_a_batch_after_an_attack_round_is_sized_on_the_bounding_rate_alone():
    search = _search_with_attack_time(0.0, 0.0)
    empty = {driver.BOUND: torch.zeros(0, dtype=torch.float64), driver.MARGIN: torch.zeros(0)}
    search.record(driver.Outcome(parents=10, children=empty, bounded=20, found=None, seconds=5.0,
                                 attack_seconds=4.0))  # fmt: skip
    assert search.rate == pytest.approx(10.0)
    assert search.attack_seconds == 4.0


def test_joint_gaps_exclude_a_disjunct_whose_rows_take_turns():
    """Rows ``x`` and ``-x`` over ``[-1, 1]`` against -0.5: each row alone dips to -0.5 below its
    threshold, but the larger of the two never does: half of each is 0.5 above everywhere."""
    a = torch.tensor([[[1.0], [-1.0], [2.0]]], dtype=torch.float64)
    c = torch.zeros(1, 3, dtype=torch.float64)
    threshold = torch.tensor([[-0.5, -0.5, 0.0]], dtype=torch.float64)
    member = torch.tensor([[[True, False], [True, False], [False, True]]])  # the third row alone
    lo, hi = torch.tensor([[-1.0]]), torch.tensor([[1.0]])
    joint = joint_gaps(a, c, lo, hi, threshold, member)
    assert joint[0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert joint[0, 1].item() == -np.inf  # a single row is what the row bounds already give


def test_joint_gaps_never_exceed_the_linear_program_over_the_box():
    """The joint gap is a lower bound of ``min_x max_s (a_s x + c_s - t_s)`` over the box (the LP), which is
    what makes it sound; and it gets close to it."""
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(0)
    n, rows, inputs = 100, 4, 5
    a = torch.randn(n, rows, inputs, generator=g, dtype=torch.float64)
    c = torch.randn(n, rows, generator=g, dtype=torch.float64)
    lo, hi = -torch.rand(n, inputs, generator=g), torch.rand(n, inputs, generator=g)
    threshold = torch.randn(n, rows, generator=g, dtype=torch.float64) * 0.1
    joint = joint_gaps(a, c, lo, hi, threshold, torch.ones(n, rows, 1, dtype=torch.bool))[:, 0].numpy()
    optimum = np.empty(n)
    for i in range(n):  # minimise t subject to a_s x + c_s - t_s <= t
        res = linprog(np.r_[np.zeros(inputs), 1.0], A_ub=np.c_[a[i].numpy(), -np.ones(rows)],
                      b_ub=(threshold[i] - c[i]).numpy(),
                      bounds=[*zip(lo[i].double().tolist(), hi[i].double().tolist()), (None, None)])  # fmt: skip
        optimum[i] = res.fun
    assert (joint <= optimum + 1e-9).all()
    assert (optimum - joint).mean() < 0.03  # 0.020 here; equal weights alone: 0.87


def test_input_splitting_proves_a_conjunction_no_row_excludes_at_the_root(tmp_path):
    """``y = (x, -x)`` on ``[-1, 1]`` is unsafe where ``y0 <= -0.5`` and ``y1 <= -0.5``: nowhere. No row's
    bound excludes it on the whole box; the joint bound does, so nothing needs splitting."""
    net = Net([1, 1])
    weights = net.const(np.array([[1.0, -1.0]]))
    path = tmp_path / "opposite.onnx"
    onnx.save(net.model(net.op("Gemm", "x", weights, net.const(np.zeros(2)))), path)
    both = Disjunct(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([-0.5, -0.5]))
    problem = problem_for(path, Property(1, 2, (Case(np.array([-1.0]), np.array([1.0]), (both,)),)))
    brancher = InputSplit(problem.bounder)
    roots = brancher.roots(np.arange(1))
    result = driver.run(brancher, roots, problem, driver.BabConfig(), Deadline(60))
    assert result.verdict == "unsat" and result.domains == 0


def test_relu_splitting_roots_end_their_optimisation_at_the_deadline(tiny, monkeypatch):
    """Past the deadline the roots' alpha-CROWN stops after its first pass (CROWN's slopes), so that the
    search can report its timeout instead of overrunning it."""
    path, _, low, _ = tiny
    problem = problem_for(path, property_of(*(low + 0.5)))  # open at the roots: the optimisation runs on
    passes = []
    backward = crown.backward
    monkeypatch.setattr(crown, "backward", lambda *a, **k: passes.append(1) or backward(*a, **k))
    cases = np.flatnonzero(~problem.bounder.case_excluded())
    ReluSplit(problem.bounder).roots(cases, Deadline(0))
    spent = len(passes)
    passes.clear()
    ReluSplit(problem.bounder).roots(cases, Deadline(30))
    assert spent < len(passes)

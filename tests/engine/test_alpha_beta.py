"""Relaxation parameters, full alpha-CROWN, split domains and beta multipliers: every bound stays sound,
optimisation never loosens, a split domain is never looser than its parent, and failures name the node."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import verifier
from tests.helpers import BOX_KINDS, assert_inside, joint_samples, samples
from tests.ops.cases import CASES
from verifier.engine import alpha, branching, crown
from verifier.engine.bounds import intermediate_bounds, refresh_after
from verifier.engine.params import Params, nonnegative
from verifier.engine.state import BoundConfig, BoundState
from verifier.errors import BoundComputationError
from verifier.ops.base import JointRelaxation, Nonlinear, RelaxConfig

NONLINEAR = [c for c in CASES if isinstance(c.op, Nonlinear)]


@pytest.mark.parametrize("kind", BOX_KINDS)
@pytest.mark.parametrize("case", NONLINEAR, ids=lambda c: c.name)
def test_every_projected_parameter_gives_a_sound_relaxation(case, kind):
    gen = torch.Generator().manual_seed(7)
    boxes = case.boxes(kind, 3, torch.float64, gen)
    bounds = [t for box in boxes for t in box]
    op, cfg = case.op.to(dtype=torch.float64), RelaxConfig(case.relu_lower)
    start = op.initial_param(*bounds, cfg)
    if start is None:  # nothing to optimise on this box
        return
    param = op.project(6 * torch.randn((5, *start.shape), generator=gen, dtype=torch.float64) - 3)
    assert torch.equal(op.project(start), start), "the default parameters must be sound ones"
    rel = op.relax(*bounds, cfg, param)
    xs = joint_samples(boxes, 100, gen)  # per input [n, B, *shape_i]
    y = op.forward(*[x.flatten(0, 1) for x in xs])
    y = y.reshape(xs[0].shape[0], 1, -1, *y.shape[1:])  # against every row of parameters: [n, 1, B, *out]
    if isinstance(rel, JointRelaxation):
        vs = [op.broadcast(i, x.flatten(0, 1)).reshape(y.shape) for i, x in enumerate(xs)]
        lower = sum(a * v for a, v in zip(rel.a_lo, vs)) + rel.b_lo
        upper = sum(a * v for a, v in zip(rel.a_up, vs)) + rel.b_up
    else:
        v = xs[0].unsqueeze(1)
        lower, upper = rel.a_lo * v + rel.b_lo, rel.a_up * v + rel.b_up
    assert_inside(y.expand(-1, 5, *y.shape[2:]), lower, upper, f"{case.name} with parameters")


def _mlp(seed: int, widths=(4, 12, 12, 12, 3), act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).eval()


def _state(model, x, eps, method="crown"):
    state = BoundState(model.graph, verifier.LinfBall(x, eps), BoundConfig(method=method))
    return state


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_alpha_tightens_intermediate_and_output_bounds_of_crown(seed, act):
    module = _mlp(seed, act=act)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))
    model = verifier.load(module, x)
    rows = torch.eye(3).reshape(3, 1, 3).expand(3, 2, 3)
    eps = 0.3 if act is nn.ReLU else 1.0
    with torch.no_grad():
        plain = _state(model, x, eps)
        intermediate_bounds(plain)
        base = crown.backward(plain, model.graph.output, rows)
        full = _state(model, x, eps, "alpha-crown")
        best = alpha.optimise(full, rows, refresh=lambda p: intermediate_bounds(full, p))
    assert (best >= base - 1e-5).all()
    assert (best > base + 1e-4).any(), "optimising the slopes should gain somewhere on these nets"
    for k in model.graph.needs_bounds():
        assert (full.bounds[k][0] >= plain.bounds[k][0] - 1e-5).all()
        assert (full.bounds[k][1] <= plain.bounds[k][1] + 1e-5).all()
    pts = samples(x - eps, x + eps, 500, torch.Generator().manual_seed(3))
    y = module(pts.flatten(0, 1)).reshape(pts.shape[0], 2, 3)
    assert_inside(y, best.T, torch.full_like(best.T, torch.inf), "alpha-crown lower")


def _split_once(model, x, eps, rows):
    state = _state(model, x, eps)
    with torch.no_grad():
        intermediate_bounds(state)
        params = Params()
        parent = alpha.optimise(state, rows, params=params)
        record = {}
        crown.backward(state, model.graph.output, rows, params, ("out",), True, record)
        nodes, pos, ok = branching.choose(branching.split_scores(state, record, torch.ones(rows.shape[:2])))
        child, child_params = branching.split(state, params, nodes, pos)
        refresh_after(child, int(nodes.min()))
        lower = alpha.optimise(child, rows.repeat_interleave(2, 1), params=child_params)
    return state, parent, child, lower, nodes, pos, ok


@pytest.mark.parametrize("seed", [0, 3])
def test_split_children_are_sound_on_their_side_and_never_looser_than_the_parent(seed):
    module = _mlp(seed)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))
    model = verifier.load(module, x)
    rows = torch.tensor([[1.0, -1.0, 0.0]]).reshape(1, 1, 3).expand(1, 2, 3)
    parent_state, parent, child, lower, nodes, pos, ok = _split_once(model, x, 0.4, rows)
    assert ok.all()
    assert child.batch == 4
    for k in parent_state.bounds:
        lo_p, hi_p = (t.repeat_interleave(2, 0) for t in parent_state.bounds[k])
        assert (child.bounds[k][0] >= lo_p - 1e-6).all() and (child.bounds[k][1] <= hi_p + 1e-6).all()
    # sample the parent box; each point belongs to the child whose split side it satisfies
    pts = samples(x - 0.4, x + 0.4, 4000, torch.Generator().manual_seed(4))  # [n, 2, 4]
    values = {}
    h = pts.flatten(0, 1)
    for i, layer in enumerate(module):  # node k of the graph = output of layer k-1 (Linear/ReLU chain)
        h = layer(h)
        values[i + 1] = h.reshape(pts.shape[0], 2, -1)
    y = values[len(module)] @ torch.tensor([1.0, -1.0, 0.0])
    for b in range(2):
        k, p = int(nodes[b]), int(pos[b])
        pre = values[k][:, b, p]
        for side, sign in ((0, -1), (1, 1)):
            mine = pre * sign >= 0
            assert mine.any()
            assert (y[mine, b] >= lower[0, 2 * b + side] - 1e-5).all(), (
                "child bound above a point of its side"
            )
        assert torch.minimum(lower[0, 2 * b], lower[0, 2 * b + 1]) >= parent[0, b] - 1e-5, "children looser"


def test_the_record_of_an_optimisation_is_that_of_a_pass_with_its_final_parameters():
    """Branch and bound scores its next split from the optimiser's last pass instead of another one."""
    module = _mlp(3)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    model = verifier.load(module, x)
    rows = torch.tensor([[1.0, -1.0, 0.0]]).reshape(1, 1, 3).expand(1, 2, 3)
    _, _, child, _, nodes, _, _ = _split_once(model, x, 0.4, rows)
    rows = rows.repeat_interleave(2, 1)
    params = Params()
    with torch.no_grad():
        alpha.optimise(child, rows, params=params)  # multipliers on the split nodes, slopes off default
        seen, again = {}, {}
        alpha.optimise(child, rows, params=params, record=seen)
        crown.backward(child, model.graph.output, rows, params, ("out",), True, again)
    assert set(child.splits) == {int(k) for k in nodes.unique()} and seen.keys() == again.keys()
    for j, a in again.items():
        assert torch.equal(seen[j], a), j


def test_contradictory_splits_mark_the_domain_infeasible():
    module = _mlp(5)
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(5))
    model = verifier.load(module, x)
    state = _state(model, x, 0.01)
    with torch.no_grad():
        intermediate_bounds(state)
    k = min(model.graph.needs_bounds())
    lo, hi = state.bounds[k]
    negative = (hi < 0).flatten().nonzero()
    assert len(negative), "the test needs a neuron that is inactive on the whole box"
    split = torch.zeros(lo.shape, dtype=torch.int8)
    split.view(-1)[negative[0]] = 1  # claim it is active
    state.splits[k] = split
    state.set_bounds(k, (lo, hi))
    assert state.infeasible().tolist() == [True]


def test_a_failing_relaxation_names_its_node(monkeypatch):
    module = _mlp(0)
    x = torch.randn(1, 4)
    model = verifier.load(module, x)
    from verifier.ops.activations import ReLU

    def broken(self, lo, hi, cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(ReLU, "relaxer", broken)
    relu_names = [n.name for n in model.graph.nodes if isinstance(n.op, ReLU)]
    with pytest.raises(BoundComputationError, match="boom") as info:
        model.bounds(verifier.LinfBall(x, 0.1), method="crown")
    assert any(name in str(info.value) for name in relu_names) and "ReLU" in str(info.value)


def test_nan_is_reported_at_the_node_where_it_appears():
    module = _mlp(0)
    with torch.no_grad():
        module[2].weight[0, 0] = torch.inf  # the second Linear turns inf * 0 into NaN
    x = torch.zeros(1, 4)
    model = verifier.load(nn.Sequential(*module[:2]), x)  # translation needs a finite model
    graph = model.graph
    from verifier.graph.graph import Graph, Node
    from verifier.ops.linear import Linear

    w = module[2].weight.detach().clone()
    nodes = graph.nodes + (Node("poisoned", Linear(w), (graph.output,), (12,)),)
    bad = verifier.api.BoundedModel(Graph(nodes, len(nodes) - 1))
    with pytest.raises(BoundComputationError, match="poisoned"):
        bad.bounds(verifier.LinfBall(x, 0.1), method="ibp")


def test_linear_program_of_a_fully_split_domain_is_its_exact_minimum():
    """Fix every unstable neuron to the side it takes at a point: the LP minimum over that domain lies
    below every sampled value in it and is (nearly) reached by a dense grid of a 2-d input."""
    from verifier.engine import lp

    module = _mlp(11, widths=(2, 6, 6, 1))
    x = torch.zeros(1, 2)
    model = verifier.load(module, x)
    state = _state(model, x, 1.0)
    with torch.no_grad():
        intermediate_bounds(state)
    grid = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, 301), torch.linspace(-1, 1, 301), indexing="ij"), -1
    )
    grid = grid.reshape(-1, 2)
    pre = {1: module[0](grid)}
    pre[3] = module[2](torch.relu(pre[1]))
    point = 12345  # the pattern of one grid point
    in_domain = torch.ones(len(grid), dtype=torch.bool)
    for k, z in pre.items():
        lo, hi = state.bounds[k]
        sign = torch.where(z[point] >= 0, 1, -1).to(torch.int8)
        split = torch.where((lo < 0) & (hi > 0), sign, torch.zeros_like(sign))
        state.splits[k] = split
        state.set_bounds(k, state.bounds[k])
        in_domain &= ((z * split) >= 0).all(1)
    rows = torch.ones(1, 1, 1)
    with torch.no_grad():
        exact = lp.exact_lower(state, rows)[0, 0]
        plain = crown.backward(state, model.graph.output, rows)[0, 0]
        values = module(grid[in_domain]).flatten()
    assert plain <= exact + 1e-5 and exact <= values.min() + 1e-5
    assert values.min() - exact < 2e-2, "the LP minimum is attained in the domain"


def _node_values(graph, x: torch.Tensor) -> dict[int, torch.Tensor]:
    values = {0: x}
    for k, node in enumerate(graph.nodes[1:], start=1):
        values[k] = node.op.forward(*[values[i] for i in node.inputs])
    return values


@pytest.mark.parametrize("name", ["cnn_bn_pool", "residual", "leaky_convt", "sigmoid_tanh"])
def test_split_children_of_general_graphs_are_sound_on_their_side(name):
    """Splits, beta multipliers and warm starts on graphs with convolutions, pooling, BatchNorm, residual
    sums, LeakyReLU, and Sigmoid / Tanh (split at their inflection point): sampled points of each child's side stay above its bound."""
    from tests.engine.nets import networks

    module, shape = networks()[name]
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(2))
    model = verifier.load(module, x)
    n_out = model.output_shape[0]
    rows = torch.randn(2, 1, n_out, generator=torch.Generator().manual_seed(3))
    state = _state(model, x, 0.5)
    with torch.no_grad():
        intermediate_bounds(state)
        params = Params()
        alpha.optimise(state, rows, params=params)
        record = {}
        crown.backward(state, model.graph.output, rows, params, ("out",), True, record)
        nodes, pos, ok = branching.choose(branching.split_scores(state, record, torch.ones(2, 1)))
        assert ok.all()
        child, child_params = branching.split(state, params, nodes, pos)
        lower = alpha.optimise(child, rows.repeat_interleave(2, 1), params=child_params)
    pts = samples(x - 0.5, x + 0.5, 3000, torch.Generator().manual_seed(4)).flatten(0, 1)
    with torch.no_grad():
        values = _node_values(model.graph, pts)
    y = values[model.graph.output].flatten(1) @ rows[:, 0].T  # [n, 2]
    pre = values[int(nodes[0])].flatten(1)[:, int(pos[0])]
    for side, sign in ((0, -1), (1, 1)):
        mine = pre * sign >= 0
        assert mine.any()
        assert (y[mine] >= lower[:, side] - 1e-4).all(), f"{name}: a point of child {side} is below its bound"


def test_only_domains_with_exact_relaxations_get_the_linear_program():
    """A ReLU net whose neurons are all stable is one affine map (exact); a max pool or a sigmoid on a
    box that is not a point is not, and the LP must then stay out (its cut polytope would not be the
    domain): exact_lower answers -inf there."""
    from verifier.engine import lp

    relu = _mlp(4, widths=(3, 5, 2))
    x = torch.zeros(1, 3)
    for module, expected in ((relu, True), (_mlp(4, widths=(3, 5, 2), act=nn.Sigmoid), False)):
        model = verifier.load(module, x)
        state = _state(model, x, 1e-4)  # tiny box: every ReLU stable, the sigmoid still curved
        with torch.no_grad():
            intermediate_bounds(state)
            assert state.exact_relaxations().tolist() == [expected]
            value = lp.exact_lower(state, torch.ones(1, 1, 2))[0, 0]
        assert torch.isfinite(value) == expected
    pooled = nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 1)
    ).eval()
    xs = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    model = verifier.load(pooled, xs)
    state = _state(model, xs, 0.5)
    with torch.no_grad():
        intermediate_bounds(state)
    assert state.exact_relaxations().tolist() == [False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_final_alpha_is_sound_and_never_looser_than_crown(seed):
    module = _mlp(seed)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))
    model = verifier.load(module, x)
    region = verifier.LinfBall(x, 0.3)
    crown_lo, final_lo = (model.bounds(region, m, upper=False).lower for m in ("crown", "alpha-crown-final"))
    assert (final_lo >= crown_lo - 1e-5).all() and (final_lo > crown_lo + 1e-4).any()
    pts = samples(x - 0.3, x + 0.3, 500, torch.Generator().manual_seed(4))
    y = module(pts.flatten(0, 1)).reshape(pts.shape[0], 4, 3)
    assert_inside(y, final_lo, torch.full_like(final_lo, torch.inf), "alpha-crown-final lower")


def test_full_alpha_too_large_for_its_memory_budget_optimises_the_output_only():
    """Under a budget full alpha-CROWN cannot fit, the plan keeps CROWN's intermediate bounds: the result is
    output-only alpha's (sound, never looser than CROWN), and the budget decides which one runs."""
    from verifier.engine import alpha as alpha_mod
    from verifier.engine.bounds import compute_bounds

    model = verifier.load(_mlp(5), torch.zeros(1, 4))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(6))
    region, spec = verifier.LinfBall(x, 0.3), torch.eye(3).unsqueeze(1).expand(3, 2, 3)
    tiny = BoundConfig(method="alpha-crown", max_alpha_bytes=1)
    assert alpha_mod.full_fits(model.graph, 2, BoundConfig()) and not alpha_mod.full_fits(
        model.graph, 2, tiny
    )
    with torch.no_grad():
        small, _ = compute_bounds(model.graph, region, tiny, spec)
        final, _ = compute_bounds(model.graph, region, BoundConfig(method="alpha-crown-final"), spec)
        full, _ = compute_bounds(model.graph, region, BoundConfig(method="alpha-crown"), spec)
        crown_lo, _ = compute_bounds(model.graph, region, BoundConfig(method="crown"), spec)
    torch.testing.assert_close(small, final)
    assert (small >= crown_lo - 1e-6).all() and (full > small + 1e-4).any()  # the budget chose the plan
    pts = samples(x - 0.3, x + 0.3, 500, torch.Generator().manual_seed(7))
    y = model(pts.flatten(0, 1)).reshape(pts.shape[0], 2, 3)
    assert (y >= small.T.unsqueeze(0) - 1e-5).all()


def test_an_answered_question_ends_the_optimisation(monkeypatch):
    model = verifier.load(_mlp(1), torch.zeros(1, 4))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    rows = torch.eye(3).expand(2, 3, 3).transpose(0, 1)
    passes = []
    backward = crown.backward
    monkeypatch.setattr(crown, "backward", lambda *a, **k: passes.append(1) or backward(*a, **k))

    def run(enough):
        state = _state(model, x, 0.3, "alpha-crown")
        with torch.no_grad():
            intermediate_bounds(state)
            passes.clear()  # the optimisation's passes only
            return alpha.optimise(state, rows, steps=20, enough=enough), len(passes)

    full, count = run(None)
    assert count > 3  # this net's bounds keep improving for several steps
    for answered_at in (1, 3):  # the question answered by the bounds of the first / third pass
        seen = []
        early, early_count = run(
            lambda best, seen=seen, at=answered_at: seen.append(best.clone()) or len(seen) >= at
        )
        assert early_count == answered_at and torch.equal(early, seen[-1])
    never, never_count = run(lambda best: False)
    assert never_count == count and torch.equal(never, full)


@pytest.mark.parametrize("method", ["alpha-crown", "alpha-crown-final"])
def test_a_stop_request_ends_alpha_crown_with_the_bounds_so_far(method):
    """``bounds(stop=...)`` (a deadline's ``expired``): asked after each pass, True ends the optimisation
    with the first iterate's bounds, CROWN's; never asked, the optimisation runs on and tightens them."""
    model = verifier.load(_mlp(2), torch.zeros(1, 4))
    region = verifier.LinfBall(torch.randn(2, 4, generator=torch.Generator().manual_seed(3)), 0.3)
    asked = []
    stopped = model.bounds(region, method, upper=False, stop=lambda: asked.append(1) or True).lower
    crown_lo = model.bounds(region, "crown", upper=False).lower
    full = model.bounds(region, method, upper=False, stop=lambda: False).lower
    assert asked == [1]
    torch.testing.assert_close(stopped, crown_lo)
    assert (full >= stopped - 1e-6).all() and (full > stopped + 1e-4).any()


@pytest.mark.parametrize("kind", ["fused", "plain", "no kernel"])
def test_adam_agrees_with_torchs_and_leaves_a_leaf_without_gradient_alone(kind, monkeypatch):
    """``alpha.Adam`` (fused kernel, plain update, and the fallback of a device whose kernel fails) against
    ``torch.optim.Adam`` with an exponential learning-rate decay, maximising, over steps where one leaf
    gets no gradient."""
    gen = torch.Generator().manual_seed(11)
    start = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(6)]

    def run(make):
        leaves = [t.clone().requires_grad_() for t in start]
        step = make(leaves)
        for k, step_grads in enumerate(grads):
            for i, (t, g) in enumerate(zip(leaves, step_grads)):
                t.grad = None if (k, i) == (2, 1) else g.clone()
            step()
        return [t.detach() for t in leaves]

    def ours(leaves):
        adam = alpha.Adam(leaves, 0.1, decay=0.9)
        adam.fused = kind != "plain"
        return adam.step

    def torchs(leaves):
        adam = torch.optim.Adam(leaves, lr=0.1, maximize=True)
        decay = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.9)
        return lambda: (adam.step(), decay.step())

    reference = run(torchs)
    assert not torch.equal(reference[1], start[1])
    if kind == "no kernel":

        def failing(*args, **kwargs):
            raise RuntimeError("no fused kernel for this device")

        monkeypatch.setattr(torch, "_fused_adam_", failing)
    for got, want in zip(run(ours), reference):
        torch.testing.assert_close(got, want)


def test_params_concat_joins_stores_along_the_batch_dimension():
    store = Params()
    store.get(("beta", 3), lambda: torch.arange(12.0).reshape(2, 3, 2), nonnegative)
    store.get(("slope", "out", 5), lambda: -torch.arange(6.0).reshape(2, 3, 1), lambda t: t)
    first, second = store.select(torch.tensor([2, 0])), store.select(torch.tensor([1]))
    joined = Params.concat([first, second])
    whole = store.select(torch.tensor([2, 0, 1]))
    assert joined.tensors.keys() == whole.tensors.keys()
    for key, t in whole.tensors.items():
        assert torch.equal(joined.tensors[key], t) and joined.tensors[key].requires_grad
        assert joined.projections[key] is store.projections[key]
    assert torch.equal(nonnegative(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))

"""Relaxations kept per bounds (``BoundState.relaxation`` through ``Nonlinear.relaxer``): what does not depend
on the parameter is built once per bounds, and bounds that change are never met with stale lines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import verifier
from verifier.engine.state import BoundConfig, BoundState
from verifier.ops.activations import ReLU
from verifier.ops.base import RelaxConfig


def _state():
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(2, 4)
    model = verifier.load(module, x)
    state = BoundState(model.graph, verifier.LinfBall(x, 0.5), BoundConfig(method="crown"))
    relu = next(j for j, n in enumerate(model.graph.nodes) if isinstance(n.op, ReLU))
    (pre,) = model.graph.nodes[relu].inputs
    return state, relu, pre


def test_parameterised_lines_follow_the_bounds_they_are_asked_with():
    state, relu, pre = _state()
    op = state.graph.nodes[relu].op
    lo = torch.tensor([[-1.0, -2.0, 0.5, -3.0, -0.5, 1.0], [-1.0, 1.0, -4.0, -2.0, -1.0, -1.0]])
    hi = torch.tensor([[1.0, 3.0, 2.0, -1.0, 0.5, 2.0], [2.0, 2.0, 1.0, 1.0, 3.0, 1.0]])
    param = torch.full((3, 2, 6), 0.25)
    state.set_bounds(pre, (lo, hi))
    first = state.relaxation(relu, param)
    expected = op.relax(lo, hi, RelaxConfig(), param)
    assert all(
        torch.equal(x, y) for x, y in zip(vars(first).values(), vars(expected).values()) if x is not None
    )
    # new bounds (as the next iterate of full alpha-CROWN sets them): the lines must be rebuilt on them
    state.set_bounds(pre, (lo - 1.0, hi + 1.0))
    second = state.relaxation(relu, param)
    expected = op.relax(lo - 1.0, hi + 1.0, RelaxConfig(), param)
    assert torch.equal(second.a_up, expected.a_up) and torch.equal(second.b_up, expected.b_up)
    assert not torch.equal(second.a_up, first.a_up)


def test_chord_is_built_once_per_bounds(monkeypatch):
    state, relu, pre = _state()
    lo = torch.tensor([[-1.0] * 6, [-2.0] * 6])
    hi = torch.tensor([[1.0] * 6, [0.5] * 6])
    state.set_bounds(pre, (lo, hi))
    calls = []
    original = ReLU.needs_bounds
    monkeypatch.setattr(ReLU, "needs_bounds", lambda self, lo, hi: calls.append(1) or original(self, lo, hi))
    for step in range(5):  # an optimiser's steps: only the parameter moves
        rel = state.relaxation(relu, torch.full((2, 6), 0.2 * step))
        assert torch.equal(rel.a_lo, torch.full((2, 6), 0.2 * step))  # every neuron is unstable
    assert len(calls) == 1


def test_sshaped_searches_its_tangent_points_once_per_bounds(monkeypatch):
    from verifier.ops import activations
    from verifier.ops.activations import SShaped

    op = SShaped("sigmoid")
    lo = torch.tensor([[-3.0, -1.0, 0.5, -2.0]])
    hi = torch.tensor([[2.0, 4.0, 1.5, -0.5]])
    calls = []
    search = activations._cross_line
    monkeypatch.setattr(activations, "_cross_line", lambda *a, **k: calls.append(1) or search(*a, **k))
    lines = op.relaxer(lo, hi, cfg=RelaxConfig())
    assert len(calls) == 2  # the upper and the lower crossing line
    h = lo + (hi - lo) * torch.linspace(0, 1, 101).reshape(-1, 1, 1)  # points of each box
    for p in (0.0, 0.3, 1.0):
        rel = lines(torch.full((1, 4, 2), p))
        assert (rel.a_lo * h + rel.b_lo <= torch.sigmoid(h)).all() and (
            torch.sigmoid(h) <= rel.a_up * h + rel.b_up
        ).all()
    assert len(calls) == 2


@pytest.mark.parametrize("function", ["sigmoid", "tanh", "erf"])
def test_sshaped_lines_have_the_gradient_of_their_formula(function):
    """The tangents' backward is written out (``_Tangent``): it must agree with finite differences of the
    float64 lines in the parameter on every kind of box (convex, concave, crossing zero), and in the bounds
    on the boxes where the lines are smooth in them (on a box crossing zero the tangent point comes from a
    search, held fixed)."""
    from verifier.ops.activations import SShaped

    op = SShaped(function)

    def lines(lo, hi, param):
        rel = op.relaxer(lo, hi, cfg=RelaxConfig())(param)
        return rel.a_lo, rel.b_lo, rel.a_up, rel.b_up

    def f64(rows):
        return torch.tensor(rows, dtype=torch.float64, requires_grad=True)

    lo, hi = f64([[-3.0, -1.0, 0.5, -2.0, -0.3]]), f64([[2.0, 4.0, 1.5, -0.5, 0.2]])
    param = f64([[[0.2, 0.7], [0.5, 0.1], [0.9, 0.4], [0.3, 0.6], [0.4, 0.5]]])
    assert torch.autograd.gradcheck(lambda p: lines(lo.detach(), hi.detach(), p), (param,))
    lo, hi = f64([[0.5, -2.0, 1.0]]), f64([[1.5, -0.5, 3.0]])
    assert torch.autograd.gradcheck(lines, (lo, hi, param[:, :3].detach().requires_grad_()))


def test_an_override_of_relax_alone_is_refused_where_it_would_be_bypassed():
    with pytest.raises(TypeError, match="relaxer"):

        class Shifted(ReLU):  # defining it is the test
            def relax(self, lo, hi, cfg, param=None):
                return super().relax(lo, hi, cfg, param)


def test_the_offsets_are_tested_once_per_bounds():
    """Every step's lines share the chord's offsets: whether they are 0 (``offsets``: a pass over every
    neuron) is asked of the first lines only, and the answer is the same tensors."""
    state, relu, pre = _state()
    lo = torch.tensor([[-1.0] * 6, [-2.0] * 6])
    hi = torch.tensor([[1.0] * 6, [0.5] * 6])
    state.set_bounds(pre, (lo, hi))
    first = state.relaxation(relu, torch.full((2, 6), 0.1))
    b_lo, b_up = first.offsets
    assert b_lo is None and b_up is first.b_up  # ReLU's lower line passes through the origin
    later = state.relaxation(relu, torch.full((2, 6), 0.7))
    assert "offsets" in vars(later), "taken over, not tested again"
    assert later.offsets[0] is None and later.offsets[1] is first.b_up
    state.set_bounds(pre, (lo - 1.0, hi + 1.0))  # new bounds, new offsets: tested anew
    assert "offsets" not in vars(state.relaxation(relu, torch.full((2, 6), 0.1)))

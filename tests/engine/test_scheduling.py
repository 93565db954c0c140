"""Which intermediate bounds the scheduler computes, and that skipping is only done where it is exact."""

from __future__ import annotations

import torch

from tests.helpers import assert_inside, samples
from verifier.api import BoundedModel
from verifier.engine import bounds, crown
from verifier.engine.bounds import _exact_by_ibp
from verifier.engine.state import BoundConfig, BoundState
from verifier.graph.graph import Graph, Node
from verifier.ops.activations import ReLU
from verifier.ops.linear import Linear, ScaleShift
from verifier.ops.shape import Rearrange
from verifier.spec.regions import Box


def _chain(*ops_and_shapes) -> Graph:
    nodes = [Node("input", None, (), (4,))]
    for op, shape in ops_and_shapes:
        nodes.append(Node(f"n{len(nodes)}", op, (len(nodes) - 1,), shape))
    return Graph(tuple(nodes), len(nodes) - 1)


def test_exact_nodes_stop_at_the_second_mixing_map_or_an_activation():
    w = torch.randn(4, 4)
    g = _chain(
        (ScaleShift(torch.full((4,), 2.0), torch.ones(4)), (4,)),  # coordinate-wise: stays exact
        (Rearrange((4,), (4,), torch.tensor([3, 2, 1, 0])), (4,)),  # permutation: stays exact
        (Linear(w), (4,)),  # first mixing map: exact
        (Linear(w), (4,)),  # second: not exact
    )
    assert _exact_by_ibp(g) == {0, 1, 2, 3}
    g = _chain((Linear(w), (4,)), (ReLU(), (4,)), (Linear(w), (4,)))
    assert _exact_by_ibp(g) == {0, 1}


def test_a_repeated_position_breaks_exactness():
    """y = (x0, x0) is not a box; Linear(y) = x0 - x0 = 0 while IBP says [-2r, 2r]."""
    g = _chain(
        (Rearrange((4,), (2,), torch.tensor([0, 0])), (2,)), (Linear(torch.tensor([[1.0, -1.0]])), (1,))
    )
    assert _exact_by_ibp(g) == {0, 1}  # each copy alone is exact; the Linear after them is not


def test_ibp_equals_crown_where_declared_exact():
    w1, w2 = torch.randn(6, 4), torch.randn(3, 6)
    g = _chain((ScaleShift(torch.randn(4), torch.randn(4)), (4,)), (Linear(w1, torch.randn(6)), (6,)),
               (ReLU(), (6,)), (Linear(w2), (3,)))  # fmt: skip
    x = torch.randn(2, 4)
    state = BoundState(g, Box(x - 0.5, x + 0.5), BoundConfig())
    state.bounds[0] = state.region.box()
    for k in (1, 2):
        node = g.nodes[k]
        state.bounds[k] = node.op.ibp(*[state.bounds[i] for i in node.inputs])
    ibp = state.bounds[2]
    crown.refine(state, 2, crown.select_rows(state, 2, torch.ones_like(ibp[0], dtype=torch.bool)))
    torch.testing.assert_close(state.bounds[2][0], ibp[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.bounds[2][1], ibp[1], rtol=1e-5, atol=1e-5)


def _expanding(seed: int = 0) -> Graph:
    """input 4 -> 8 -> relu -> 8 -> 64 (four times wider, then relu) -> 2."""
    gen = torch.Generator().manual_seed(seed)
    w = lambda *s: torch.randn(s, generator=gen) / s[-1] ** 0.5
    return _chain(
        (Linear(w(8, 4), w(8)), (8,)),
        (ReLU(), (8,)),
        (Linear(w(8, 8), w(8)), (8,)),
        (Linear(w(64, 8), w(64)), (64,)),
        (ReLU(), (64,)),
        (Linear(w(2, 64)), (2,)),
    )


def test_a_wide_node_is_bounded_through_its_narrow_source_and_stays_sound(monkeypatch):
    """With the wide node at 64 neurons, its 8-neuron source's CROWN bounds are carried through the
    expanding map (16 rows instead of 128): the bounds contain sampled outputs, for CROWN and full alpha."""
    graph = _expanding()
    monkeypatch.setattr(bounds, "WIDE", 128)
    assert bounds._narrow_chain(graph, 4) is None  # below WIDE: refined row by row
    monkeypatch.setattr(bounds, "WIDE", 64)
    assert bounds._narrow_chain(graph, 4) == [3, 4] and bounds._narrow_chain(graph, 3) is None
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    box = Box(x - 0.3, x + 0.3)
    model = BoundedModel(graph)
    pts = samples(box.lower, box.upper, 400, torch.Generator().manual_seed(2))
    y = model(pts.flatten(0, 1)).reshape(pts.shape[0], 3, 2)
    ibp = model.bounds(box, method="ibp")
    for method in ("crown", "alpha-crown", "crown-lbp"):
        lo, hi = model.bounds(box, method=method)
        assert_inside(y, lo, hi, method)
        assert (lo >= ibp.lower - 1e-5).all() and (hi <= ibp.upper + 1e-5).all(), method


def test_bounds_through_a_narrow_source_contain_the_wide_node(monkeypatch):
    """The carried bounds of the wide node itself (before its ReLU) contain its sampled values."""
    graph = _expanding(3)
    monkeypatch.setattr(bounds, "WIDE", 64)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(4))
    state = BoundState(graph, Box(x - 0.5, x + 0.5), BoundConfig(method="crown"))
    bounds.intermediate_bounds(state)
    pts = samples(x - 0.5, x + 0.5, 400, torch.Generator().manual_seed(5))
    wide = Graph(graph.nodes[:5], 4)
    z = wide.forward(pts.flatten(0, 1)).reshape(pts.shape[0], 2, 64)
    assert_inside(z, *state.bounds[4], "wide node")

"""Which intermediate bounds the scheduler computes, and that skipping is only done where it is exact."""

from __future__ import annotations

import torch

from verifier.engine import crown
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

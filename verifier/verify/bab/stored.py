"""Which neurons a ReLU-split domain stores in the queue (``relu_split.ReluSplit._pack``).

Of a node read by ReLU-like neurons alone, a domain needs its split state, its split multipliers and the
slopes of the neurons reading it only where the node is unstable at the domain's root: a domain's bounds lie
within its root's, so it splits nowhere else; a multiplier elsewhere multiplies a zero split; a stable
neuron's relaxation does not read its slope. Stored at those positions alone, they come back with zeros
elsewhere, and bound exactly as before (on oval21 cifar_deep 1,153 of 6,756 neurons: 5.8 KB a single-row
domain instead of 33.8 KB). Even a value dropped by mistake could only loosen a bound: a split left out
makes the domain larger, a multiplier or slope set to 0 stays in its sound set."""

from __future__ import annotations

from torch import Tensor

from verifier.engine.params import multiplier
from verifier.graph.graph import Graph


class Stored:
    """The positions stored per node (``positions[k]``, flat indices), from the roots' bounds
    ``roots[k] = (lo, hi)`` ([cases, *shape_k], NaN for cases without a root): the positions unstable at
    some root, on the nodes read by ReLU-like neurons alone (the others are stored whole)."""

    def __init__(self, graph: Graph, roots: dict[int, tuple[Tensor, Tensor]]):
        self.graph = graph
        consumers = lambda k: [graph.nodes[j].op for j in graph.nonlinear_consumers(k)]
        self.shapes = {k: lo.shape[1:] for k, (lo, _) in roots.items()}
        self.positions = {
            k: ((lo < 0) & (hi > 0)).flatten(1).any(0).nonzero().flatten()
            for k, (lo, hi) in roots.items()
            if consumers(k) and all(op.linear_on_each_side_of_zero for op in consumers(k))
        }

    def node(self, key: tuple) -> int | None:
        """The node with stored positions whose neurons the parameter ``key`` is per, if any: a split
        multiplier's own node, or the input of the ReLU-like node whose slopes it holds."""
        j = key[-1]
        if not isinstance(j, int):
            return None
        k = j if multiplier(key) else self.graph.nodes[j].inputs[0]
        return k if k in self.positions else None

    def compact(self, k: int, t: Tensor) -> Tensor:
        """``t`` [..., *shape_k] at node k's stored positions: [..., m]."""
        flat = t.flatten(t.dim() - len(self.shapes[k]))
        if t.shape[t.dim() - len(self.shapes[k]) :] != self.shapes[k]:
            raise ValueError(f"a tensor of shape {tuple(t.shape)} is not per neuron of node {k}")
        return flat[..., self.positions[k]]

    def expand(self, k: int, stored: Tensor) -> Tensor:
        """A compacted tensor [..., m] back at node k's shape, 0 at the positions not stored."""
        full = stored.new_zeros((*stored.shape[:-1], self.shapes[k].numel()))
        full[..., self.positions[k]] = stored
        return full.reshape(*stored.shape[:-1], *self.shapes[k])

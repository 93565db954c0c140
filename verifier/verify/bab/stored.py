"""How a ReLU-split domain's split state and parameters are stored in the queue (``relu_split``'s
``_pack`` / ``_unpack``): at fewer positions, and in fewer bytes.

Positions: of a node read by ReLU-like neurons alone, a domain needs its split state, its split multipliers
and the slopes of the neurons reading it only where the node is unstable at the domain's root: a domain's
bounds lie within its root's, so it splits nowhere else; a multiplier elsewhere multiplies a zero split; a
stable neuron's relaxation does not read its slope. Stored at those positions alone, they come back with
zeros elsewhere and bound exactly as before (on oval21 cifar_deep 1,153 of 6,756 neurons: 5.8 KB a
single-row domain instead of 33.8 KB). Even a value dropped by mistake could only loosen a bound: a split
left out makes the domain larger, a multiplier or slope set to 0 stays in its sound set.

Bytes: float32 slopes and multipliers are stored as bfloat16 (``PRECISION``), half the bytes: they only
warm-start the children's optimisation, and any value projected onto its sound set (``_unpack`` does)
gives a sound bound."""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine.params import multiplier
from verifier.graph.graph import Graph

PRECISION = {torch.float32: torch.bfloat16}


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

    def compact(self, k: int, t: Tensor) -> Tensor:
        """``t`` [..., *shape_k] at node k's stored positions, [..., m] (as it is if k has none)."""
        if k not in self.positions:
            return t
        lead = t.dim() - len(self.shapes[k])
        if t.shape[lead:] != self.shapes[k]:
            raise ValueError(f"a tensor of shape {tuple(t.shape)} is not per neuron of node {k}")
        return t.flatten(lead)[..., self.positions[k]]

    def expand(self, k: int, stored: Tensor) -> Tensor:
        """A compacted tensor [..., m] back at node k's shape, 0 at the positions not stored (as it is if k
        has none)."""
        if k not in self.positions:
            return stored
        full = stored.new_zeros((*stored.shape[:-1], self.shapes[k].numel()))
        full[..., self.positions[k]] = stored
        return full.reshape(*stored.shape[:-1], *self.shapes[k])

    def pack(self, key: tuple, t: Tensor) -> Tensor:
        """The parameter ``key``'s values [R, N, ...] as the queue holds them: [N, R, ...], compacted."""
        t = t.detach().transpose(0, 1).to(PRECISION.get(t.dtype, t.dtype))
        k = self._node(key)
        return t if k is None else self.compact(k, t)

    def unpack(self, key: tuple, stored: Tensor, dtype: torch.dtype) -> Tensor:
        """``pack``'s inverse, a fresh [R, N, ...] tensor in ``dtype`` (0 at the positions not stored)."""
        k = self._node(key)
        t = stored if k is None else self.expand(k, stored)
        return t.transpose(0, 1).to(dtype, copy=True)

    def _node(self, key: tuple) -> int | None:
        """The node whose neurons the parameter ``key`` is per, if any: a split multiplier's own node, or
        the input of the node whose slopes it holds."""
        j = key[-1]
        if not isinstance(j, int):
            return None
        return j if multiplier(key) else self.graph.nodes[j].inputs[0]

"""Free relaxation parameters of one optimisation (alpha slopes, beta multipliers), kept by key.

Keys name what a tensor parameterises: ``("slope", start, chunk, j)`` are the slopes of nonlinear node j
in the backward pass that bounds node ``start`` (rows ``chunk`` of it), ``("beta", k)`` the multipliers of
the split constraints on node k at the output. A tensor is created on first use at the relaxation's default
value, so a first pass with a fresh store is plain CROWN; ``freeze`` then stops creation, and every later
pass sees the same set. Each tensor carries its projection onto the values that keep the bound sound, so
the optimiser can take free steps and project after each one.

Tensors are laid out [rows, batch, ...]: ``select`` takes a sub-batch (or repeats entries) along the batch
dimension, which is how branch and bound warm-starts children from their parent's parameters."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

Projection = Callable[[Tensor], Tensor]


# key kinds of Lagrange multipliers (>= 0): split constraints (``("beta", k)``), cutting planes (``("cut",)``)
MULTIPLIERS = ("beta", "cut")


def multiplier(key: Hashable) -> bool:
    return key[0] in MULTIPLIERS


def of_output(key: Hashable) -> bool:
    """Whether ``key`` parameterises the output's pass: its slopes and every multiplier (what branch and
    bound carries from a domain to its children)."""
    return multiplier(key) or key[1] == "out"


def nonnegative(t: Tensor) -> Tensor:
    """The projection of split multipliers (``beta >= 0``)."""
    return t.clamp(min=0)


class Params:
    def __init__(self):
        self.tensors: dict[Hashable, Tensor] = {}
        self.projections: dict[Hashable, Projection] = {}
        self.frozen = False

    def get(self, key: Hashable, init: Callable[[], Tensor | None], project: Projection) -> Tensor | None:
        """The tensor under ``key``; created from ``init()`` (None: nothing to optimise) unless frozen."""
        if key in self.tensors:
            return self.tensors[key]
        if self.frozen:
            return None
        value = init()
        if value is None:
            return None
        self.tensors[key] = value.detach().clone().requires_grad_(True)
        self.projections[key] = project
        return self.tensors[key]

    def freeze(self) -> None:
        self.frozen = True

    def leaves(self) -> list[Tensor]:
        return list(self.tensors.values())

    @torch.no_grad()
    def project_(self) -> None:
        """Move every tensor onto its sound set, in place (the optimiser's iterate stays a leaf)."""
        for key, t in self.tensors.items():
            t.copy_(self.projections[key](t))

    @staticmethod
    def concat(stores: list[Params]) -> Params:
        """One store whose tensors are those of ``stores`` (same keys) joined along the batch dimension."""
        out = Params()
        for key in stores[0].tensors:
            out.tensors[key] = torch.cat([s.tensors[key].detach() for s in stores], 1).requires_grad_(True)
            out.projections[key] = stores[0].projections[key]
        return out

    def select(self, index: Tensor, keep: Callable[[Hashable], bool] = lambda key: True) -> Params:
        """A new store with every tensor's batch dimension (dim 1) indexed by ``index``: sub-batches or
        repeated entries, detached, not frozen (children may need parameters their parent did not).
        ``keep`` filters the keys carried over."""
        out = Params()
        for key, t in self.tensors.items():
            if not keep(key):
                continue
            out.tensors[key] = t.detach()[:, index].clone().requires_grad_(True)
            out.projections[key] = self.projections[key]
        return out

"""General cutting planes in the output's bound (GCP-CROWN, Zhang et al. 2022).

A cut is a linear inequality over the values of graph nodes and over ReLU indicators,

    sum_j <H_j[c], z_j> + sum_j <Q_j[c], d_j> <= rhs[c],     d_j = 1[input of ReLU node j > 0],

that holds at every point of the region (for some choice of ``d`` where a ReLU's input is exactly 0): the
cuts a MILP solver derives from the big-M encoding of the network over the region's box and bounds
(``verify.bab.mip_cuts``) are such inequalities. For multipliers ``mu >= 0`` the term
``mu . (H z + Q d - rhs)`` is never positive there, so adding it to the output's linear bound keeps a lower
bound: ``crown.backward`` adds ``mu H_j`` to the coefficients of node j, ``-mu . rhs`` to the constant, and
hands ``q = mu Q_j`` to ReLU node j, which bounds ``<q, d>`` by lines in its input and output
(``ReLU.indicator_lines``). The multipliers are free parameters under ``("cut",)`` of the pass's
``Params``, optimised with the slopes and split multipliers (``alpha.optimise``), one per row and domain.

Cuts may hold only where one specification row is low: a MILP solver given an objective cutoff ``t`` (it
then looks for solutions of ``c . f <= t`` only, and tightens with that) derives cuts valid on that part of
the region alone. Such cuts (``row`` = c, ``cutoff`` = t) enter the bound of row c only, which is then
clamped to t: if some point has ``c . f <= t``, it satisfies the cuts, and the bound L cannot pass its value;
if none has, t is a lower bound itself. Either way ``min(L, t)`` bounds row c from below, and a verifier
whose threshold lies below t loses nothing to the clamp.

Split constraints and tighter bounds only shrink the set of points, so cuts valid on the region stay valid
on every sub-domain of a branch and bound."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

KEY = ("cut",)


@dataclass(frozen=True)
class Cuts:
    """``m`` cuts: ``values[j]`` and ``indicators[j]`` are sparse [numel_j, m] matrices, column c cut c's
    coefficients on node j's values (on ReLU node j's indicators); ``rhs`` [m] (already relaxed against
    rounding by whoever made the cuts); ``row`` [n_out], if given, the only specification row whose bound
    may use them (module docstring)."""

    values: dict[int, Tensor]
    indicators: dict[int, Tensor]
    rhs: Tensor
    row: Tensor | None = None
    cutoff: float = float("inf")

    @property
    def count(self) -> int:
        return self.rhs.shape[0]

    def to(self, device=None, dtype=None) -> Cuts:
        """These cuts with every tensor on ``device`` in ``dtype``."""
        move = lambda parts: {k: v.to(device, dtype) for k, v in parts.items()}
        row = None if self.row is None else self.row.to(device, dtype)
        return Cuts(move(self.values), move(self.indicators), self.rhs.to(device, dtype), row, self.cutoff)

    @cached_property
    def value_parts(self) -> dict[int, Part]:
        """``values`` on the positions some cut uses (``Part``)."""
        return {j: Part.of(matrix) for j, matrix in self.values.items()}

    @cached_property
    def indicator_parts(self) -> dict[int, Part]:
        """``indicators`` on the positions some cut uses (``Part``)."""
        return {j: Part.of(matrix) for j, matrix in self.indicators.items()}

    def applies(self, rows: Tensor) -> Tensor:
        """[S, B] bool: which of the rows [S, B, *out] may use the cuts."""
        if self.row is None:
            return torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
        return (rows.flatten(2) == self.row).all(-1)


@dataclass(frozen=True)
class Part:
    """The cuts' coefficients on one node at the flat positions ``rows`` [r] that some cut uses: ``matrix``
    sparse [r, m]. A MILP solver's cuts touch few of a layer's neurons (on oval21 cifar_deep, 37-916 of
    2,048 per node), so the multipliers' terms are formed and added there alone rather than over the
    whole node, where most of them are zero (a bound pass with 722 cuts took 4x as long that way)."""

    rows: Tensor
    matrix: Tensor

    @staticmethod
    def of(matrix: Tensor) -> Part:
        """The part of ``matrix`` (sparse [numel, m]) on its nonzero rows."""
        matrix = matrix.coalesce()
        rows, local = matrix.indices()[0].unique(return_inverse=True)
        index = torch.stack([local, matrix.indices()[1]])
        shape = (rows.numel(), matrix.shape[1])
        return Part(
            rows, torch.sparse_coo_tensor(index, matrix.values(), shape, check_invariants=True).coalesce()
        )

    def weights(self, mu: Tensor) -> Tensor:
        """``sum_c mu[s, b, c] matrix[:, c]`` [S, B, r]: the coefficients the multipliers ``mu`` [S, B, m]
        put on the positions ``rows``."""
        s, b, m = mu.shape
        return torch.sparse.mm(self.matrix, mu.reshape(s * b, m).T).T.reshape(s, b, -1)

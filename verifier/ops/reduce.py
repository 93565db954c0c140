"""Sums and means over constant dimensions (ReduceSum, ReduceMean, ``x.sum(dim)``, ``torch.mean``): one
affine :class:`Reduce`, a sum times a constant scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from verifier.ops.base import Affine, register


@register
@dataclass(frozen=True)
class Reduce(Affine):
    """``y = scale * sum of x over dims``: a sum (scale 1) or a mean (scale 1 / number of terms).

    ``dims`` are per-sample dimensions, sorted (0 is the first dimension after the row dimension)."""

    dims: tuple[int, ...]
    keepdim: bool = False
    scale: float = 1.0

    def _sum(self, x: Tensor) -> Tensor:
        return x.sum(dim=[d + 1 for d in self.dims], keepdim=self.keepdim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(0, x)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._sum(x) * self.scale

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._sum(x) * abs(self.scale)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        """A sum of one sign: the sums of the ends (exact, and infinite ends stay meaningful: a sum of
        exponentials is at least the sum of their lower bounds even when some upper bound overflows)."""
        lo, hi = (self.linear(0, t) for t in bounds)
        return (lo, hi) if self.scale >= 0 else (hi, lo)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        terms = math.prod(in_shape[d] for d in self.dims)
        return terms if self.scale == 1.0 else terms + 2  # a mean: the division and the rounded scale 1 / n

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        """Each input coordinate enters one sum with weight ``scale``: broadcast the sums back."""
        if not self.keepdim:
            for d in self.dims:  # ascending: each earlier dimension is back in place
                a = a.unsqueeze(d + 1)
        return a.expand(a.shape[0], *in_shape) * self.scale

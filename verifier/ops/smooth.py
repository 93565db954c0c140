"""Smooth elementwise functions that are neither monotone nor of one convexity: GELU (erf form and tanh
approximation) and SiLU (Swish, ``x sigmoid(x)``).

Both are concave, convex, concave on three pieces split by two inflection points (GELU: ``f'' = phi(x)
(2 - x^2)``, inflections at exactly ``+-sqrt(2)``; GELU-tanh: ``+-1.41850400879083``; SiLU: ``x tanh(x / 2)
= 2``, ``+-2.39935728051547``; the last two found by bisection in float64 on ``f''``). One rule,
:class:`Inflected`:

* a box inside one piece gets the :class:`Curved` rule (chord on one side, tangent at ``l + p (u - l)`` on
  the other, ``p`` alpha-CROWN's parameter);
* a box holding an inflection point gets the narrower of the chord-parallel lines and the constant lines,
  both from the exact extremes of ``f(h) - s h`` (``ops.extremes``: ``f'`` is monotone on each piece);
* IBP is exact: the extremes of f (``s = 0``), e.g. GELU's minimum ``-0.16997`` at ``-0.75179`` when the box
  holds it.

Lines and IBP are computed in float64 and widened (``_widened``). Rounding: ``lipschitz_error`` with
``|f'| <= 1.13`` (GELU, both forms: ``max f' = 1.12899``) or ``1.1`` (SiLU: ``1.09984``), and the scale
``max(|x|, 1)`` (``|f(x)| <= |x|``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.ops.activations import _widened
from verifier.ops.base import Relaxation, RelaxConfig, register
from verifier.ops.elementwise import Curved
from verifier.ops.extremes import across_lines, extremes

_SQRT_2PI = math.sqrt(2 * math.pi)
_TANH_K, _TANH_C = math.sqrt(2 / math.pi), 0.044715


class Inflected(Curved):
    """A smooth function with inflection points ``_breaks`` (sorted), convex on the leftmost piece when
    ``_first_convex``, the pieces alternating; ``_slope_bound`` bounds ``|f'|`` everywhere."""

    _breaks: tuple[float, ...] = ()
    _first_convex: bool = False
    _slope_bound: float = 1.0

    def _one_piece(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Boxes holding no inflection point inside (touching one at an end is fine)."""
        inside = [(lo < b) & (b < hi) for b in self._breaks]
        return ~torch.stack(inside).any(0)

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        mid = (lo + hi) / 2
        piece = sum((mid > b).long() for b in self._breaks)
        return (piece % 2 == 0) == self._first_convex

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return torch.full_like(a, self._slope_bound), torch.maximum(a.abs(), b.abs()).clamp(min=1.0)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        """The exact extremes of f over the box (float64), moved outward by a few roundings."""
        lo, hi = bounds
        low, high = extremes(self._f, self._df, self._breaks, torch.zeros_like(lo.double()), lo.double(),
                             hi.double())  # fmt: skip
        eps = torch.finfo(lo.dtype).eps
        return (low - 8 * eps * (1 + low.abs())).to(lo.dtype), (high + 8 * eps * (1 + high.abs())).to(
            lo.dtype
        )

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        curved = super().relax(lo, hi, cfg, param)
        l, u = lo.double(), hi.double()
        a, b_lo, b_up = across_lines(self._f, self._df, self._breaks, l, u)
        across = _widened(a, b_lo, a, b_up, l, u, lo.dtype)
        keep = self._one_piece(lo, hi)
        pick = lambda mine, other: torch.where(keep, mine, other)
        return Relaxation(
            pick(curved.a_lo, across.a_lo),
            pick(curved.b_lo, across.b_lo),
            pick(curved.a_up, across.a_up),
            pick(curved.b_up, across.b_up),
        )


@register
@dataclass(frozen=True)
class GELU(Inflected):
    """``x Phi(x)`` (``approximate="none"``) or ``x (1 + tanh(k (x + 0.044715 x^3))) / 2`` with ``k =
    sqrt(2 / pi)`` (``approximate="tanh"``), as ``torch.nn.GELU`` and ONNX Gelu."""

    approximate: str = "none"

    _first_convex = False
    _slope_bound = 1.13

    @property
    def _breaks(self) -> tuple[float, ...]:
        b = math.sqrt(2.0) if self.approximate == "none" else 1.4185040087908283
        return (-b, b)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def _f(self, x: Tensor) -> Tensor:
        if self.approximate == "none":
            return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))
        return 0.5 * x * (1 + torch.tanh(_TANH_K * (x + _TANH_C * x**3)))

    def _df(self, x: Tensor) -> Tensor:
        if self.approximate == "none":
            return 0.5 * (1 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / _SQRT_2PI
        t = torch.tanh(_TANH_K * (x + _TANH_C * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_K * (1 + 3 * _TANH_C * x * x)


@register
@dataclass(frozen=True)
class SiLU(Inflected):
    """``x sigmoid(x)`` (SiLU, Swish with beta 1), as ``torch.nn.SiLU``."""

    _breaks = (-2.399357280515467, 2.399357280515467)
    _first_convex = False
    _slope_bound = 1.1

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)

    def _f(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)

    def _df(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))

"""Sin and Cos over arbitrary boxes.

Both are ``sin(z)`` with ``z = h + phase`` (phase pi/2 for cos). IBP is exact: a box holds a maximum (a
minimum) of sin when it holds a point ``pi/2 + 2 pi k`` (``-pi/2 + 2 pi k``), and then the bound is 1 (-1);
otherwise sin is monotone between the box's ends, which give the bound.

Lines: ``sin`` is concave on ``[2 pi k, 2 pi k + pi]`` and convex on ``[2 pi k - pi, 2 pi k]``; a box inside
one such half period gets the :class:`Curved` rule (chord and tangent). A box crossing an inflection point
gets the better (narrower gap) of two sound pairs:

* lines parallel to the chord, ``s h + min g`` and ``s h + max g`` with ``g(h) = f(h) - s h`` and
  ``s = (f(u) - f(l)) / (u - l)``: they bracket f by definition of the extremes of g over the box, which lie
  at the ends or at critical points, where ``f'(h) = cos(z) = s``: ``z = +-acos(s) + 2 pi k``. Along each of
  the two families, ``g = sin(+-acos(s)) - s (z - phase)`` is affine in k, so its extremes over the points
  in the box are at the family's first and last point there; evaluating g at these four points (clamped
  into the box, which can only add points of the box) and at the ends gives the exact extremes;
* the constant lines at the IBP bounds (better on wide boxes, e.g. spanning a period).

Everything is computed in float64 and widened like the other curved functions (``_widened``).

Rounding (``Curved.rounding_error``): ``|f'| = |cos(z)|`` on the widened box is 1 where it holds a
multiple of pi, else its larger end value (``|cos|`` is monotone between a multiple of pi and the next
zero, and a zero inside the box is a minimum); the accuracy is absolute (``s = 1``), assumed only for
``|h| <= MEASURED_RANGE`` (the measured range: range reduction of larger arguments is not covered)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.activations import _widened
from verifier.ops.base import Relaxation, RelaxConfig, register
from verifier.ops.elementwise import Curved, _fields

_PHASES = {"sin": 0.0, "cos": math.pi / 2}
_TWO_PI = 2 * math.pi
# inputs beyond this magnitude get no rounding bound (the runtime's accuracy was measured up to it)
MEASURED_RANGE = 1e5


def _holds(lo: Tensor, hi: Tensor, point: float) -> Tensor:
    """Whether [lo, hi] holds a point ``point + 2 pi k`` for some integer k."""
    return torch.ceil((lo - point) / _TWO_PI) <= torch.floor((hi - point) / _TWO_PI)


@register
@dataclass(frozen=True)
class Periodic(Curved):
    """``sin`` or ``cos`` (``function``), on any box."""

    function: str = "sin"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x) if self.function == "sin" else torch.cos(x)

    def _df(self, x: Tensor) -> Tensor:
        return torch.cos(x) if self.function == "sin" else -torch.sin(x)

    def _z(self, x: Tensor) -> Tensor:
        return x.double() + _PHASES[self.function]

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        za, zb = self._z(a), self._z(b)
        peak = _holds(za, zb, 0.0) | _holds(za, zb, math.pi)  # where |f'(h)| = |cos(z)| = 1
        slope = torch.where(peak, 1.0, torch.maximum(torch.cos(za).abs(), torch.cos(zb).abs()))
        measured = torch.maximum(a.abs(), b.abs()) <= MEASURED_RANGE
        return slope, torch.where(measured, 1.0, torch.inf)

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Convex on ``[(2k - 1) pi, 2k pi]`` in z: where the half period holding the box's start is odd."""
        return torch.floor(self._z(lo) / math.pi).remainder(2) == 1

    def _curved(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Boxes inside one half period ``[j pi, (j + 1) pi]`` of z (no inflection point inside)."""
        zl, zu = self._z(lo), self._z(hi)
        return zu <= (torch.floor(zl / math.pi) + 1) * math.pi

    def _exact_ibp(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The exact bounds in float64 (before widening)."""
        zl, zu = self._z(lo), self._z(hi)
        f_lo, f_hi = self._f(lo.double()), self._f(hi.double())
        low = torch.where(_holds(zl, zu, -math.pi / 2), -1.0, torch.minimum(f_lo, f_hi))
        high = torch.where(_holds(zl, zu, math.pi / 2), 1.0, torch.maximum(f_lo, f_hi))
        return low, high

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        low, high = self._exact_ibp(lo, hi)
        slack = 4 * torch.finfo(lo.dtype).eps  # rounding of sin / cos and of the cast, values within 1
        return (low - slack).clamp(min=-1).to(lo.dtype), (high + slack).clamp(max=1).to(lo.dtype)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        curved = super().relax(lo, hi, cfg, param)
        crossing = self._crossing_lines(lo, hi)
        keep = self._curved(lo, hi)
        return Relaxation(*(torch.where(keep, a, b) for a, b in zip(_fields(curved), _fields(crossing))))

    def _crossing_lines(self, lo: Tensor, hi: Tensor) -> Relaxation:
        """Sound lines on any box: the chord-parallel pair or the constant pair, whichever gap is smaller."""
        l, u = lo.double(), hi.double()
        width = u - l
        f_lo, f_hi = self._f(l), self._f(u)
        s = ((f_hi - f_lo) / torch.where(width > 0, width, 1.0)).clamp(-1, 1)  # |chord slope| <= 1
        points, phase = [l, u], _PHASES[self.function]
        zl, zu = self._z(l), self._z(u)
        for theta in (torch.acos(s), -torch.acos(s)):  # critical points z = theta + 2 pi k
            first = theta + _TWO_PI * torch.ceil((zl - theta) / _TWO_PI)
            last = theta + _TWO_PI * torch.floor((zu - theta) / _TWO_PI)
            points += [torch.minimum(torch.maximum(z - phase, l), u) for z in (first, last)]
        g = torch.stack([self._f(x) - s * x for x in points])
        g_min, g_max = g.min(0).values, g.max(0).values
        low, high = self._exact_ibp(l, u)
        constant = high - low < g_max - g_min
        zero = torch.zeros_like(s)
        a = torch.where(constant, zero, s)
        return _widened(
            a, torch.where(constant, low, g_min), a, torch.where(constant, high, g_max), l, u, lo.dtype
        )

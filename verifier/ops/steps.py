"""Step functions: Sign, Floor, Ceil, Round (half to even, as ``torch.round`` and ONNX Round).

Each is nondecreasing and constant between its jump points (Sign: 0, with ``sign(0) = 0``; Floor and Ceil:
the integers; Round: the half-integers), so IBP is exact: ``[f(l), f(u)]``. A box holding no jump gets the
constant lines (exact). On a box holding jumps, lines of a slope ``s >= 0``: ``g(h) = f(h) - s h`` decreases
on every step, so its supremum on a step is at the step's left end and its infimum at its right end; over
the box, ``max g`` is among ``g(l)``, ``g(u)`` and ``f(j+) - s j`` at the jumps ``l <= j < u``, ``min g``
among ``g(l)``, ``g(u)`` and ``f(j-) - s j`` at the jumps ``l < j <= u`` (one-sided limits: whatever value
the function takes at the jump itself, e.g. Round's ties to even, lies between them; a box of one point
on a jump gets its exact value). Jumps are evenly spaced with equal heights, so these
values are affine in the jump's number and their extremes are at the first and the last jump in the box.
The slope is the one of the narrowest pair among the chord's ``(f(u) - f(l)) / (u - l)``, 1 (Floor, Ceil,
Round: ``x - 1 <= floor(x) <= x`` and the like) and 0; a jump of height 1 (2 for Sign) always remains
between the lines. No free parameter. Lines are computed in float64 and widened (``_widened``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.activations import _widened
from verifier.ops.base import Nonlinear, Relaxation, RelaxConfig, register
from verifier.ops.rounding import FloatFormat

_FUNCTIONS = {"sign": torch.sign, "floor": torch.floor, "ceil": torch.ceil, "round": torch.round}
# per kind: offset of the jumps from the integers, and the one-sided limits (f(j-), f(j+)) at a jump j
_JUMPS = {
    "floor": (0.0, lambda j: (j - 1, j)),
    "ceil": (0.0, lambda j: (j, j + 1)),
    "round": (0.5, lambda j: (j - 0.5, j + 0.5)),
    "sign": (0.0, lambda j: (-torch.ones_like(j), torch.ones_like(j))),
}


@register
@dataclass(frozen=True)
class Step(Nonlinear):
    """``kind``: "sign", "floor", "ceil" or "round"."""

    kind: str = "floor"

    def forward(self, x: Tensor) -> Tensor:
        return _FUNCTIONS[self.kind](x)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)  # nondecreasing

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        return self.forward(lo) != self.forward(hi)

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """The function is exact in floating point; an input error moves the output only across a jump:
        exact and computed outputs both lie in ``[f(lo - e), f(hi + e)]``, a single value (error 0) when
        that widened box holds no jump (its ends moved out by a few roundings of their own computation)."""
        (lo, hi), e = bounds[0], errors[0]
        slack = 4 * torch.finfo(lo.dtype).eps * (lo.abs() + hi.abs() + e)
        spread = self.forward(hi + e + slack) - self.forward(lo - e - slack)
        return torch.where(e > 0, spread, 0.0)

    def _jumps(self, l: Tensor, u: Tensor, closed_left: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The first and last jump points in ``[l, u)`` (``closed_left``) or ``(l, u]``, and where there is
        one."""
        c = 0.0 if self.kind == "sign" else _JUMPS[self.kind][0]
        if closed_left:
            first, last = torch.ceil(l - c) + c, torch.ceil(u - c) - 1 + c
        else:
            first, last = torch.floor(l - c) + 1 + c, torch.floor(u - c) + c
        if self.kind == "sign":  # one jump, at 0
            zero = torch.zeros_like(l)
            return zero, zero, (first <= 0) & (last >= 0)
        return first, last, first <= last

    def _gap_lines(self, s: Tensor, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(min g, max g)`` of ``g = f - s h`` over [l, u] for a slope ``s >= 0`` (module docstring): the
        ends, the right limits at jumps in ``[l, u)`` (for the max) and the left limits at jumps in ``(l, u]``
        (for the min); a jump at an end of the box has only its inner side inside."""
        limits = _JUMPS[self.kind][1]
        g = lambda value, h: value - s * h
        ends = torch.stack([g(self.forward(l), l), g(self.forward(u), u)])
        high, low = ends.max(0).values, ends.min(0).values
        for closed_left in (True, False):
            first, last, some = self._jumps(l, u, closed_left)
            for j in (first, last):
                below, above = limits(j)
                if closed_left:
                    high = torch.where(some, torch.maximum(high, g(above, j)), high)
                else:
                    low = torch.where(some, torch.minimum(low, g(below, j)), low)
        return low, high

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        l, u = lo.double(), hi.double()
        width = u - l
        chord = torch.where(
            width > 0, (self.forward(u) - self.forward(l)) / torch.where(width > 0, width, 1.0), 0.0
        )
        slopes = [chord, torch.zeros_like(l)] + ([] if self.kind == "sign" else [torch.ones_like(l)])
        best_a, best_lo, best_hi = None, None, None
        for s in slopes:  # keep the narrowest pair (the first among equals)
            low, high = self._gap_lines(s, l, u)
            if best_a is None:
                best_a, best_lo, best_hi = s, low, high
                continue
            better = high - low < best_hi - best_lo
            best_a = torch.where(better, s, best_a)
            best_lo, best_hi = torch.where(better, low, best_lo), torch.where(better, high, best_hi)
        return _widened(best_a, best_lo, best_a, best_hi, l, u, lo.dtype)

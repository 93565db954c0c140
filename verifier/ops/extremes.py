"""Extremes of ``g(h) = f(h) - s h`` over a box, for a smooth elementwise ``f`` whose derivative is monotone
between known breakpoints (its inflection points), and the sound lines they give on boxes where ``f`` is
neither convex nor concave.

Between two consecutive breakpoints ``f'`` is monotone, hence so is ``g' = f' - s``: on that piece of the box
``g`` has at most one critical point, a sign change of ``g'``, found by bisection. The extremes of ``g`` over
the box are among its values at the box's ends, at the pieces' ends inside the box and at these critical
points. A bisection stops with a bracket ``[a, b]`` holding the critical point; on it ``|g'|`` is at most
``max(|g'(a)|, |g'(b)|)`` (``g'`` is monotone there), so ``g`` stays within ``g(a) +- that * (b - a)``:
the extremes are bounded rigorously, not only approximately. Every candidate is a point of the box, so adding
candidates never moves the extremes outward.

With ``s = 0`` the extremes are the exact IBP bounds of a non-monotone ``f``; with ``s`` the chord slope they
give the two lines parallel to the chord, ``s h + min g <= f(h) <= s h + max g`` (they touch ``f``). Everything
is evaluated in float64; callers widen the result for their working precision."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Fn = Callable[[Tensor], Tensor]
_STEPS = 60  # halvings of a bracket: from any float64 box width to below its rounding


def extremes(
    f: Fn, df: Fn, breaks: Sequence[float], s: Tensor, l: Tensor, u: Tensor
) -> tuple[Tensor, Tensor]:
    """``(lower, upper)`` with ``lower <= f(h) - s h <= upper`` for every h in ``[l, u]`` (float64 tensors of
    one shape; ``breaks`` sorted, ``f'`` monotone between consecutive ones and beyond the outermost)."""
    g = lambda h: f(h) - s * h
    dg = lambda h: df(h) - s
    ends = [l, u] + [torch.clamp(torch.full_like(l, b), l, u) for b in breaks]
    values = [g(h) for h in ends]
    low, high = torch.stack(values).min(0).values, torch.stack(values).max(0).values
    edges = [-torch.inf, *breaks, torch.inf]
    for left, right in itertools.pairwise(edges):
        a = torch.clamp(torch.full_like(l, left), l, u)
        b = torch.clamp(torch.full_like(l, right), l, u)
        start = dg(a) <= 0
        change = start != (dg(b) <= 0)  # g' changes sign on this piece: one critical point inside
        for _ in range(_STEPS):
            mid = (a + b) / 2
            below = (dg(mid) <= 0) == start  # the sign change lies in [mid, b]
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
        reach = torch.maximum(dg(a).abs(), dg(b).abs()) * (b - a)
        centre = g(a)
        low = torch.where(change, torch.minimum(low, centre - reach), low)
        high = torch.where(change, torch.maximum(high, centre + reach), high)
    return low, high


def chord_slope(f: Fn, l: Tensor, u: Tensor) -> Tensor:
    """``(f(u) - f(l)) / (u - l)``, 0 on a box of one point."""
    width = u - l
    return torch.where(width > 0, (f(u) - f(l)) / torch.where(width > 0, width, 1.0), 0.0)


def across_lines(f: Fn, df: Fn, breaks: Sequence[float], l: Tensor, u: Tensor) -> tuple[Tensor, ...]:
    """``(a, b_lo, b_up)``: lines ``a h + b_lo <= f(h) <= a h + b_up`` on ``[l, u]``, the narrower pair of the
    chord-parallel lines and the constant lines at the exact extremes of f (better on wide boxes)."""
    s = chord_slope(f, l, u)
    g_lo, g_hi = extremes(f, df, breaks, s, l, u)
    f_lo, f_hi = extremes(f, df, breaks, torch.zeros_like(l), l, u)
    constant = f_hi - f_lo < g_hi - g_lo
    return (
        torch.where(constant, 0.0, s),
        torch.where(constant, f_lo, g_lo),
        torch.where(constant, f_hi, g_hi),
    )

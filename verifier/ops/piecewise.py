"""Piecewise-linear elementwise functions built on the ReLU and ramp rules: Abs (a dedicated rule, tighter
than ``relu(x) + relu(-x)``) and Clip (``torch.clamp`` / hardtanh / ReLU6 / ONNX Clip with constant ends),
which is a ReLU or a unit ramp moved into place."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.activations import Ramp, ReLU
from verifier.ops.base import Nonlinear, Relaxation, RelaxConfig, register
from verifier.ops.rounding import FloatFormat


@register
@dataclass(frozen=True)
class Abs(Nonlinear):
    """``|h|``: slope -1 below zero, 1 above; convex.

    On a box not crossing zero it is one piece: both lines are that piece. On a box crossing zero the chord
    through (l, -l) and (u, u) lies above (f is convex); below, any line ``a h`` through the origin with
    ``a`` in [-1, 1]: ``a h <= |a| |h| <= |h|``. The default slope is the one leaving the least area,
    ``integral of (|h| - a h)`` over [l, u], i.e. the one maximising ``a (u^2 - l^2)``: 1 when ``u > -l``,
    else -1 (``relu_lower="zero"``: the flat line 0)."""

    linear_on_each_side_of_zero = True

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(x)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        # the minimum 0 is inside a box crossing zero; the maximum is always at an end
        low = torch.where(self.needs_bounds(lo, hi), 0.0, torch.minimum(lo.abs(), hi.abs()))
        return low, torch.maximum(-lo, hi)

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        return errors[0]  # exact in floating point and 1-Lipschitz: |f(x^) - f(x)| <= |x^ - x|

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        """The slope of the lower line through the origin on boxes crossing zero."""
        if not self.needs_bounds(lo, hi).any():
            return None
        if cfg.relu_lower == "zero":
            return torch.zeros_like(lo)
        return torch.where(hi > -lo, 1.0, -1.0).to(lo.dtype)

    def project(self, param: Tensor) -> Tensor:
        return param.clamp(-1.0, 1.0)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        crossing = self.needs_bounds(lo, hi)
        piece = torch.where(hi <= 0, -1.0, 1.0).to(lo.dtype)  # a box touching zero at an end: one piece
        zero = torch.zeros_like(lo)
        # the chord through (l, -l) and (u, u): slope (u + l) / (u - l), value -2 l u / (u - l) at 0
        width = torch.where(crossing, hi - lo, 1.0)
        chord_a = torch.where(crossing, (hi + lo) / width, piece)
        chord_b = torch.where(crossing, -2 * lo * hi / width, zero)
        slope = self.initial_param(lo, hi, cfg) if param is None else param
        if slope is None:  # no box crosses zero
            return Relaxation(piece, zero, piece, zero)
        return Relaxation(torch.where(crossing, slope, piece), zero, chord_a, chord_b)


@register
@dataclass(frozen=True)
class Clip(Nonlinear):
    """``clamp(h, low, high)`` with constant ends (either may be None, not both; ``low < high``).

    It is a ReLU or the unit ramp ``clamp(y, 0, 1)`` (:class:`Ramp` with r = 1, eta = 0) moved into place:
    ``f(h) = c + s w g(s (h - c) / w)`` with, for both ends, ``c = low, s = 1, w = high - low, g`` the ramp;
    for ``low`` alone ``c = low, s = 1, w = 1, g = relu``; for ``high`` alone ``c = high, s = -1, w = 1,
    g = relu``. A line ``A y + B`` on one side of ``g`` on the image box of y becomes, in h, the line of
    slope ``A`` and intercept ``c + s w B - A c`` on the same side of f when ``s = 1`` and on the other side
    when ``s = -1`` (f then subtracts g): the relaxation is g's, exact on every piece. The free parameter
    (one-sided clamps) is ReLU's slope, on g's side."""

    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        if self.low is None and self.high is None:
            raise ValueError("Clip needs at least one end")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"Clip with low {self.low} not below high {self.high}")

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.low, self.high)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)  # nondecreasing

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        return errors[0]  # exact in floating point and 1-Lipschitz: |f(x^) - f(x)| <= |x^ - x|

    def _placement(self, like: Tensor) -> tuple[Nonlinear, float, float, float]:
        """(g, c, s, w) with ``f(h) = c + s w g(s (h - c) / w)`` (g's constants on the device of ``like``)."""
        if self.high is None:
            return ReLU(), self.low, 1.0, 1.0
        if self.low is None:
            return ReLU(), self.high, -1.0, 1.0
        return Ramp(torch.ones(1, device=like.device), 0.0, None), self.low, 1.0, self.high - self.low

    def _inner(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The box of ``y = s (h - c) / w`` (s = -1 swaps the ends)."""
        _, c, s, w = self._placement(lo)
        return ((lo - c) / w, (hi - c) / w) if s > 0 else ((c - hi) / w, (c - lo) / w)

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        return self._placement(lo)[0].needs_bounds(*self._inner(lo, hi))

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        return self._placement(lo)[0].initial_param(*self._inner(lo, hi), cfg)

    def project(self, param: Tensor) -> Tensor:
        return self._placement(param)[0].project(param)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        g, c, s, w = self._placement(lo)
        rel = g.relax(*self._inner(lo, hi), cfg, param)
        lower, upper = ((rel.a_lo, rel.b_lo), (rel.a_up, rel.b_up))
        if s < 0:  # f = c - g: g's upper line gives f's lower line
            lower, upper = upper, lower
        placed = [(a, c + s * w * b - a * c) for a, b in (lower, upper)]
        return Relaxation(*placed[0], *placed[1])

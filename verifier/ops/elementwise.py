"""Elementwise functions that are convex or concave on every box they are given: Exp, Log, Softplus and
Power with a constant exponent (which also spells Sqrt, ``x ** 0.5``, and Reciprocal, ``x ** -1``).

One rule serves them all (:class:`Curved`); a function only states its values, its derivative, its domain
and on which boxes it is convex. On a convex box the chord through (l, f(l)) and (u, f(u)) lies above f and
the tangent at any point of the box below it; on a concave box the roles swap. The tangent point is
``l + p (u - l)`` with the fraction ``p`` in [0, 1] (alpha-CROWN's parameter); its default, the midpoint,
is the point whose tangent leaves the least area between itself and f over the box (the derivative of that
area in the tangent point t is ``f''(t) (u - l) (t - m)``, zero at the midpoint m). Lines are computed in
float64 and widened like the S-shaped ones (``_widened``), so they are sound in float32 and float64.

The rounding rule (``Curved.rounding_error``) is ``lipschitz_error`` with each function's bound on ``|f'|``
over the input box widened by the input error, and its accuracy scale; where the widened box reaches a pole
or leaves the domain (a computed input may be 0 or negative) the error is ``inf``: no bound."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.ops.activations import _widened
from verifier.ops.base import Nonlinear, Relaxation, RelaxConfig, register
from verifier.ops.rounding import IMPLEMENTATION_ULPS, FloatFormat, NoRoundingRule, lipschitz_error

# covers the float64 evaluation of the bounds on |f'| and |f| (a few roundings of relative 1e-16)
_SLOPE_SLACK = 1.0 + 1e-6


class DomainError(ValueError):
    """Input bounds outside the domain of a function (the engine re-raises it naming the node)."""


class Curved(Nonlinear):
    """An elementwise function, monotone and either convex or concave on each box it accepts.

    Subclasses give ``forward`` (the working-precision function), ``_f`` and ``_df`` (the function and its
    derivative, evaluated in float64), ``_convex`` and, when needed, ``_check``."""

    def _f(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def _df(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Where f is convex on [lo, hi] (bool); concave elsewhere."""
        raise NotImplementedError

    def _check(self, lo: Tensor, hi: Tensor) -> None:
        """Raise a :class:`DomainError` where the box leaves the domain (or the supported boxes)."""

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``(L, s)`` on the widened box ``[a, b]`` (float64): ``L >= |f'|`` on it and ``s`` the scale of
        the implementation's accuracy (``|f_impl - f| <= IMPLEMENTATION_ULPS u s``; at least ``|f|`` there);
        ``inf`` (or NaN) where the box reaches a pole or leaves the domain."""
        raise NoRoundingRule(type(self).__name__)

    def _ulps(self) -> float:
        return IMPLEMENTATION_ULPS

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """``e_out = L e + k u s + tiny`` (``lipschitz_error``) with ``(L, s)`` from ``_error_scales`` on
        ``[lo - e, hi + e]``, which holds both the exact and the computed input."""
        ((lo, hi),), (e,) = bounds, errors
        slope, size = self._error_scales(lo - e, hi + e)
        return lipschitz_error(slope * _SLOPE_SLACK, e, size * _SLOPE_SLACK, self._ulps(), fmt)

    def _refuse(self, bad: Tensor, lo: Tensor, hi: Tensor, what: str) -> None:
        if bad.any():
            i = bad.flatten().nonzero()[0, 0]
            l, u = lo.flatten()[i].item(), hi.flatten()[i].item()
            raise DomainError(f"{self}: input bounds [{l:.6g}, {u:.6g}] {what}")

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        """Monotone on the box: the ends' values, in either order."""
        lo, hi = bounds
        self._check(lo, hi)
        f_lo, f_hi = self.forward(lo), self.forward(hi)
        return torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        """The tangent point as a fraction of the box, [B, *shape]: the midpoint (least area)."""
        return torch.full_like(lo, 0.5) if (lo < hi).any() else None

    def project(self, param: Tensor) -> Tensor:
        return param.clamp(0.0, 1.0)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        self._check(lo, hi)
        l, u = lo.double(), hi.double()
        p = 0.5 if param is None else param.double()
        width = u - l
        flat = width == 0
        f_lo, f_hi = self._f(l), self._f(u)
        chord_a = (f_hi - f_lo) / torch.where(flat, 1.0, width)  # 0 on a flat box: f_hi == f_lo
        chord_b = f_lo - chord_a * l
        t = l + p * width
        if t.requires_grad:  # at a point where f' or f'' is infinite (sqrt, x ** 1.5 at 0) the gradient is
            t.register_hook(lambda g: torch.where(g.isfinite(), g, 0.0))  # no guide for an optimiser
        tan_a = self._df(t)
        tan_b = self._f(t) - tan_a * t
        usable = ~flat & tan_a.isfinite() & tan_b.isfinite()
        convex = self._convex(l, u)
        # where the tangent is vertical or the box a point: the constant line through the end value on the
        # tangent's side (f is monotone on the box, so its values lie between the ends')
        const = torch.where(convex, torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi))
        tan_a, tan_b = torch.where(usable, tan_a, 0.0), torch.where(usable, tan_b, const)
        # convex: tangent below, chord above; concave: the mirror
        a_lo, b_lo = torch.where(convex, tan_a, chord_a), torch.where(convex, tan_b, chord_b)
        a_up, b_up = torch.where(convex, chord_a, tan_a), torch.where(convex, chord_b, tan_b)
        return _widened(a_lo, b_lo, a_up, b_up, l, u, lo.dtype)


# ------------------------------------------------------------------------------------------- functions


@register
@dataclass(frozen=True)
class Exp(Curved):
    """``exp``: convex and increasing everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    def _df(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo, dtype=torch.bool)

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return torch.exp(b), torch.exp(b)  # f' = f, increasing; the accuracy is relative


@register
@dataclass(frozen=True)
class Log(Curved):
    """``log``: concave and increasing on x > 0, its domain."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(x)

    def _df(self, x: Tensor) -> Tensor:
        return 1 / x

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.zeros_like(lo, dtype=torch.bool)

    def _check(self, lo: Tensor, hi: Tensor) -> None:
        self._refuse(~(lo > 0), lo, hi, "leave the domain x > 0")

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``|f'| = 1 / x`` is largest at ``a``: ``inf`` when ``a <= 0`` (pole, then outside the domain).
        The accuracy is taken as absolute near ``log = 0`` (``s >= 1``)."""
        inside = a > 0
        slope = torch.where(inside, 1 / torch.where(inside, a, 1.0), torch.inf)
        size = torch.maximum(torch.log(a.clamp(min=0)).abs(), torch.log(b).abs()).clamp(min=1.0)
        return slope, torch.where(inside, size, torch.inf)


@register
@dataclass(frozen=True)
class Softplus(Curved):
    """``log(1 + exp(beta x)) / beta`` (convex, increasing), computed as PyTorch does: ``x`` itself where
    ``beta x > threshold``. There the computed value lies below the function by ``log(1 + exp(-beta x)) /
    beta``, less than ``gap = log(1 + exp(-threshold)) / beta``; lowering the lower line and the IBP lower
    bound by ``gap`` makes them sound for the computed function (2e-9 for the default threshold 20)."""

    beta: float = 1.0
    threshold: float = 20.0

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def _f(self, x: Tensor) -> Tensor:
        return torch.logaddexp(self.beta * x, torch.zeros_like(x)) / self.beta

    def _df(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * x)

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo, dtype=torch.bool)

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``f' = sigmoid(beta x)`` and ``f`` are increasing and positive; the accuracy is absolute where
        ``f`` is small (``s >= 1``). The rule bounds the distance to ``f`` itself, which the relaxation
        brackets along with the thresholded function."""
        return self._df(b), self._f(b).clamp(min=1.0)

    def _gap(self) -> float:
        return math.log1p(math.exp(-self.threshold)) / self.beta

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        # the computed function lies in [f - gap, f] and f is increasing
        lo, hi = bounds
        return self.forward(lo) - self._gap(), self._f(hi)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        rel = super().relax(lo, hi, cfg, param)
        return replace(rel, b_lo=rel.b_lo - self._gap())


@register
@dataclass(frozen=True)
class Power(Curved):
    """``x ** exponent`` for a constant exponent; the sign of ``f'' = e (e - 1) x^(e - 2)`` decides:

    * on x >= 0: convex when ``e >= 1`` or ``e <= 0``, concave for ``0 < e < 1``;
    * on x <= 0 (integer exponents only): convex for even e, concave for odd e (``e = 1``: linear);
    * boxes crossing 0: even ``e >= 0`` is convex there (IBP's lower end is then 0, the minimum); odd
      ``e >= 3`` is concave on x <= 0 and convex on x >= 0 (:meth:`_odd_lines`, the S-shaped rule);
      negative exponents have no finite bound.

    Domain: integer ``e >= 0`` any x; integer ``e < 0``: boxes not containing 0; other exponents x >= 0
    (x > 0 when negative)."""

    exponent: float = 2.0

    def forward(self, x: Tensor) -> Tensor:
        return torch.pow(x, self.exponent)

    def _df(self, x: Tensor) -> Tensor:
        e = self.exponent
        return e * torch.pow(x, e - 1) if e != 0 else torch.zeros_like(x)

    def _integer(self) -> bool:
        return float(self.exponent).is_integer()

    def _convex(self, lo: Tensor, hi: Tensor) -> Tensor:
        e = self.exponent
        on_positive = torch.full_like(lo, e >= 1 or e <= 0, dtype=torch.bool)
        even = self._integer() and e % 2 == 0
        return torch.where(hi <= 0, even, on_positive) | ((lo < 0) & (hi > 0))

    def _check(self, lo: Tensor, hi: Tensor) -> None:
        e = self.exponent
        if not self._integer():
            bad, domain = (~(lo > 0), "x > 0") if e < 0 else (~(lo >= 0), "x >= 0")
            self._refuse(bad, lo, hi, f"leave the domain {domain}")
        elif e < 0:
            self._refuse(~((lo > 0) | (hi < 0)), lo, hi, "contain 0, where the function has no finite bound")

    def _odd(self) -> bool:
        return self._integer() and self.exponent % 2 == 1 and self.exponent > 1

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        rel = super().relax(lo, hi, cfg, param)
        crossing = (lo < 0) & (hi > 0)
        if not (self._odd() and crossing.any()):
            return rel
        odd = self._odd_lines(lo.double(), hi.double(), lo.dtype)
        return Relaxation(*(torch.where(crossing, b, a) for a, b in zip(_fields(rel), _fields(odd))))

    def _odd_lines(self, l: Tensor, u: Tensor, dtype: torch.dtype) -> Relaxation:
        """Lines of ``x^e`` (odd e >= 3) on boxes with ``l < 0 < u``, as for S-shaped functions mirrored.

        Above: the tangent at ``d = c u < 0`` passes through (u, u^e), with ``c`` the negative root of ``c^e +
        e c^(e-1) (1 - c) = 1`` (f is homogeneous; ``c = -1/2`` for e = 3). It lies above f on x <= 0 (f is
        concave there), at 0 (its value ``(1 - e) d^e > 0``) and at u, hence on [0, u] (f convex, below the
        chord). A tangent point farther out (``t < d``) is sound too (the line's value at u grows as t
        moves out: its derivative in t is ``f''(t) (u - t) < 0``), so ``c`` is taken a little farther out.
        When ``d <= l`` the chord lies above f on the box. Below: the mirror image, ``d = c l > 0``."""
        e = int(self.exponent)
        c = _odd_tangent_ratio(e) * (1 + 1e-9)
        f = lambda x: x**e
        df = lambda x: e * x ** (e - 1)
        chord_a = (f(u) - f(l)) / (u - l)
        chord_b = f(l) - chord_a * l
        d_up, d_lo = c * u, c * l
        up = (
            torch.where(d_up > l, df(d_up), chord_a),
            torch.where(d_up > l, f(d_up) - df(d_up) * d_up, chord_b),
        )
        low = (
            torch.where(d_lo < u, df(d_lo), chord_a),
            torch.where(d_lo < u, f(d_lo) - df(d_lo) * d_lo, chord_b),
        )
        return _widened(*low, *up, l, u, dtype)

    def _ulps(self) -> float:
        """An integer power may be computed by repeated multiplication: ``|e|`` roundings more."""
        return IMPLEMENTATION_ULPS + (abs(self.exponent) if self._integer() else 0.0)

    def _error_scales(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``|f'| = |e| |x|^(e - 1)`` is monotone in ``|x|`` on each side of 0, so its maximum over
        ``[a, b]`` is at an end or at 0 (inf there for ``e < 1``: the pole of a negative power, the vertical
        tangent of a root); ``|f|`` likewise. A non-integer power of a possibly negative computed input
        (``a < 0``) is NaN: no bound. The accuracy is relative."""
        e = self.exponent
        df = lambda x: abs(e) * x.abs().pow(e - 1) if e != 0 else torch.zeros_like(x)
        crossing = (a <= 0) & (b >= 0)
        at_zero = df(torch.zeros_like(a))
        slope = torch.maximum(torch.maximum(df(a), df(b)), torch.where(crossing, at_zero, 0.0))
        size = torch.maximum(a.abs().pow(e), b.abs().pow(e))
        if not self._integer():
            slope = torch.where(a < 0, torch.inf, slope)
        return slope, torch.where(crossing & (e < 0), torch.inf, size)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = super().ibp(bounds)
        a, b = bounds
        if self._integer() and self.exponent > 0 and self.exponent % 2 == 0:  # the minimum 0 is inside
            lo = torch.where((a < 0) & (b > 0), 0.0, lo)
        return lo, hi


def _fields(rel: Relaxation) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return rel.a_lo, rel.b_lo, rel.a_up, rel.b_up


@functools.cache
def _odd_tangent_ratio(e: int) -> float:
    """The root c in (-1, 0) of ``(1 - e) c^e + e c^(e-1) - 1`` (negative at 0, positive at -1), by
    bisection; the returned end lies on the far side of the root (farther from 0)."""
    near, far = 0.0, -1.0
    for _ in range(200):
        mid = (near + far) / 2
        if (1 - e) * mid**e + e * mid ** (e - 1) - 1 > 0:
            far = mid
        else:
            near = mid
    return far

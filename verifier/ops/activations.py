"""Elementwise activations: ReLU / LeakyReLU (one piecewise-linear rule), ParamRamp, and the S-shaped Sigmoid /
Tanh / Erf."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.nn import param_ramp, ramp_breakpoint
from verifier.ops.base import Nonlinear, Relaxation, RelaxConfig, register
from verifier.ops.rounding import IMPLEMENTATION_ULPS, FloatFormat, lipschitz_error, magnitude


@register
@dataclass(frozen=True)
class ReLU(Nonlinear):
    """``f(h) = h`` for h >= 0 and ``negative_slope * h`` below: ReLU (slope 0) and LeakyReLU.

    On a box crossing zero the chord through (l, f(l)) and (u, f(u)) bounds f from above when f is convex
    (slope <= 1) and from below when concave; the other side is any line through the origin with a slope
    between the two pieces' slopes (CROWN's adaptive choice, or the smaller one for "zero")."""

    negative_slope: float = 0.0
    linear_on_each_side_of_zero = True

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope) if self.negative_slope else F.relu(x)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)  # monotone for a slope >= 0

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """ReLU is exact and 1-Lipschitz: ``e_out = e``, and 0 where ``hi + e <= 0`` (exact and computed
        inputs both <= 0: both outputs are 0). LeakyReLU rounds ``a x^`` once: ``|fl(a x^) - a x| <= |a| e
        + u |a x^|``, and the identity piece passes ``e``."""
        (e,) = errors
        a = abs(self.negative_slope)
        if a == 0.0:
            return torch.where(bounds[0][1] + e <= 0, 0.0, e)
        return lipschitz_error(max(1.0, a), e, a * magnitude(bounds[0], e), 1.0, fmt)

    def indicator_lines(self, q: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Lines bounding ``<q, d>`` from below, where ``d = 1[h > 0]`` is ReLU's indicator in the big-M
        encoding (``y <= u d``, ``y <= h - l (1 - d)``, d in {0, 1}) and q [S, B, *shape] coefficients of
        cutting planes on it (``engine.cuts``; ``lo``, ``hi`` [B, *shape]: any positions of the node, taken
        alike): ``(out, into, const)`` with ``<q, d> >= <out, y> +
        <into, h> + const`` [S, B] at every h in ``[lo, hi]`` and ``y = relu(h)``, for d = 1 where
        ``lo >= 0`` and d = 0 where ``hi <= 0`` (a choice of d the encoding allows there). Crossing zero,
        ``d >= y / u`` bounds the positive coefficients and ``d <= 1 + (y - h) / l`` the negative ones."""
        if self.negative_slope:
            raise NotImplementedError("indicator cuts are defined for ReLU only, not LeakyReLU")
        active, crossing = lo >= 0, (lo < 0) & (hi > 0)
        pos, neg = q.clamp(min=0), q.clamp(max=0)
        up, low = torch.where(crossing, hi, 1.0), torch.where(crossing, lo, -1.0)
        out = torch.where(crossing, pos / up + neg / low, 0.0)
        into = torch.where(crossing, -neg / low, 0.0)
        const = torch.where(active, q, 0.0) + torch.where(crossing, neg, 0.0)
        return out, into, const.flatten(2).sum(-1)

    def _slope_range(self) -> tuple[float, float]:
        """Slopes of lines through the origin that stay on one side of f: between the two pieces' slopes."""
        return min(self.negative_slope, 1.0), max(self.negative_slope, 1.0)

    def _origin_slope(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | float:
        """CROWN's slope of the line through the origin: the larger of the pieces' slopes where ``u > -l``
        (below a slope of 1, the piece holding the larger part of the box, which minimises the area between
        line and f), the smaller elsewhere; for "zero", the smaller (a scalar)."""
        small, large = self._slope_range()
        if cfg.relu_lower == "zero":
            return small
        return torch.where(hi > -lo, lo.new_tensor(large), small)

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        """The slope of the line through the origin on unstable neurons (CROWN's choice as the start)."""
        if not self.needs_bounds(lo, hi).any():
            return None
        return torch.as_tensor(self._origin_slope(lo, hi, cfg), dtype=lo.dtype).expand_as(lo)

    def project(self, param: Tensor) -> Tensor:
        return param.clamp(*self._slope_range())

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        return self.relaxer(lo, hi, cfg=cfg)(param)

    def relaxer(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Callable[[Tensor | None], Relaxation]:
        """Everything but the parameterised line through the origin is built once: an optimiser's step
        then costs one ``where`` per node instead of the dozen passes of the chord."""
        alpha = self.negative_slope
        unstable = self.needs_bounds(lo, hi)
        # stable neurons: the function is linear on the box, both lines are that piece (scalars broadcast by
        # ``where``: no full-size constants are built)
        piece, zero = torch.where(hi <= 0, lo.new_tensor(alpha), 1.0), torch.zeros_like(lo)
        if not unstable.any():
            exact = Relaxation(piece, zero, piece, zero)
            return lambda param=None: exact
        # the chord through (l, alpha l) and (u, u) on unstable neurons (width 1 elsewhere keeps the division
        # finite, and its gradient 0); ReLU's alpha l = 0 is left out of the sums, where it adds nothing
        width = torch.where(unstable, hi - lo, 1.0)
        chord_a = (hi - alpha * lo if alpha else hi) / width
        a_chord = torch.where(unstable, chord_a, piece)
        b_chord = torch.where(unstable, alpha * lo - chord_a * lo if alpha else -(chord_a * lo), 0.0)
        default: list[Tensor] = []

        def lines(param: Tensor | None = None) -> Relaxation:
            # any slope between the pieces' slopes gives a line through the origin on the far side of the
            # chord
            if param is None:
                if not default:
                    default.append(torch.where(unstable, self._origin_slope(lo, hi, cfg), piece))
                a_tangent = default[0]
            else:
                a_tangent = torch.where(unstable, param, piece)
            if alpha <= 1.0:  # convex: the chord lies above
                return Relaxation(a_tangent, zero, a_chord, b_chord)
            return Relaxation(a_chord, b_chord, a_tangent, zero)

        return lines


# ------------------------------------------------------------------------------------------------- ramp


@register
@dataclass(frozen=True)
class Ramp(Nonlinear):
    """ParamRamp (Lyu et al. 2021): ``f(h) = eta h`` below 0, ``h`` on [0, r], ``r + eta (h - r)`` above r,
    with 0 <= eta < 1 and r > 0 (see ``verifier.nn.ParamRamp``): increasing, piecewise linear, with a convex
    kink at 0 (slope eta to 1) and a concave kink at r (slope 1 to eta).

    ``breakpoint`` is the module's parameter itself when the graph is live: it is clamped and shaped at bound
    time (``ramp_breakpoint``), so bounds follow it and differentiate with respect to it.

    Lines on a box [l, u] (a box touching a kink only at an end lies in one piece: both lines are that piece):

    * crossing 0 only (l < 0 < u <= r): f is convex on the box, so the chord through (l, f(l)) and (u, f(u))
      lies above; below, a line through the origin with slope a in [eta, 1] (ReLU's rule): for h < 0,
      a h <= eta h because a >= eta; for 0 <= h <= u, a h <= h.
    * crossing r only (0 <= l < r < u): the mirror image. f is concave, so the chord lies below; above, a
      line through (r, r) with slope b in [eta, 1]: for h <= r, r + b (h - r) >= h because b <= 1; for h >= r,
      it is >= r + eta (h - r) because b >= eta.
    * crossing both (l < 0 < r < u): f is linear between l, 0, r, u, so a line lies above (below) f on the
      box when it does at these four points. Above: (0, 0) lies below the segment joining (l, f(l)) and
      (r, r) (convex kink), so a line through (r, r) lies above f iff it does at u (slope b >= eta) and at
      l (b <= (r - f(l)) / (r - l)). Below: (r, r) lies above the segment joining (0, 0) and (u, f(u))
      (concave kink), so a line through the origin lies below f iff it does at l (slope a >= eta) and at u
      (a <= f(u) / u). For u <= r (resp. l >= 0) the range of a (of b) is the [eta, 1] above.

    Both ranges are nonempty (the upper ends exceed eta because r > 0). The choice within each (CROWN's
    adaptive rule) minimises the area between line and f: a line through a kink touches f along the piece
    holding the box's midpoint, i.e. the steep end when the midpoint lies on the rising side of the kink.
    ``relu_lower="zero"`` takes eta for both, the outer pieces' slope (the lines IBP-like bounds would use).
    """

    breakpoint: Tensor
    eta: float = 0.0
    channel_dim: int | None = 1

    def forward(self, x: Tensor) -> Tensor:
        return param_ramp(x, self.breakpoint, self.eta, self.channel_dim)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)  # increasing (eta >= 0)

    def _crossing(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The breakpoint (broadcast to lo), and which boxes contain 0 and r in their interior."""
        r = ramp_breakpoint(self.breakpoint, lo, self.channel_dim).expand_as(lo)
        return r, (lo < 0) & (hi > 0), (lo < r) & (hi > r)

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        _, cross_zero, cross_r = self._crossing(lo, hi)
        return cross_zero | cross_r

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        r, cross_zero, cross_r = self._crossing(lo, hi)
        f_lo, f_hi = self.forward(lo), self.forward(hi)
        one, zero, eta = torch.ones_like(lo), torch.zeros_like(lo), self.eta * torch.ones_like(lo)
        # a box holding no kink inside lies in one piece: slope eta outside [0, r], 1 on it
        piece = (torch.where((hi <= 0) | (lo >= r), eta, one), torch.where(lo >= r, (1 - eta) * r, zero))
        # the chord: above f on a convex box (crossing 0 only), below on a concave one (crossing r only)
        chord_a = (f_hi - f_lo) / torch.where(cross_zero | cross_r, hi - lo, one)
        chord = (chord_a, f_lo - chord_a * lo)
        # lines through a kink; denominators are replaced where unused, so that gradients stay finite
        steep_zero = f_hi / torch.where(cross_zero, hi, one)  # from the origin to (u, f(u))
        steep_r = (r - f_lo) / torch.where(cross_r, r - lo, one)  # from (l, f(l)) to (r, r)
        flat = cfg.relu_lower == "zero"
        a = eta if flat else torch.where(hi > -lo, steep_zero, eta)
        b = eta if flat else torch.where(hi - r > r - lo, eta, steep_r)
        lower = [
            torch.where(cross_zero, k, torch.where(cross_r, c, p)) for k, c, p in zip((a, zero), chord, piece)
        ]
        upper = [
            torch.where(cross_r, k, torch.where(cross_zero, c, p))
            for k, c, p in zip((b, r - b * r), chord, piece)
        ]
        return Relaxation(*lower, *upper)


# --------------------------------------------------------------------------------------------- S-shaped


# per function: f, f' from (x, f(x)), and f'' from (x, f(x), f'(x)): the tangent lines need all three at
# one point, and sharing f(x) saves most of their cost
_FUNCTIONS = {
    "sigmoid": (torch.sigmoid, lambda x, y: y * (1 - y), lambda x, y, dy: dy * (1 - 2 * y)),
    "tanh": (torch.tanh, lambda x, y: 1 - y**2, lambda x, y, dy: -2 * y * dy),
    "erf": (
        torch.erf,
        lambda x, y: (2 / math.sqrt(math.pi)) * torch.exp(-(x**2)),
        lambda x, y, dy: -2 * x * dy,
    ),
}
# tangent points are searched in [0, 20] (a point beyond it found unsound gives a constant line, see
# ``_cross_line``); tanh and erf are flat in float64 well inside it (erf from about 6 on)
_SEARCH_SPAN = 20.0
_SEARCH_STEPS = 40


def _value_and_slope(function: str, x: Tensor) -> tuple[Tensor, Tensor]:
    f, df, _ = _FUNCTIONS[function]
    y = f(x)
    return y, df(x, y)


@register
@dataclass(frozen=True)
class SShaped(Nonlinear):
    """Sigmoid, Tanh or Erf: increasing, convex for h < 0, concave for h > 0.

    Convex box: chord above, tangent at the midpoint below; concave box: the mirror image. Box crossing
    zero: the upper line is the tangent at the point ``d >= 0`` whose tangent passes through (l, f(l))
    (the chord when ``d >= u``); any tangent point beyond ``d`` is also sound, so the search keeps the side
    of its bracket that is sound. The lower line is the mirror construction through (u, f(u)). Lines are
    computed in float64 and then widened by a few units of rounding of the working precision."""

    function: str = "sigmoid"
    curved_on_each_side_of_zero = True

    def forward(self, x: Tensor) -> Tensor:
        return _FUNCTIONS[self.function][0](x)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """``e_out = L e + IMPLEMENTATION_ULPS u`` (``lipschitz_error``; ``|f| <= 1`` for all three, and the
        fast implementations approximate with absolute rather than relative accuracy): ``L``
        is ``|f'|`` at the point of the widened box nearest to 0 (``f'`` is even and decreasing in |h|)."""
        ((lo, hi),), (e,) = bounds, errors
        nearest = torch.clamp(torch.zeros_like(lo), lo - e, hi + e)
        _, slope = _value_and_slope(self.function, nearest)
        slope = slope * (1 + 1e-6)  # covers the float64 evaluation of f'
        return lipschitz_error(slope, e, 1.0, IMPLEMENTATION_ULPS, fmt)

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        """Where the tangent lines touch, as fractions: [B, *shape, 2] (lower line, upper line) in [0, 1].

        On a convex (concave) box the lower (upper) line is the tangent at ``l + p (u - l)``: any point of
        the box gives a tangent below (above) f there. On a box crossing zero the line through the anchor is
        the tangent at ``t + p (far - t)``, ``t`` the sound end of the tangent-point search: every point
        between ``t`` and the far end is farther from zero than the exact tangent point ``d``, hence sound
        (see ``relax``). The defaults (midpoint, and ``t`` itself) are the unparameterised lines."""
        if not (lo < hi).any():
            return None
        crossing = ((lo < 0) & (hi > 0)).to(lo.dtype)
        start = 0.5 * (1 - crossing)
        return torch.stack([start, start], dim=-1)

    def project(self, param: Tensor) -> Tensor:
        return param.clamp(0.0, 1.0)

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        return self.relaxer(lo, hi, cfg=cfg)(param)

    def relaxer(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Callable[[Tensor | None], Relaxation]:
        """The chords and the tangent-point searches (``_SEARCH_STEPS`` bisection steps per crossing line)
        depend on the bounds alone: built once, each line as a ``_Line``, so that each parameter value costs
        only one tangent per line."""
        f = _FUNCTIONS[self.function][0]
        l, u = lo.double(), hi.double()
        fl, fu = f(l), f(u)
        degenerate = (u - l) < 1e-9
        chord_a = torch.where(
            degenerate, torch.zeros_like(l), (fu - fl) / torch.where(degenerate, 1.0, u - l)
        )
        zero = torch.zeros_like(l)
        convex, concave = u <= 0, l >= 0
        crossing = ~(convex | concave | degenerate)
        # a convex (concave) box: the tangent on [l, u] below (above), the chord above (below); a box
        # crossing zero: the line through one end tangent on the other side (``_cross_line``); a flat box:
        # the constant lines f(l) <= f(h) <= f(u) (f is increasing)
        on_box = _Line(self.function, torch.ones_like(degenerate), l, u - l, (zero, zero))
        above = _Line.fixed_line(self.function, chord_a, torch.where(degenerate, fu, fl - chord_a * l))
        below = _Line.fixed_line(self.function, chord_a, torch.where(degenerate, fl, fu - chord_a * u))
        upper = _Line.select(
            convex | degenerate,
            above,
            _Line.select(concave, on_box, _cross_line(self.function, l, u, True, crossing)),
        )
        lower = _Line.select(
            concave | degenerate,
            below,
            _Line.select(convex, on_box, _cross_line(self.function, u, l, False, crossing)),
        )
        default = self.initial_param(lo, hi, cfg)

        def lines(param: Tensor | None = None) -> Relaxation:
            if param is None:
                param = default
            if param is None:  # every box is a point: constant lines
                p_lo = p_up = torch.zeros_like(l)
            else:
                p_lo, p_up = param[..., 0].double(), param[..., 1].double()
            return _widened(*lower(p_lo), *upper(p_up), l, u, lo.dtype)

        return lines


@dataclass(frozen=True)
class _Line:
    """One relaxation line per neuron: where ``tangent`` holds, the tangent of f at ``base + p * span`` (p
    the neuron's parameter in [0, 1]); elsewhere the line ``fixed`` (slope, intercept), set by the bounds."""

    function: str
    tangent: Tensor
    base: Tensor
    span: Tensor
    fixed: tuple[Tensor, Tensor]

    @staticmethod
    def fixed_line(function: str, a: Tensor, b: Tensor) -> _Line:
        zero = torch.zeros_like(a)
        return _Line(function, torch.zeros_like(a, dtype=torch.bool), zero, zero, (a, b))

    @staticmethod
    def select(mask: Tensor, this: _Line, other: _Line) -> _Line:
        """``this`` where ``mask`` holds, else ``other``."""

        def pick(x: Tensor, y: Tensor) -> Tensor:
            return torch.where(mask, x, y)

        return _Line(this.function, pick(this.tangent, other.tangent), pick(this.base, other.base),
                     pick(this.span, other.span), (pick(this.fixed[0], other.fixed[0]),
                     pick(this.fixed[1], other.fixed[1])))  # fmt: skip

    def __call__(self, p: Tensor) -> tuple[Tensor, Tensor]:
        a, b = _tangent(self.function, self.base + p * self.span)
        return torch.where(self.tangent, a, self.fixed[0]), torch.where(self.tangent, b, self.fixed[1])


def _cross_line(function: str, anchor: Tensor, far: Tensor, upper: bool, crossing: Tensor) -> _Line:
    """The line through (anchor, f(anchor)) tangent to f on the other side of zero (sign s = +1 for the
    upper line, anchor l < 0; -1 for the lower line, anchor u > 0); the chord when the tangent point lies
    beyond ``far``. A bisection over [0, _SEARCH_SPAN] brackets the exact tangent point; its sound end
    ``t`` (farther from zero) starts the line, and the parameter moves the tangent point from ``t``
    towards ``far``, farther from zero, hence still sound. No sound point in the span: the constant line
    through f(far). The bisection runs on the boxes ``crossing`` zero alone (the others' lines are not
    read; in branch and bound it was a quarter of the time on the sigmoid net of eran_mnist)."""
    f = _FUNCTIONS[function][0]
    s = 1.0 if upper else -1.0
    f_anchor = f(anchor)
    searched, f_searched = anchor.detach()[crossing], f_anchor.detach()[crossing]

    def sound(t):  # the tangent at s*t passes on the right side of (anchor, f(anchor))
        y, slope = _value_and_slope(function, s * t)
        gap = y + slope * (searched - s * t) - f_searched
        return gap >= 0 if upper else gap <= 0

    near, far_t = torch.zeros_like(searched), torch.full_like(searched, _SEARCH_SPAN)
    for _ in range(_SEARCH_STEPS):
        mid = (near + far_t) / 2
        ok = sound(mid)
        far_t, near = torch.where(ok, mid, far_t), torch.where(ok, near, mid)
    found = torch.zeros_like(crossing)
    found[crossing] = sound(far_t)
    near = torch.zeros_like(anchor).index_put((crossing,), near)
    far_t = torch.full_like(anchor, _SEARCH_SPAN).index_put((crossing,), far_t)
    use_chord = near >= s * far  # even the unsound end lies beyond far: so does the exact tangent point
    span = far - anchor
    f_far = f(far)
    chord_a = (f_far - f_anchor) / torch.where(span == 0, 1.0, span)
    t = s * far_t
    fixed = (
        torch.where(use_chord, chord_a, torch.zeros_like(chord_a)),
        torch.where(use_chord, f_anchor - chord_a * anchor, f_far),
    )
    # the tangent point only ever moves away from zero
    return _Line(function, found & ~use_chord, t, s * (s * (far - t)).clamp(min=0), fixed)


class _Tangent(torch.autograd.Function):
    """Slope and intercept ``(f'(t), f(t) - f'(t) t)`` of the tangent of f at t, with the gradient
    ``f''(t) (g_slope - g_intercept t)`` written out: one evaluation of f, where autograd would record
    about ten float64 operations (the tangents were most of an alpha-CROWN step on sigmoid networks)."""

    @staticmethod
    def forward(ctx, t: Tensor, function: str) -> tuple[Tensor, Tensor]:
        y, slope = _value_and_slope(function, t)
        ctx.save_for_backward(t, _FUNCTIONS[function][2](t, y, slope))
        return slope, y - slope * t

    @staticmethod
    def backward(ctx, g_slope: Tensor, g_intercept: Tensor):
        t, curvature = ctx.saved_tensors
        return curvature * (g_slope - g_intercept * t), None


def _tangent(function: str, t: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the tangent of f at t (differentiable in t)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return _Tangent.apply(t, function)
    y, slope = _value_and_slope(function, t)
    return slope, y - slope * t


def _widened(a_lo, b_lo, a_up, b_up, l, u, dtype) -> Relaxation:
    """Cast float64 lines to ``dtype`` and move each intercept outward by a few roundings of ``dtype`` scaled
    to the size of the terms, so rounding in casting and in the caller's arithmetic cannot cut into f."""
    eps = torch.finfo(dtype).eps
    reach = torch.maximum(l.abs(), u.abs())
    slack_lo = 8 * eps * (1 + a_lo.abs() * reach + b_lo.abs())
    slack_up = 8 * eps * (1 + a_up.abs() * reach + b_up.abs())
    return Relaxation(
        a_lo.to(dtype), (b_lo - slack_lo).to(dtype), a_up.to(dtype), (b_up + slack_up).to(dtype)
    )

"""Products of two graph tensors: Mul (with broadcasting), and what the loader builds from it: Div by a
graph tensor (``x * y ** -1``) and MatMul of two graph tensors (a broadcast product summed over the shared
dimension).

The one rule is McCormick's. On the box ``x in [xl, xu]``, ``y in [yl, yu]``:

* ``(x - xl)(y - yl) >= 0`` and ``(xu - x)(yu - y) >= 0`` give the lower planes
  ``P1 = yl x + xl y - xl yl`` and ``P2 = yu x + xu y - xu yu``;
* ``(x - xl)(yu - y) >= 0`` and ``(xu - x)(y - yl) >= 0`` give the upper planes
  ``Q1 = yu x + xl y - xl yu`` and ``Q2 = yl x + xu y - xu yl``.

Any convex combination ``t P1 + (1 - t) P2`` (``t`` in [0, 1]) is again below ``x y`` on the box, and the
same holds above for the Q's: the two weights per output are the relaxation's free parameters
(alpha-CROWN). Every plane leaves the same area (volume) to ``x y`` over the box, so the default is the
middle, ``t = 1/2``, whose largest gap is the smallest. Planes are computed in float64 and their
intercepts moved outward by a few roundings, so they stay sound after the cast and the caller's arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.base import Broadcasting, JointRelaxation, Nonlinear, RelaxConfig, register
from verifier.ops.rounding import FloatFormat


@register
@dataclass(frozen=True)
class Product(Broadcasting, Nonlinear):
    """``z = x * y`` elementwise for two graph tensors. With ``out_shape``, inputs of the per-sample shapes
    ``in_shapes`` are broadcast to it (padded with unit dimensions on the left, as numpy does)."""

    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shape: tuple[int, ...] | None = None  # None: both inputs have the output's shape

    arity = 2

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.broadcast(0, x) * self.broadcast(1, y)

    def ibp(self, x_bounds, y_bounds) -> tuple[Tensor, Tensor]:
        """The extremes of a bilinear function over a box are at its corners. Rounding to nearest is
        monotone, so the rounded corner products also bound the rounded product of any point."""
        (xl, xu), (yl, yu) = [
            tuple(self.broadcast(i, t) for t in b) for i, b in enumerate((x_bounds, y_bounds))
        ]
        corners = torch.stack([xl * yl, xl * yu, xu * yl, xu * yu])
        return corners.min(0).values, corners.max(0).values

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """``x^ y^ - x y = x (y^ - y) + y (x^ - x) + (x^ - x)(y^ - y)``, and the product rounds once:
        ``|fl(x^ y^) - x y| <= |x| e_y + |y| e_x + e_x e_y + u |x^| |y^| + tiny`` with ``|x|, |y|`` the
        largest magnitudes of the real boxes and ``|x^| <= |x| + e_x`` (all broadcast to the output)."""
        (xl, xu), (yl, yu) = ([self.broadcast(i, t) for t in pair] for i, pair in enumerate(bounds))
        e_x, e_y = (self.broadcast(i, e) for i, e in enumerate(errors))
        size_x, size_y = torch.maximum(xl.abs(), xu.abs()), torch.maximum(yl.abs(), yu.abs())
        propagated = _times(size_x, e_y) + _times(size_y, e_x) + e_x * e_y
        return propagated + fmt.unit * (size_x + e_x) * (size_y + e_y) + fmt.tiny

    def initial_param(self, xl, xu, yl, yu, cfg: RelaxConfig) -> Tensor | None:
        """The weights (t of the lower planes, s of the upper ones), [B, 2, *out]: 1/2 each."""
        if not ((xl < xu).any() and (yl < yu).any()):
            return None  # one factor is constant everywhere: the planes are exact
        shape = self.broadcast(0, xl).shape
        return torch.full((shape[0], 2, *shape[1:]), 0.5, dtype=xl.dtype, device=xl.device)

    def project(self, param: Tensor) -> Tensor:
        return param.clamp(0.0, 1.0)

    def relax(self, xl, xu, yl, yu, cfg: RelaxConfig, param: Tensor | None = None) -> JointRelaxation:
        dtype = xl.dtype
        xl, xu, yl, yu = (self.broadcast(i // 2, t).double() for i, t in enumerate((xl, xu, yl, yu)))
        if param is None:
            t = s = 0.5
        else:
            weights = param.double().movedim(-1 - len(xl.shape[1:]), 0)  # [2, (R,) B, *out]
            t, s = weights[0], weights[1]
        ax_lo, ay_lo = t * yl + (1 - t) * yu, t * xl + (1 - t) * xu
        b_lo = -(t * xl * yl + (1 - t) * xu * yu)
        ax_up, ay_up = s * yu + (1 - s) * yl, s * xl + (1 - s) * xu
        b_up = -(s * xl * yu + (1 - s) * xu * yl)
        # what the casts to ``dtype`` and the caller's products and sums can round, scaled to the terms
        eps = torch.finfo(dtype).eps
        rx, ry = torch.maximum(xl.abs(), xu.abs()), torch.maximum(yl.abs(), yu.abs())
        slack_lo = 8 * eps * (1 + ax_lo.abs() * rx + ay_lo.abs() * ry + b_lo.abs())
        slack_up = 8 * eps * (1 + ax_up.abs() * rx + ay_up.abs() * ry + b_up.abs())
        cast = lambda v: v.to(dtype)
        return JointRelaxation(
            (cast(ax_lo), cast(ay_lo)),
            cast(b_lo - slack_lo),
            (cast(ax_up), cast(ay_up)),
            cast(b_up + slack_up),
        )


def _times(size: Tensor, error: Tensor) -> Tensor:
    """``size * error``, 0 where the error is 0 (an exact factor times an unbounded one propagates nothing)."""
    return torch.where(error > 0, size * error, 0.0)

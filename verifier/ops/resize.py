"""Resizing (ONNX Resize and Upsample, ``F.interpolate``, ``nn.Upsample``): nearest-neighbour resizing only
copies values, so it is a probed ``Rearrange`` (``verifier.ops.shape``); (bi/tri)linear resizing is the
affine :class:`Interpolate`. Cubic resizing is refused (see ``Interpolate``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from verifier.ops.base import Affine, register
from verifier.ops.rounding import FloatFormat, magnitude


@register
@dataclass(frozen=True)
class Interpolate(Affine):
    """Linear interpolation over the trailing 1, 2 or 3 dimensions, as ``F.interpolate`` computes it.

    Every output is a convex combination of inputs (products of the weights ``1 - t`` and ``t``, t in
    [0, 1]), so ``|J| = J``. Cubic interpolation has negative weights and has no rule here. The map is given
    by the output ``size``, or by the ``scale`` factors when those (not the sizes) place the samples."""

    mode: str  # "linear", "bilinear" or "trilinear"
    size: tuple[int, ...] | None = None
    scale: tuple[float, ...] | None = None
    align_corners: bool = False

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale, self.mode, self.align_corners)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self.forward(x)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self.forward(x)

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """Each output is ``sum_k w_k x_k`` over ``K = 2^d`` neighbours (d resized dimensions), ``w_k`` a
        product of one weight ``t`` or ``1 - t`` per dimension, ``t`` the fractional part of the source
        coordinate. Assumed computation (onnxruntime's and torch's): the coordinate with a few roundings,
        within ``8 u (n + 1)`` along a dimension of n inputs; ``t = c - floor(c)`` exact (Sterbenz); ``1 - t``
        within u; products and the sum in any order. With ``M`` the largest ``|x^|`` of the channel:

        * a coordinate moved by ``delta`` moves the output by at most ``2 M delta``: it is continuous and
          piecewise linear in each coordinate with slopes ``x_{j+1} - x_j`` (weighted by the others);
        * ``1 - t`` rounded changes each ``w_k`` by at most ``2 d u``: ``2 K d u M`` over the K terms;
        * the d + 1 factors of each term and the sum of K terms: ``gamma_{K+d}`` times the terms' sizes,
          at most ``J |x^|`` plus the two items above.

        So ``e_out = J e + gamma_{K+d} J |x^| + (1 + gamma_{K+d}) u M (sum_d 16 (n_d + 1) + 2 K d) +
        (K + d) tiny``."""
        ((lo, hi),), (e,) = bounds, errors
        d = lo.dim() - 2  # resized dimensions: every one after the batch and channel dimensions
        spatial = lo.shape[-d:]
        terms = 2**d + d
        gamma = fmt.gamma(terms)
        size = magnitude((lo, hi), e)
        largest = size.amax(dim=tuple(range(-d, 0)), keepdim=True)  # M per sample and channel
        coefficient = sum(16 * (n + 1) for n in spatial) + 2 * 2**d * d
        weights = (1 + gamma) * fmt.unit * coefficient * largest
        return self.forward(e) + gamma * self.forward(size) + weights + terms * fmt.tiny

"""Pooling: average pooling (affine, non-negative weights) and max pooling (relaxed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.ops.base import Affine, Nonlinear, Relaxation, RelaxConfig, register
from verifier.ops.rounding import FloatFormat

_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d}


@register
@dataclass(frozen=True)
class AvgPool(Affine):
    """Average pooling over the trailing 1 or 2 dimensions: a linear map with non-negative weights."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = True

    def forward(self, x: Tensor) -> Tensor:
        pool = _AVG[len(self.kernel)]
        return pool(x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self.forward(x)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        # the window's sum, the division by its count, and the rounding of 1 / count if applied as a product
        return math.prod(self.kernel) + 2

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self.forward(x)


@register
@dataclass(frozen=True)
class MaxPool(Nonlinear):
    """Max pooling (2-d, or 1-d as 2-d with a height of 1). Relaxation of ``y = max_k x_k`` over a window, with ``j`` the input of largest lower
    bound: ``x_j <= y`` always; ``y <= x_j`` when ``l_j >= u_k`` for every other k (then y = x_j), and
    ``y <= max_k u_k`` otherwise."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    one_d: bool = False  # input [B, C, L], pooled as [B, C, 1, L]

    def _pool(self, x4: Tensor) -> Tensor:
        return F.max_pool2d(x4, self.kernel, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x.unsqueeze(2)).squeeze(2) if self.one_d else self._pool(x)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)  # max is monotone in each argument

    def rounding_error(self, bounds, errors, fmt: FloatFormat) -> Tensor:
        """The max is exact and 1-Lipschitz in the max norm: ``|max_k x^_k - max_k x_k| <= max_k e_k``,
        the same pooling applied to the errors."""
        return self.forward(errors[0])

    def _windows(self, x: Tensor, fill: float) -> Tensor:
        """[B, C, H, W] -> [B, C, K, L]: the K entries of each of the L windows (padding = ``fill``)."""
        ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph), value=fill)
        cols = F.unfold(x, self.kernel, self.dilation, 0, self.stride)
        return cols.reshape(x.shape[0], x.shape[1], -1, cols.shape[-1])

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        out_shape = (lo.shape[0], lo.shape[1]) + self.forward(lo[:1, :1]).shape[2:]
        if self.one_d:  # flat positions of [C, 1, L] are those of [C, L]
            lo, hi = lo.unsqueeze(2), hi.unsqueeze(2)
        b, c, h, w = lo.shape
        positions = torch.arange(c * h * w, device=lo.device, dtype=torch.float64).reshape(1, c, h, w)
        pos = self._windows(positions, -1.0)[0].long()  # [C, K, L]
        lw, uw = self._windows(lo, float("-inf")), self._windows(hi, float("-inf"))
        l_best, k_best = lw.max(dim=2, keepdim=True)
        others = uw.scatter(2, k_best, float("-inf")).amax(dim=2, keepdim=True)
        dominant = (l_best >= others).squeeze(2)
        index = pos.unsqueeze(0).expand(b, -1, -1, -1).gather(2, k_best).squeeze(2)  # [B, C, L]
        one, zero = torch.ones_like(dominant, dtype=lo.dtype), torch.zeros_like(dominant, dtype=lo.dtype)
        a_up = torch.where(dominant, one, zero)
        b_up = torch.where(dominant, zero, uw.amax(dim=2))
        shape = lambda t: t.reshape(out_shape)
        return Relaxation(shape(one), shape(zero), shape(a_up), shape(b_up), index.reshape(b, -1))

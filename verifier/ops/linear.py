"""Affine operators with weights: Linear (Gemm, MatMul by a constant), LeftLinear (a constant matrix times a
graph tensor), elementwise scale-and-shift
(Add/Sub/Mul/Div by a constant, Neg, inference BatchNorm) and the sum of graph tensors (residuals)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.ops.base import Affine, Broadcasting, Weighted, register, unbounded_where_nan


@register
@dataclass(frozen=True)
class Linear(Weighted, Affine):
    """``y = x W^T + b`` over the last dimension (torch.nn.Linear convention, W: [out, in])."""

    weight: Tensor
    bias: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.abs())

    def offset(self) -> Tensor | None:
        return self.bias

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return a @ self.weight

    def jacobian_rows(self, positions: Tensor, out_shape: tuple[int, ...]) -> Tensor | None:
        """Rows of W, for a vector output (over more dimensions, a row sits at one place of the input)."""
        return self.weight[positions] if len(out_shape) == 1 else None

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        return self.weight.shape[1] + 1  # a dot product of in_features terms, plus the bias


@register
@dataclass(frozen=True)
class LeftLinear(Weighted, Affine):
    """``y = W x`` over the second-to-last dimension (``W @ x``, W: [out, in], x: [..., in, m]): every column
    of x mapped by W. Its transpose is ``W^T a``, its absolute map ``|W| x``."""

    weight: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(self.weight, x)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return torch.matmul(self.weight, x)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return torch.matmul(self.weight.abs(), x)

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return torch.matmul(self.weight.T, a)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        return self.weight.shape[1]  # a dot product of in terms


@register
@dataclass(frozen=True)
class ScaleShift(Affine):
    """``y = x * scale + shift`` elementwise, with constants broadcast against the input."""

    scale: Tensor | None = None
    shift: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._broadcast(x if self.scale is None else x * self.scale)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._broadcast(x if self.scale is None else x * self.scale.abs())

    def maps_boxes_to_boxes(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
        return in_shape == out_shape  # a broadcasting shift copies coordinates

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        """Coordinatewise: the images of the ends, ordered (exact; an infinite end stays infinite on its
        side instead of meeting inf - inf)."""
        a, b = (self.forward(t) for t in bounds)
        return unbounded_where_nan(torch.minimum(a, b), torch.maximum(a, b))

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        # x * s + t is two roundings; a division x / c stored as s = fl(1 / c) adds one: |fl(x / c) - x s|
        # <= |x / c| u + |x| |1 / c - s| <= 2u |x s| (1 + u), so gamma_3 (|s x| + |t|) covers all three
        return 3

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        if tuple(a.shape[1:]) != tuple(in_shape):  # a shift broadcast the input: sum over the copies
            return super().transpose(i, a, in_shape)
        return a if self.scale is None else a * self.scale

    def _broadcast(self, y: Tensor) -> Tensor:
        """A shift may broadcast the input to a larger shape: the linear part must have that shape too."""
        if self.shift is None:
            return y
        return y.expand(torch.broadcast_shapes(y.shape, self.shift.shape))

    def offset(self) -> Tensor | None:
        return self.shift


@register
@dataclass(frozen=True)
class Sum(Broadcasting, Affine):
    """``y = sum_i sign_i * x_i`` for graph tensors (residual Add, Sub). With ``out_shape``, inputs of other
    per-sample shapes ``in_shapes`` are broadcast to it (padded with unit dimensions on the left, as
    numpy broadcasting does), e.g. ``x - mean(x)`` of a normalisation."""

    signs: tuple[float, ...] = (1.0, 1.0)
    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shape: tuple[int, ...] | None = None  # None: every input has the output's shape

    @property
    def arity(self) -> int:  # type: ignore[override]
        return len(self.signs)

    def forward(self, *xs: Tensor) -> Tensor:
        return sum(s * self.broadcast(i, x) for i, (s, x) in enumerate(zip(self.signs, xs)))

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self.signs[i] * self.broadcast(i, x)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return abs(self.signs[i]) * self.broadcast(i, x)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        return len(self.signs)  # k - 1 additions of exactly negated (or not) inputs

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return self.signs[i] * self.unbroadcast(i, a)  # the adjoint of a broadcast: a sum over the copies


@register
@dataclass(frozen=True, eq=False)
class BatchNorm(Affine):
    """A live BatchNorm module (graphs loaded with ``live=True``): ``x * scale + shift`` per channel (dim 1)
    with ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``, read from the
    module at every use, so that bounds follow its parameters and statistics and differentiate with
    respect to gamma and beta. ``with_batch_statistics`` gives the training-mode map of one batch."""

    module: nn.Module  # nn.BatchNorm1d / 2d / 3d with running statistics
    rank: int  # per-sample input rank (channels first)

    def _affine(self, mean: Tensor, invstd: Tensor) -> ScaleShift:
        m = self.module
        scale = invstd
        if m.weight is not None:
            scale = scale * m.weight
        shift = -mean * scale if m.bias is None else m.bias - mean * scale
        return ScaleShift(scale=scale, shift=shift)

    def to(self, device=None, dtype=None) -> BatchNorm:
        """Itself when its module is already there (a live graph moved with its module), else an op over a
        moved copy of the module."""
        stats = self.module.running_var
        device = None if device is None else torch.device(device)
        same_device = device is None or (
            device.type == stats.device.type and device.index in (None, stats.device.index)
        )
        if same_device and dtype in (None, stats.dtype):
            return self
        return BatchNorm(copy.deepcopy(self.module).to(device=device, dtype=dtype), self.rank)

    def _channels(self, op: ScaleShift) -> ScaleShift:
        shape = (-1,) + (1,) * (self.rank - 1)
        return ScaleShift(op.scale.reshape(shape), op.shift.reshape(shape))

    def _map(self) -> ScaleShift:
        m = self.module
        return self._channels(self._affine(m.running_mean, torch.rsqrt(m.running_var + m.eps)))

    def forward(self, x: Tensor) -> Tensor:
        return self._map().forward(x)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._map().linear(i, x)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._map().abs_linear(i, x)

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return a * self._map().scale

    def offset(self) -> Tensor | None:
        return self._map().shift

    def maps_boxes_to_boxes(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
        return True

    def with_batch_statistics(self, x: Tensor) -> tuple[Tensor, ScaleShift]:
        """Training-mode BatchNorm of the batch x: ``(y, op)`` with op the per-channel affine map of the
        batch's mean and (biased) variance, ``y = op(x)``, both differentiable with respect to x and the
        module's parameters (through torch's fused kernels, see ``_BatchStatistics``). Updates the module's
        running statistics as torch does (running_var with the unbiased variance), when the module is in
        training mode."""
        m = self.module
        y, mean, invstd = _BatchStatistics.apply(x, m.weight, m.bias, m.eps)
        if m.training and m.track_running_stats:
            with torch.no_grad():
                m.num_batches_tracked.add_(1)
                momentum = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
                n = x.numel() / x.shape[1]
                # the variance back from (var + eps)^(-1/2): to a few ulps of var + eps, the only way the
                # running variance is used (torch's own update, the running statistics passed to the kernel,
                # would give nan for n = 1)
                var = (invstd.detach().pow(-2) - m.eps).clamp_(min=0)
                m.running_mean.lerp_(mean.detach(), momentum)
                m.running_var.lerp_(var * n / max(n - 1, 1), momentum)
        return y, self._channels(self._affine(mean, invstd))


class _BatchStatistics(torch.autograd.Function):
    """``(y, mean, invstd)`` of training-mode BatchNorm of x [B, C, *]: the normalised output
    ``y = (x - mean) * invstd * weight + bias`` and the batch's per-channel mean and inverse standard
    deviation ``invstd = (var + eps)^(-1/2)`` (var biased), all three differentiable: the output and its
    gradient come from torch's fused kernels (one pass each way instead of the four of the formula), and
    the gradients arriving through the statistics (a bounded view's affine maps) are added analytically.
    With M = B * prod(*) values per channel: d mean / d x_i = 1 / M, and since d var / d x_i =
    2 (x_i - mean) / M (the mean's own variation sums to zero), d invstd / d x_i = -invstd^3 (x_i - mean) / M.
    Once differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # statistics unused (no bounds, as at eps = 0): no pass over x
        return y, mean, invstd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_mean: Tensor, grad_invstd: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, ctx.eps, [need_x, need_weight, need_bias]
        )
        if need_x and (grad_mean is not None or grad_invstd is not None):
            # plus the statistics' part, affine in x per channel: grad_x += a + b x
            grad_mean, grad_invstd = (
                torch.zeros_like(mean) if g is None else g for g in (grad_mean, grad_invstd)
            )
            count, shape = x.numel() / x.shape[1], (-1,) + (1,) * (x.dim() - 2)
            b = grad_invstd * invstd.pow(3) / -count
            a = grad_mean / count - b * mean
            grad_x = grad_x.addcmul_(x, b.reshape(shape)).add_(a.reshape(shape))
        return grad_x, grad_weight, grad_bias, None

"""Convolutions (1-d and 2-d; stride, padding, dilation, groups) and 2-d transposed convolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from verifier.ops.base import Affine, converts, register
from verifier.ops.linear import ConversionError

_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_INPUT_GRAD = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input}


@register
@dataclass(frozen=True)
class Conv(Affine):
    """``y = conv(x, W) + b`` with zero padding; the backward step is the transposed convolution."""

    weight: Tensor  # [out_channels, in_channels / groups, *kernel]
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        return _CONV[w.dim() - 2](x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._conv(x, self.weight)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._conv(x, self.weight.abs())

    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape((-1,) + (1,) * (self.weight.dim() - 2))

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        grad = _CONV_INPUT_GRAD[self.weight.dim() - 2]
        return grad(
            (a.shape[0], *in_shape), self.weight, a, self.stride, self.padding, self.dilation, self.groups
        )


@register
@dataclass(frozen=True)
class ConvTranspose(Affine):
    """``y = conv_transpose2d(x, W) + b``; its backward step is the ordinary convolution with W."""

    weight: Tensor  # [in_channels, out_channels / groups, kh, kw]
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    def _convt(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        return F.conv_transpose2d(
            x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._convt(x, self.weight, self.bias)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._convt(x, self.weight)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._convt(x, self.weight.abs())

    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape(-1, 1, 1)

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        return F.conv2d(a, self.weight, None, self.stride, self.padding, self.dilation, self.groups)


def _check_padding_mode(module) -> None:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ConversionError(f"convolution with padding {module.padding!r} / mode {module.padding_mode!r}")


@converts(nn.Conv1d, nn.Conv2d)
def _conv(call) -> Conv:
    m = call.target
    _check_padding_mode(m)
    bias = None if m.bias is None else m.bias.detach()
    return Conv(m.weight.detach(), bias, tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)


@converts(nn.ConvTranspose2d)
def _conv_transpose(call) -> ConvTranspose:
    m = call.target
    _check_padding_mode(m)
    bias = None if m.bias is None else m.bias.detach()
    return ConvTranspose(
        m.weight.detach(),
        bias,
        tuple(m.stride),
        tuple(m.padding),
        tuple(m.output_padding),
        tuple(m.dilation),
        m.groups,
    )


@converts(F.conv1d, F.conv2d)
def _conv_function(call) -> Conv:
    weight = call.const(1, "weight")
    dims = weight.dim() - 2
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
    padding = call.const(4, "padding", 0)
    if isinstance(padding, str):
        raise ConversionError(f"convolution with padding {padding!r}")
    return Conv(weight.detach(), None if call.const(2, "bias", None) is None else call.const(2, "bias").detach(),
                tup(call.const(3, "stride", 1)), tup(padding), tup(call.const(5, "dilation", 1)),
                call.const(6, "groups", 1))  # fmt: skip

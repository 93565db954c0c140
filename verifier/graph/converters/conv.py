"""Translations into the convolutions of ``verifier.ops.conv``: nn.Conv1d / Conv2d and F.conv1d / conv2d
(ONNX Conv), nn.ConvTranspose1d / ConvTranspose2d and F.conv_transpose1d / conv_transpose2d (ONNX
ConvTranspose; output padding, dilation, groups)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, converts
from verifier.ops.conv import Conv, ConvTranspose


def _check_padding_mode(module) -> None:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ConversionError(f"convolution with padding {module.padding!r} / mode {module.padding_mode!r}")


@converts(nn.Conv1d, nn.Conv2d, onnx=("Conv",))
def _conv(call) -> Conv:
    m = call.target
    _check_padding_mode(m)
    return Conv(call.param(m.weight), call.param(m.bias), tuple(m.stride), tuple(m.padding), tuple(m.dilation),
                m.groups)  # fmt: skip


@converts(nn.ConvTranspose1d, nn.ConvTranspose2d, onnx=("ConvTranspose",))
def _conv_transpose(call) -> ConvTranspose:
    m = call.target
    _check_padding_mode(m)
    return ConvTranspose(
        call.param(m.weight),
        call.param(m.bias),
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
    return Conv(call.param(weight), call.param(call.const(2, "bias", None)),
                tup(call.const(3, "stride", 1)), tup(padding), tup(call.const(5, "dilation", 1)),
                call.const(6, "groups", 1))  # fmt: skip


@converts(F.conv_transpose1d, F.conv_transpose2d)
def _conv_transpose_function(call) -> ConvTranspose:
    weight = call.const(1, "weight")
    dims = weight.dim() - 2
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
    return ConvTranspose(call.param(weight), call.param(call.const(2, "bias", None)),
                         tup(call.const(3, "stride", 1)), tup(call.const(4, "padding", 0)),
                         tup(call.const(5, "output_padding", 0)), tup(call.const(7, "dilation", 1)),
                         call.const(6, "groups", 1))  # fmt: skip

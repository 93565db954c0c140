"""Resizing (ONNX Resize and Upsample, ``F.interpolate``, ``nn.Upsample``): nearest-neighbour resizing only
copies values, so it is a probed :class:`Rearrange`; (bi/tri)linear resizing is the affine
:class:`Interpolate`. Cubic resizing is refused (see ``Interpolate``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.ops.base import Affine, Onnx2TorchClass, converts, register
from verifier.ops.linear import ConversionError
from verifier.ops.rounding import FloatFormat, magnitude
from verifier.ops.shape import probe_rearrangement

# onnx2torch's module, named without importing it (see ``Onnx2TorchClass``)
OnnxResize = Onnx2TorchClass("resize", "OnnxResize")

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}  # by the number of resized dimensions


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


def _resize(call, mode: str, scale, align_corners, by_size: bool) -> Affine:
    """The operator of a resize: ``scale`` the factors (None when sizes are given, or when the call
    recomputes the factors from the sizes: ``by_size``)."""
    if mode in ("nearest", "nearest-exact"):
        return probe_rearrangement(call)
    if mode not in _LINEAR.values():
        raise ConversionError(f"{mode} interpolation (only nearest and linear interpolation have rules)")
    if not call.batched:
        raise ConversionError("linear resizing in a model without a batch dimension")
    spatial = tuple(call.out_shape[1:])
    if scale is None or by_size:
        op = Interpolate(mode, spatial, None, bool(align_corners))
    else:
        scale = scale if isinstance(scale, (tuple, list)) else (scale,) * len(spatial)
        op = Interpolate(mode, None, tuple(float(s) for s in scale), bool(align_corners))
    x = torch.randn(1, *call.in_shapes[0], dtype=torch.float64)
    if not torch.allclose(op.forward(x), call.run_per_sample(x).double().unsqueeze(0)):
        raise ConversionError("resize not reproduced by F.interpolate")  # e.g. a coordinate mode torch lacks
    return op


@converts(F.interpolate)
def _interpolate(call) -> Affine:
    if call.const(6, "antialias", False):
        raise ConversionError("interpolation with antialias")
    mode = call.const(3, "mode", "nearest")
    recompute = bool(call.const(5, "recompute_scale_factor", None))
    return _resize(
        call, mode, call.const(2, "scale_factor", None), call.const(4, "align_corners", None), recompute
    )


@converts(nn.Upsample)
def _upsample(call) -> Affine:
    m = call.target
    return _resize(call, m.mode, m.scale_factor, m.align_corners, bool(m.recompute_scale_factor))


@converts(OnnxResize)
def _onnx_resize(call) -> Affine:
    """onnx2torch's Resize: scales or sizes [N, C, *spatial] as inputs (constants), the mode an attribute."""
    m = call.target
    dims = len(call.in_shapes[0]) - 1
    if m.onnx_mode == "linear" and dims not in _LINEAR:
        raise ConversionError(f"linear resizing of {dims} dimensions")
    mode = _LINEAR[dims] if m.onnx_mode == "linear" else m.onnx_mode
    scales = call.const(2, "scales", None)
    scales = scales.tolist()[2:] if isinstance(scales, Tensor) and scales.numel() else None
    return _resize(call, mode, scales, m.align_corners, by_size=False)

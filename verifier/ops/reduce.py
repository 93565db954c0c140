"""Sums and means over constant dimensions (ReduceSum, ReduceMean, ``x.sum(dim)``, ``torch.mean``): one
affine :class:`Reduce`, a sum times a constant scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.base import Affine, Onnx2TorchClass, converts, register
from verifier.ops.linear import ConversionError

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxReduceStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceStaticAxes")
OnnxReduceSumStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceSumStaticAxes")
OnnxReduceSumDynamicAxes = Onnx2TorchClass("reduce", "OnnxReduceSumDynamicAxes")


@register
@dataclass(frozen=True)
class Reduce(Affine):
    """``y = scale * sum of x over dims``: a sum (scale 1) or a mean (scale 1 / number of terms).

    ``dims`` are per-sample dimensions, sorted (0 is the first dimension after the row dimension)."""

    dims: tuple[int, ...]
    keepdim: bool = False
    scale: float = 1.0

    def _sum(self, x: Tensor) -> Tensor:
        return x.sum(dim=[d + 1 for d in self.dims], keepdim=self.keepdim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(0, x)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._sum(x) * self.scale

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._sum(x) * abs(self.scale)

    def ibp(self, bounds) -> tuple[Tensor, Tensor]:
        """A sum of one sign: the sums of the ends (exact, and infinite ends stay meaningful: a sum of
        exponentials is at least the sum of their lower bounds even when some upper bound overflows)."""
        lo, hi = (self.linear(0, t) for t in bounds)
        return (lo, hi) if self.scale >= 0 else (hi, lo)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        terms = math.prod(in_shape[d] for d in self.dims)
        return terms if self.scale == 1.0 else terms + 2  # a mean: the division and the rounded scale 1 / n

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        """Each input coordinate enters one sum with weight ``scale``: broadcast the sums back."""
        if not self.keepdim:
            for d in self.dims:  # ascending: each earlier dimension is back in place
                a = a.unsqueeze(d + 1)
        return a.expand(a.shape[0], *in_shape) * self.scale


def _reduce(call, dims, keepdim: bool, mean: bool) -> Reduce:
    """The Reduce of a call summing (or averaging) over ``dims`` (None or empty: every dimension), given in
    the call's own numbering (with the batch dimension when batched)."""
    shape = call.in_shapes[0]
    rank = len(shape) + call.batched
    dims = range(rank) if dims is None or (not isinstance(dims, int) and len(dims) == 0) else dims
    dims = sorted({int(d) % rank for d in ([dims] if isinstance(dims, int) else dims)})
    if call.batched and 0 in dims:
        raise ConversionError("reduction over the batch dimension")
    dims = tuple(d - call.batched for d in dims)
    scale = 1.0 / math.prod(shape[d] for d in dims) if mean else 1.0
    return Reduce(dims, bool(keepdim), scale)


@converts(torch.sum, "sum", torch.mean, "mean")
def _reduce_function(call) -> Reduce:
    if call.kwargs.get("dtype") is not None:
        raise ConversionError("reduction with a dtype")
    mean = call.target in (torch.mean, "mean")
    return _reduce(call, call.const(1, "dim", None), call.const(2, "keepdim", False), mean)


@converts(OnnxReduceStaticAxes)
def _onnx_reduce(call) -> Reduce:
    kind = call.target.operation_type
    if kind not in ("ReduceSum", "ReduceMean"):
        raise ConversionError(f"{kind} is not affine")
    return _reduce(call, call.target.axes, call.target.keepdims, kind == "ReduceMean")


@converts(OnnxReduceSumStaticAxes, OnnxReduceSumDynamicAxes)
def _onnx_reduce_sum(call) -> Reduce | None:
    """ReduceSum from opset 13 on, its axes an input (a constant one here, whichever module holds it)."""
    m = call.target
    axes = m._axes if Onnx2TorchClass.of(type(m)) == OnnxReduceSumStaticAxes else call.const(1, "axes", None)
    axes = axes.tolist() if isinstance(axes, Tensor) else axes
    if not axes and m._noop_with_empty_axes:
        return None  # no axes, and the attribute asking for the identity then
    return _reduce(call, axes, m._keepdims, mean=False)

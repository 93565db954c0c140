"""Translations into :class:`verifier.ops.reduce.Reduce`: ``torch.sum`` / ``torch.mean`` (and the methods),
ONNX ReduceSum and ReduceMean over constant axes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.ops.reduce import Reduce

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxReduceStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceStaticAxes")
OnnxReduceSumStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceSumStaticAxes")
OnnxReduceSumDynamicAxes = Onnx2TorchClass("reduce", "OnnxReduceSumDynamicAxes")


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


@converts(OnnxReduceStaticAxes, onnx=("ReduceMean", "ReduceSum"))
def _onnx_reduce(call) -> Reduce:
    kind = call.target.operation_type
    if kind not in ("ReduceSum", "ReduceMean"):
        raise ConversionError(f"{kind} is not affine")
    return _reduce(call, call.target.axes, call.target.keepdims, kind == "ReduceMean")


@converts(OnnxReduceSumStaticAxes, OnnxReduceSumDynamicAxes, onnx=("ReduceSum",))
def _onnx_reduce_sum(call) -> Reduce | None:
    """ReduceSum from opset 13 on, its axes an input (a constant one here, whichever module holds it)."""
    m = call.target
    axes = m._axes if Onnx2TorchClass.of(type(m)) == OnnxReduceSumStaticAxes else call.const(1, "axes", None)
    axes = axes.tolist() if isinstance(axes, Tensor) else axes
    if not axes and m._noop_with_empty_axes:
        return None  # no axes, and the attribute asking for the identity then
    return _reduce(call, axes, m._keepdims, mean=False)

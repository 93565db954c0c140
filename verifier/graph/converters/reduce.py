"""Translations into :class:`verifier.ops.reduce.Reduce`: ``torch.sum`` / ``torch.mean`` (and the methods),
ONNX ReduceSum and ReduceMean over constant axes; and ReduceMax / ReduceMin (``torch.amax``, ``x.max(dim)``
values, ONNX ReduceMax / ReduceMin) as max pooling: a reduction is a pooling whose window is the whole of
the reduced axes (:func:`reduce_max`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.graph.converters.base import Composite, ConversionError, Onnx2TorchClass, Steps, converts
from verifier.ops.linear import ScaleShift
from verifier.ops.pooling import MaxPool
from verifier.ops.reduce import Reduce
from verifier.ops.shape import Rearrange

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxReduceStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceStaticAxes")
OnnxReduceSumStaticAxes = Onnx2TorchClass("reduce", "OnnxReduceSumStaticAxes")
OnnxReduceSumDynamicAxes = Onnx2TorchClass("reduce", "OnnxReduceSumDynamicAxes")


def _sample_dims(call, dims) -> tuple[int, ...]:
    """``dims`` (None or empty: every dimension), given in the call's own numbering (with the batch
    dimension when batched), as sorted per-sample dimensions."""
    rank = len(call.in_shapes[0]) + call.batched
    dims = range(rank) if dims is None or (not isinstance(dims, int) and len(dims) == 0) else dims
    dims = sorted({int(d) % rank for d in ([dims] if isinstance(dims, int) else dims)})
    if call.batched and 0 in dims:
        raise ConversionError("reduction over the batch dimension")
    return tuple(d - call.batched for d in dims)


def _reduce(call, dims, keepdim: bool, mean: bool) -> Reduce:
    """The Reduce of a call summing (or averaging) over ``dims`` (see ``_sample_dims``)."""
    shape = call.in_shapes[0]
    dims = _sample_dims(call, dims)
    scale = 1.0 / math.prod(shape[d] for d in dims) if mean else 1.0
    return Reduce(dims, bool(keepdim), scale)


@converts(torch.sum, "sum", torch.mean, "mean")
def _reduce_function(call) -> Reduce:
    if call.kwargs.get("dtype") is not None:
        raise ConversionError("reduction with a dtype")
    mean = call.target in (torch.mean, "mean")
    return _reduce(call, call.const(1, "dim", None), call.const(2, "keepdim", False), mean)


@converts(OnnxReduceStaticAxes, onnx=("ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum"))
def _onnx_reduce(call) -> Reduce | Composite:
    kind, m = call.target.operation_type, call.target
    if kind in ("ReduceMax", "ReduceMin"):
        return reduce_max(call, m.axes, m.keepdims, kind == "ReduceMin")
    if kind not in ("ReduceSum", "ReduceMean"):
        raise ConversionError(f"{kind} has no bound rules")
    return _reduce(call, m.axes, m.keepdims, kind == "ReduceMean")


def reduce_max(call, dims, keepdim: bool, minimum: bool = False) -> Composite:
    """The largest (smallest) entry over ``dims`` (see ``_sample_dims``): the kept dimensions flattened
    into M rows and the reduced ones into K columns, ``[1, M, K]``, max pooled by windows ``(1, K)``, then
    shaped as the output; the minimum is ``-max(-x)`` (exact negations around it)."""
    shape = tuple(call.in_shapes[0])
    dims = _sample_dims(call, dims)
    kept = tuple(d for d in range(len(shape)) if d not in dims)
    rows, width = math.prod(shape[d] for d in kept), math.prod(shape[d] for d in dims)
    out = tuple(1 if d in dims else n for d, n in enumerate(shape) if keepdim or d not in dims)
    steps = Steps([shape], call.out_dtype)
    negate = ScaleShift(scale=torch.tensor(-1.0, dtype=call.out_dtype))
    x = steps.add(negate, 0) if minimum else 0
    order = torch.arange(math.prod(shape)).reshape(shape).permute(*kept, *dims).flatten()
    x = steps.add(Rearrange((len(order),), (1, rows, width), order), x)
    x = steps.add(MaxPool((1, width), (1, width), (0, 0)), x)
    x = steps.add(Rearrange((rows,), out), x)
    if minimum:
        steps.add(negate, x)
    return steps.done()


@converts(torch.amax, "amax", torch.amin, "amin")
def _amax(call) -> Composite:
    minimum = call.target in (torch.amin, "amin")
    return reduce_max(call, call.const(1, "dim", ()), call.const(2, "keepdim", False), minimum)


@converts(OnnxReduceSumStaticAxes, OnnxReduceSumDynamicAxes, onnx=("ReduceSum",))
def _onnx_reduce_sum(call) -> Reduce | None:
    """ReduceSum from opset 13 on, its axes an input (a constant one here, whichever module holds it)."""
    m = call.target
    axes = m._axes if Onnx2TorchClass.of(type(m)) == OnnxReduceSumStaticAxes else call.const(1, "axes", None)
    axes = axes.tolist() if isinstance(axes, Tensor) else axes
    if not axes and m._noop_with_empty_axes:
        return None  # no axes, and the attribute asking for the identity then
    return _reduce(call, axes, m._keepdims, mean=False)

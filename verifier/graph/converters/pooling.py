"""Translations into the pooling operators of ``verifier.ops.pooling``: average pooling (modules, functions,
ONNX AveragePool and GlobalAveragePool) and max pooling (ONNX MaxPool)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.ops.pooling import AvgPool, MaxPool

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxGlobalAveragePool = Onnx2TorchClass("global_average_pool", "OnnxGlobalAveragePool")
OnnxGlobalAveragePoolWithKnownInputShape = Onnx2TorchClass(
    "global_average_pool", "OnnxGlobalAveragePoolWithKnownInputShape"
)


@converts(nn.AvgPool1d, nn.AvgPool2d, onnx=("AveragePool",))
def _avg_pool(call) -> AvgPool:
    m = call.target
    if getattr(m, "divisor_override", None):
        raise ConversionError("average pooling with divisor_override")
    dims = len(call.in_shapes[0]) - 1
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
    return AvgPool(
        tup(m.kernel_size), tup(m.stride), tup(m.padding), bool(m.ceil_mode), bool(m.count_include_pad)
    )


@converts(F.avg_pool1d, F.avg_pool2d)
def _avg_pool_function(call) -> AvgPool:
    dims = len(call.in_shapes[0]) - 1
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
    kernel = call.const(1, "kernel_size")
    stride = call.const(2, "stride", None)
    if call.const(6, "divisor_override", None) is not None:  # (avg_pool1d has 6 arguments at most)
        raise ConversionError("average pooling with divisor_override")
    return AvgPool(tup(kernel), tup(kernel if stride in (None, []) else stride), tup(call.const(3, "padding", 0)),
                   bool(call.const(4, "ceil_mode", False)), bool(call.const(5, "count_include_pad", True)))  # fmt: skip


@converts(OnnxGlobalAveragePool, OnnxGlobalAveragePoolWithKnownInputShape, onnx=("GlobalAveragePool",))
def _global_avg_pool(call) -> AvgPool:
    spatial = tuple(call.in_shapes[0][1:])
    if len(spatial) not in (1, 2):  # AvgPool pools one or two trailing dimensions
        raise ConversionError(f"global average pooling over {len(spatial)} dimensions")
    return AvgPool(spatial, spatial, (0,) * len(spatial))


@converts(nn.MaxPool1d, nn.MaxPool2d, onnx=("MaxPool",))
def _max_pool(call) -> MaxPool:
    m = call.target
    return _max_pool_op(isinstance(m, nn.MaxPool1d), m.kernel_size, m.stride, m.padding, m.dilation,
                        m.ceil_mode, m.return_indices)  # fmt: skip


@converts(F.max_pool1d, F.max_pool2d)
def _max_pool_function(call) -> MaxPool:
    kernel = call.const(1, "kernel_size")
    args = [call.const(k, n, d) for k, n, d in ((2, "stride", None), (3, "padding", 0), (4, "dilation", 1),
                                                  (5, "ceil_mode", False), (6, "return_indices", False))]  # fmt: skip
    return _max_pool_op(call.target is F.max_pool1d, kernel, *args)


def _max_pool_op(one_d, kernel, stride, padding, dilation, ceil_mode, return_indices) -> MaxPool:
    if ceil_mode or return_indices:
        raise ConversionError("max pooling with ceil_mode or returned indices")
    stride = kernel if stride is None or stride == [] else stride
    if one_d:  # 1-d pooling as 2-d over a height of 1
        one = lambda v, pad=1: (pad, v[0] if isinstance(v, (tuple, list)) else v)
        return MaxPool(one(kernel), one(stride), one(padding, 0), one(dilation), one_d=True)
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return MaxPool(pair(kernel), pair(stride), pair(padding), pair(dilation))

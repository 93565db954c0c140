"""Softmax, LogSoftmax and LayerNorm, translated into operators that already have bound rules (a
:class:`Composite`), each step bounded on its own by the engine.

* ``softmax(x)_i = 1 / (1 + sum_{j != i} exp(x_j - x_i))``: the differences are one exact linear map, so
  the correlation between numerator and denominator is never lost; the sum is at least 1, so the
  reciprocal is taken on a positive box. ``log_softmax(x)_i = -log(1 + sum_{j != i} exp(x_j - x_i))``.
* ``layer_norm(x) = c / sqrt(mean(c^2) + eps) * w + b`` with ``c = x - mean(x)`` (one exact linear map):
  a square, a mean, ``(. + eps) ** -0.5`` on a positive box and a product of two graph tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import Composite, ConversionError, Onnx2TorchClass, Steps, converts
from verifier.graph.converters.product import product
from verifier.ops.elementwise import Exp, Log, Power
from verifier.ops.linear import Linear, ScaleShift
from verifier.ops.reduce import Reduce
from verifier.ops.shape import Rearrange

OnnxSoftmaxV1V11 = Onnx2TorchClass("activations", "OnnxSoftmaxV1V11")
OnnxLayerNorm = Onnx2TorchClass("layer_norm", "OnnxLayerNorm")


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


def _moved(steps: Steps, k: int, source: int, destination: int) -> int:
    """Node k with its per-sample dimension ``source`` moved to ``destination`` (a Rearrange; k itself when
    nothing moves)."""
    shape = steps.shape(k)
    rank = len(shape)
    if source % rank == destination % rank:
        return k
    index = torch.arange(_numel(shape)).reshape(shape).movedim(source, destination)
    return steps.add(Rearrange((_numel(shape),), tuple(index.shape), index.flatten()), k)


def _reshaped(steps: Steps, k: int, shape: tuple[int, ...]) -> int:
    return (
        k
        if steps.shape(k) == tuple(shape)
        else steps.add(Rearrange((_numel(steps.shape(k)),), tuple(shape)), k)
    )


def _softmax_last(steps: Steps, k: int, log: bool) -> int:
    """(Log)softmax of node k over its last dimension."""
    shape = steps.shape(k)
    n = shape[-1]
    if n == 1:  # softmax of one entry is 1, its log 0
        value = torch.tensor(0.0 if log else 1.0, dtype=steps.dtype)
        return steps.add(ScaleShift(torch.zeros((), dtype=steps.dtype), value), k)
    # row (i, m) of the difference map: x_j - x_i for the m-th j != i
    others = torch.tensor([[j for j in range(n) if j != i] for i in range(n)])  # [n, n - 1]
    diff = torch.zeros(n, n - 1, n, dtype=steps.dtype)
    diff.scatter_(2, others.unsqueeze(2), 1.0)
    diff[torch.arange(n), :, torch.arange(n)] = -1.0
    d = steps.add(Linear(diff.reshape(n * (n - 1), n)), k)
    d = _reshaped(steps, d, (*shape[:-1], n, n - 1))
    total = steps.add(Reduce((len(shape),)), steps.add(Exp(), d))  # [..., n]
    total = steps.add(ScaleShift(shift=torch.tensor(1.0, dtype=steps.dtype)), total)  # the j = i term: exp(0)
    if not log:
        return steps.add(Power(-1.0), total)
    return steps.add(ScaleShift(scale=torch.tensor(-1.0, dtype=steps.dtype)), steps.add(Log(), total))


def softmax(
    shape: tuple[int, ...], axis: int, log: bool, dtype: torch.dtype, flatten: bool = False
) -> Composite:
    """(Log)softmax over the per-sample dimension ``axis`` of a tensor of per-sample ``shape``; with
    ``flatten`` over all dimensions from ``axis`` on taken as one (ONNX Softmax before opset 13)."""
    steps = Steps([shape], dtype)
    rank = len(shape)
    if flatten:
        x = _reshaped(steps, 0, (*shape[:axis], _numel(shape[axis:])))
        _reshaped(steps, _softmax_last(steps, x, log), shape)
    else:
        y = _softmax_last(steps, _moved(steps, 0, axis, rank - 1), log)
        _moved(steps, y, rank - 1, axis)
    return steps.done()


def layer_norm(shape: tuple[int, ...], m: int, eps: float, weight, bias, dtype: torch.dtype) -> Composite:
    """LayerNorm of a tensor of per-sample ``shape`` over its last ``m`` dimensions."""
    steps = Steps([shape], dtype)
    n = _numel(shape[len(shape) - m :])
    x = _reshaped(steps, 0, (*shape[: len(shape) - m], n))
    centring = torch.eye(n, dtype=dtype) - 1.0 / n
    c = steps.add(Linear(centring), x)
    rank = len(steps.shape(c))
    var = steps.add(Reduce((rank - 1,), keepdim=True, scale=1.0 / n), steps.add(Power(2.0), c))
    scale = steps.add(Power(-0.5), steps.add(ScaleShift(shift=torch.tensor(eps, dtype=dtype)), var))
    y = steps.add(product([steps.shape(c), steps.shape(scale)]), c, scale)
    y = _reshaped(steps, y, shape)
    if weight is not None or bias is not None:
        steps.add(ScaleShift(weight, bias), y)
    return steps.done()


# ------------------------------------------------------------------------------------------ converters


def _axis(call, dim) -> int:
    """A dimension of the call's tensor as a per-sample dimension."""
    rank = len(call.in_shapes[0]) + call.batched
    if dim is None:
        raise ConversionError("softmax without a dimension")
    d = int(dim) % rank
    if call.batched and d == 0:
        raise ConversionError("softmax over the batch dimension")
    return d - call.batched


@converts(nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax",
          "log_softmax", onnx=("LogSoftmax", "Softmax"))  # fmt: skip
def _softmax(call) -> Composite:
    target = call.target
    if isinstance(target, nn.Module):
        dim, log = target.dim, isinstance(target, nn.LogSoftmax)
    else:
        dim = call.const(1, "dim", None)
        log = target in (F.log_softmax, torch.log_softmax, "log_softmax")
    return softmax(call.in_shapes[0], _axis(call, dim), log, call.out_dtype)


@converts(OnnxSoftmaxV1V11, onnx=("LogSoftmax", "Softmax"))
def _onnx_softmax(call) -> Composite:
    axis = _axis(call, call.target.axis)
    return softmax(call.in_shapes[0], axis, call.target.is_log, call.out_dtype, flatten=True)


@converts(nn.LayerNorm, onnx=("LayerNormalization",))
def _layer_norm_module(call) -> Composite:
    ln = call.target
    m = len(ln.normalized_shape)
    return layer_norm(
        call.in_shapes[0], m, ln.eps, call.param(ln.weight), call.param(ln.bias), call.out_dtype
    )


@converts(F.layer_norm)
def _layer_norm_function(call) -> Composite:
    m = len(call.const(1, "normalized_shape"))
    weight, bias = call.const(2, "weight", None), call.const(3, "bias", None)
    eps = call.const(4, "eps", 1e-5)
    return layer_norm(call.in_shapes[0], m, eps, call.param(weight), call.param(bias), call.out_dtype)


@converts(OnnxLayerNorm, onnx=("LayerNormalization",))
def _onnx_layer_norm(call) -> Composite:
    shape = call.in_shapes[0]
    axis = _axis(call, call.target.axis)
    weight, bias = call.const(1, "scale"), call.const(2, "bias", None)
    return layer_norm(shape, len(shape) - axis, call.target.epsilon, weight.detach(),
                      None if bias is None else bias.detach(), call.out_dtype)  # fmt: skip

"""Translations into the piecewise-linear functions of ``verifier.ops.piecewise``: Abs, and Clip with
constant ends (``torch.clamp`` / ``torch.clip``, hardtanh, ReLU6, ONNX Clip); the elementwise Max / Min of
graph tensors and constants (``torch.maximum``, ``torch.max(x, y)``, ONNX Max / Min, any number of operands)
as ReLUs between exact sums (:func:`elementwise_max`); and ``torch.max`` / ``torch.min`` / the methods,
which are also reductions (``x.max(dim)``: the values; ``converters.reduce.reduce_max``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import Composite, ConversionError, Onnx2TorchClass, Steps, converts
from verifier.graph.converters.product import broadcast_shape
from verifier.graph.converters.reduce import reduce_max
from verifier.ops.activations import ReLU
from verifier.ops.linear import ScaleShift, Sum
from verifier.ops.piecewise import Abs, Clip


@converts(torch.abs, "abs", onnx=("Abs",))
def _abs(call) -> Abs:
    return Abs()


def _constant_end(value, name: str) -> float | None:
    """A clamp end as a number (None, or infinite, which clamps nothing: no end), from a number or a
    one-element tensor."""
    if value is None:
        return None
    if not isinstance(value, (int, float)):
        value = torch.as_tensor(value).detach()
        if value.numel() != 1:
            raise ConversionError(f"clamp with a {name} that is not one constant")
    value = float(value)
    return value if math.isfinite(value) else None


def _clip(low, high) -> Clip:
    if low is None and high is None:
        raise ConversionError("clamp without min and max")
    if low is not None and high is not None and not low < high:
        raise ConversionError(f"clamp with min {low} not below max {high}")
    return Clip(low, high)


@converts(torch.clamp, torch.clip, "clamp", "clip")
def _clamp(call) -> Clip:
    if call.data_positions != [0]:
        raise ConversionError("clamp needs a graph tensor as input and constant min / max")
    low, high = call.const(1, "min", None), call.const(2, "max", None)
    return _clip(_constant_end(low, "min"), _constant_end(high, "max"))


@converts(nn.Hardtanh, nn.ReLU6, F.hardtanh, F.relu6, Onnx2TorchClass("clip", "OnnxClip"), onnx=("Clip",))
def _hardtanh(call) -> Clip:
    m = call.target
    if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return _clip(float(m.min_val), float(m.max_val))
    if isinstance(m, nn.Module):  # onnx2torch's OnnxClip
        return _clip(_constant_end(m.min_val, "min"), _constant_end(m.max_val, "max"))
    if m is F.relu6:
        return Clip(0.0, 6.0)
    return _clip(float(call.const(1, "min_val", -1.0)), float(call.const(2, "max_val", 1.0)))


# ------------------------------------------------------------------------------------ elementwise max, min


def _sum(steps: Steps, signs: tuple[float, float], x: int, y: int) -> int:
    shapes = [steps.shape(x), steps.shape(y)]
    out = broadcast_shape(shapes, "max / min")
    same = all(tuple(s) == out for s in shapes)
    return steps.add(Sum(signs) if same else Sum(signs, tuple(map(tuple, shapes)), out), x, y)


def _pair(steps: Steps, x: int, y: int, minimum: bool) -> int:
    """``max(x, y) = y + relu(x - y)``, ``min(x, y) = x - relu(x - y)`` of two graph tensors."""
    r = steps.add(ReLU(), _sum(steps, (1.0, -1.0), x, y))
    return _sum(steps, (1.0, -1.0), x, r) if minimum else _sum(steps, (1.0, 1.0), r, y)


def _with_constant(steps: Steps, x: int, c: torch.Tensor, minimum: bool) -> int:
    """``max(x, c) = c + relu(x - c)``, ``min(x, c) = c - relu(c - x)``."""
    sign = torch.tensor(-1.0 if minimum else 1.0, dtype=c.dtype)
    r = steps.add(ReLU(), steps.add(ScaleShift(scale=sign, shift=-sign * c), x))
    return steps.add(ScaleShift(scale=sign, shift=c), r)


def elementwise_max(call, positions: list[int], minimum: bool) -> Composite:
    """Max (min) of the call's arguments at ``positions`` (graph tensors and constants), numpy broadcasting.

    Translated as ReLUs between exact linear maps rather than as an operator of its own: a ReLU of ``x - y``
    is exactly the relaxation a dedicated two-input rule would use (the planes ``y <= max <= chord``), and
    as a ReLU node it gets alpha-CROWN's slope and branch-and-bound's splits at ``x = y`` for free."""
    data = [call.data_positions.index(k) for k in positions if k in call.data_positions]
    consts = [torch.as_tensor(call.args[k]).detach() for k in positions if k not in call.data_positions]
    if not data:
        raise ConversionError("max / min without a graph tensor")
    steps = Steps(call.in_shapes, call.out_dtype)
    acc = data[0]
    for k in data[1:]:
        acc = _pair(steps, acc, k, minimum)
    if consts:
        c = consts[0].to(call.out_dtype)
        for other in consts[1:]:
            c = (torch.minimum if minimum else torch.maximum)(c, other.to(call.out_dtype))
        acc = _with_constant(steps, acc, c, minimum)
    if not steps.steps:  # the max of one graph tensor is itself: an exact copy keeps the Composite whole
        steps.add(ScaleShift(shift=torch.tensor(0.0, dtype=call.out_dtype)), acc)
    return steps.done()


@converts(torch.maximum, torch.minimum, torch.fmax, torch.fmin)
def _maximum(call) -> Composite:
    return elementwise_max(call, [0, 1], call.target in (torch.minimum, torch.fmin))


@converts(torch.max, torch.min, "max", "min")
def _max(call) -> Composite:
    """``max(x, y)`` (a tensor as second operand), ``max(x, dim, keepdim)`` (the values; not the indices)
    and ``max(x)`` (every entry, over the batch too when batched: refused there)."""
    minimum = call.target in (torch.min, "min")
    if len(call.args) > 1 and (1 in call.data_positions or isinstance(call.args[1], torch.Tensor)):
        return elementwise_max(call, [0, 1], minimum)
    dim = call.const(1, "dim", None)
    if dim is None:
        return reduce_max(call, None, False, minimum)
    if call.item != 0:
        raise ConversionError("the indices of max / min (argmax) have no bound rules")
    return reduce_max(call, dim, call.const(2, "keepdim", False), minimum)


@converts(Onnx2TorchClass("min_max", "OnnxMinMax"), onnx=("Max", "Min"))
def _onnx_max(call) -> Composite:
    return elementwise_max(call, list(range(len(call.args))), call.target._operator is torch.amin)

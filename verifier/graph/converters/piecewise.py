"""Translations into the piecewise-linear functions of ``verifier.ops.piecewise``: Abs, and Clip with
constant ends (``torch.clamp`` / ``torch.clip``, hardtanh, ReLU6, ONNX Clip)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
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

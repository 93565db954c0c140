"""Translations into the convex / concave functions of ``verifier.ops.elementwise``: Exp, Log, Softplus and
Power with a constant exponent (also spelled Sqrt and Reciprocal)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.ops.elementwise import Exp, Log, Power, Softplus

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxPow = Onnx2TorchClass("pow", "OnnxPow")
OnnxSqrt = Onnx2TorchClass("pow", "OnnxSqrt")
OnnxReciprocal = Onnx2TorchClass("reciprocal", "OnnxReciprocal")


@converts(torch.exp, "exp", onnx=("Exp",))
def _exp(call) -> Exp:
    return Exp()


@converts(torch.log, "log", onnx=("Log",))
def _log(call) -> Log:
    return Log()


@converts(torch.sqrt, "sqrt", OnnxSqrt, onnx=("Sqrt",))
def _sqrt(call) -> Power:
    return Power(0.5)


@converts(torch.reciprocal, "reciprocal", OnnxReciprocal, onnx=("Reciprocal",))
def _reciprocal(call) -> Power:
    return Power(-1.0)


@converts(nn.Softplus, F.softplus, onnx=("Softplus",))
def _softplus(call) -> Softplus:
    if isinstance(call.target, nn.Module):
        beta, threshold = call.target.beta, call.target.threshold
    else:
        beta, threshold = call.const(1, "beta", 1.0), call.const(2, "threshold", 20.0)
    if not beta > 0:
        raise ConversionError(f"Softplus with beta {beta} (only beta > 0 is supported)")
    return Softplus(float(beta), float(threshold))


@converts(torch.pow, operator.pow, "pow", OnnxPow, onnx=("Pow",))
def _pow(call) -> Power:
    """A graph tensor raised to one constant exponent (a number, or a tensor whose entries are all equal)."""
    if call.data_positions != [0]:
        raise ConversionError("Pow needs a graph tensor as base and a constant exponent")
    e = call.args[1] if len(call.args) > 1 else call.kwargs.get("exponent")
    e = torch.as_tensor(e).detach().flatten()
    if e.numel() == 0 or not (e == e[0]).all():
        raise ConversionError("Pow with an exponent that differs between entries")
    return Power(float(e[0]))

"""Translations into the activations of ``verifier.ops.activations``: ReLU / LeakyReLU, ParamRamp (kept whole
by the fx tracer, see ``fx_import._Tracer``), Sigmoid / Tanh / Erf, and onnx2torch's generic elementwise
module, which goes to the converter of its torch function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converter_for, converts
from verifier.nn import ParamRamp
from verifier.ops.activations import Ramp, ReLU, SShaped
from verifier.ops.base import Nonlinear


@converts(nn.ReLU, F.relu, torch.relu, "relu", onnx=("Relu",))
def _relu(call) -> ReLU:
    return ReLU()


@converts(nn.LeakyReLU, F.leaky_relu, onnx=("LeakyRelu",))
def _leaky_relu(call) -> ReLU:
    slope = (
        call.target.negative_slope
        if isinstance(call.target, nn.Module)
        else call.const(1, "negative_slope", 0.01)
    )
    if slope < 0:
        raise ConversionError("LeakyReLU with a negative slope is not monotone")
    return ReLU(float(slope))


@converts(ParamRamp)
def _param_ramp(call) -> Ramp:
    """The module's own breakpoint parameter (``Call.param``): shaped and clamped by the op at bound time."""
    m = call.target
    return Ramp(call.param(m.r), m.eta, m.channel_dim)


@converts(nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid", onnx=("Sigmoid",))
def _sigmoid(call) -> SShaped:
    return SShaped("sigmoid")


@converts(nn.Tanh, torch.tanh, F.tanh, "tanh", onnx=("Tanh",))
def _tanh(call) -> SShaped:
    return SShaped("tanh")


@converts(torch.erf, torch.special.erf, "erf", Onnx2TorchClass("activations", "OnnxErf"), onnx=("Erf",))
def _erf(call) -> SShaped:
    return SShaped("erf")


@converts(Onnx2TorchClass("functions", "OnnxFunction"))
def _onnx_function(call) -> Nonlinear:
    """onnx2torch's generic elementwise module (ONNX Tanh, Exp, Log, ...): converted as its torch function."""
    convert = converter_for(call.target.function)
    if convert is None:
        raise ConversionError(f"elementwise function {getattr(call.target.function, '__name__', '?')}")
    return convert(call)

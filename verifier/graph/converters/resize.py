"""Translations of resizing (ONNX Resize and Upsample, ``F.interpolate``, ``nn.Upsample``): nearest-neighbour
resizing is a probed :class:`Rearrange`, (bi/tri)linear resizing the affine :class:`Interpolate` (checked
against the original operator); other modes are refused."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.graph.converters.shape import probe_rearrangement
from verifier.ops.base import Affine
from verifier.ops.resize import Interpolate

# onnx2torch's module, named without importing it (see ``Onnx2TorchClass``)
OnnxResize = Onnx2TorchClass("resize", "OnnxResize")

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}  # by the number of resized dimensions


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


# ONNX Upsample (opset < 10) reaches onnx2torch as Resize: the loader lifts older opsets to 17
@converts(OnnxResize, onnx=("Resize", "Upsample"))
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

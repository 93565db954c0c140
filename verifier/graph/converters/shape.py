"""Translations into data movement (``verifier.ops.shape``): every operator that only moves, copies or pads
values is one :class:`Rearrange` found by probing the original operator (``probe_rearrangement``); Identity,
Dropout (inference) and float Casts are aliases and produce no node at all."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.ops.shape import Rearrange

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxCast = Onnx2TorchClass("cast", "OnnxCast")
OnnxConcat = Onnx2TorchClass("concat", "OnnxConcat")
OnnxCopyIdentity = Onnx2TorchClass("identity", "OnnxCopyIdentity")
OnnxDropoutDynamic = Onnx2TorchClass("dropout", "OnnxDropoutDynamic")
OnnxExpand = Onnx2TorchClass("expand", "OnnxExpand")
OnnxFlatten = Onnx2TorchClass("flatten", "OnnxFlatten")
OnnxGather = Onnx2TorchClass("gather", "OnnxGather")
OnnxPadDynamic = Onnx2TorchClass("pad", "OnnxPadDynamic")
OnnxPadStatic = Onnx2TorchClass("pad", "OnnxPadStatic")
OnnxReshape = Onnx2TorchClass("reshape", "OnnxReshape")
OnnxSlice = Onnx2TorchClass("slice", "OnnxSlice")
OnnxSliceV9 = Onnx2TorchClass("slice", "OnnxSliceV9")
OnnxSplit = Onnx2TorchClass("split", "OnnxSplit")
OnnxSplit13 = Onnx2TorchClass("split", "OnnxSplit13")
OnnxSqueezeDynamicAxes = Onnx2TorchClass("squeeze", "OnnxSqueezeDynamicAxes")
OnnxSqueezeStaticAxes = Onnx2TorchClass("squeeze", "OnnxSqueezeStaticAxes")
OnnxTile = Onnx2TorchClass("tile", "OnnxTile")
OnnxTranspose = Onnx2TorchClass("transpose", "OnnxTranspose")
OnnxUnsqueezeDynamicAxes = Onnx2TorchClass("unsqueeze", "OnnxUnsqueezeDynamicAxes")
OnnxUnsqueezeStaticAxes = Onnx2TorchClass("unsqueeze", "OnnxUnsqueezeStaticAxes")


def probe_rearrangement(call) -> Rearrange:
    """Run the original operator on inputs holding their own flat positions (offset per input), then with
    NaN inputs: outputs that stay finite are constants (padding); the others must be exact positions."""
    sizes = tuple(int(torch.Size(s).numel()) for s in call.in_shapes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    probes = [(start + torch.arange(n, dtype=torch.float64)).reshape(call.probe_shape(i))
              for i, (start, n) in enumerate(zip(starts, sizes))]  # fmt: skip
    positions = call.run_per_sample(*probes).double().flatten()
    nans = call.run_per_sample(*[torch.full_like(p, float("nan")) for p in probes]).double().flatten()
    moved = torch.isnan(nans)
    rounded = positions.round()
    if (moved & ((rounded != positions) | (rounded < 0) | (rounded >= sum(sizes)))).any():
        raise ConversionError("operator is not a pure data movement")
    if (~moved & ~torch.isfinite(nans)).any():  # e.g. a -inf pad before a max pool: no finite bound
        raise ConversionError("pads with an infinite value")
    index = torch.where(moved, rounded, -1.0).long()
    fill = torch.where(moved, 0.0, nans)
    out_shape = tuple(call.out_shape)
    if len(sizes) == 1 and fill.eq(0).all() and moved.all() and torch.equal(index, torch.arange(sizes[0])):
        return Rearrange(sizes, out_shape)
    has_fill = (~moved).any() and fill.ne(0).any()
    return Rearrange(sizes, out_shape, index, fill.to(torch.get_default_dtype()) if has_fill else None)


_MOVES = (
    nn.Flatten, OnnxFlatten, torch.flatten, "flatten", OnnxReshape, torch.reshape, "reshape", "view",
    OnnxTranspose, torch.permute, "permute", torch.transpose, "transpose", OnnxConcat, torch.cat, torch.concat,
    OnnxSliceV9, OnnxSlice, operator.getitem, OnnxGather, OnnxSqueezeStaticAxes, OnnxSqueezeDynamicAxes,
    torch.squeeze, "squeeze", OnnxUnsqueezeStaticAxes, OnnxUnsqueezeDynamicAxes, torch.unsqueeze, "unsqueeze",
    OnnxPadStatic, OnnxPadDynamic, F.pad, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, OnnxExpand, "expand", OnnxTile,
    "repeat", OnnxSplit, OnnxSplit13, torch.split, "split", torch.chunk, "chunk", torch.unbind, "unbind",
)  # fmt: skip


@converts(*_MOVES, onnx=("Concat", "Expand", "Flatten", "Gather", "Pad", "Reshape", "Slice", "Split", "Squeeze",
                        "Tile", "Transpose", "Unsqueeze"))  # fmt: skip
def _rearrange(call) -> Rearrange:
    return probe_rearrangement(call)


@converts(nn.Identity, OnnxCopyIdentity, nn.Dropout, OnnxDropoutDynamic, F.dropout, "contiguous", "float", OnnxCast,
          onnx=("Cast", "Dropout", "Identity"))  # fmt: skip
def _alias(call) -> None:
    if not call.out_dtype.is_floating_point:
        raise ConversionError(f"cast of a graph tensor to {call.out_dtype}")

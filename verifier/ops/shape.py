"""Data movement: every operator that only moves, copies or pads values (Flatten, Reshape, Transpose,
Concat, Slice, Split, Gather with constant indices, Squeeze/Unsqueeze, Pad, Expand, Tile, nearest Resize) is
one :class:`Rearrange`, an index map found by running the original operator once on an index tensor (each
used piece of a Split on its own).
Identity, Dropout (inference) and float Casts are aliases and produce no node at all."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.ops.base import Affine, Onnx2TorchClass, converts, register
from verifier.ops.linear import ConversionError

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


@register
@dataclass(frozen=True)
class Rearrange(Affine):
    """``y.flat[j] = cat(x_0.flat, x_1.flat, ...)[index[j]]``, or the constant ``fill[j]`` where index < 0.

    ``index`` None means the identity order: a pure reshape. Shapes are per sample."""

    sizes: tuple[int, ...]  # flat size of each input
    out_shape: tuple[int, ...]
    index: Tensor | None = None  # [n_out] long
    fill: Tensor | None = None  # [n_out], used where index < 0

    @property
    def arity(self) -> int:  # type: ignore[override]
        return len(self.sizes)

    def maps_boxes_to_boxes(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
        """No input position is read twice."""
        if self.index is None:
            return True
        read = self.index[self.index >= 0]
        return read.unique().numel() == read.numel()

    def _local(self, i: int) -> tuple[Tensor, Tensor]:
        """Positions in input i read by each output, and the mask of outputs that read input i."""
        start = sum(self.sizes[:i])
        valid = (self.index >= start) & (self.index < start + self.sizes[i])
        return (self.index - start).clamp(0, self.sizes[i] - 1), valid

    def forward(self, *xs: Tensor) -> Tensor:
        y = sum(self.linear(i, x) for i, x in enumerate(xs))
        return y if self.fill is None else y + self.offset()

    def linear(self, i: int, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self.index is not None:
            local, valid = self._local(i)
            flat = flat[:, local] * valid.to(flat.dtype)
        return flat.reshape(x.shape[0], *self.out_shape)

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self.linear(i, x)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        return 0  # copies values and writes the fill constant: no arithmetic

    def offset(self) -> Tensor | None:
        return (
            None if self.fill is None else torch.where(self.index < 0, self.fill, 0.0).reshape(self.out_shape)
        )

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        flat = a.reshape(a.shape[0], -1)
        if self.index is not None:
            local, valid = self._local(i)
            out = flat.new_zeros(flat.shape[0], self.sizes[i])
            flat = out.index_add_(1, local[valid], flat[:, valid])
        return flat.reshape(a.shape[0], *in_shape)

    def to(self, device=None, dtype=None) -> Rearrange:
        index = None if self.index is None else self.index.to(device)
        fill = None if self.fill is None else self.fill.to(device, dtype)
        return Rearrange(self.sizes, self.out_shape, index, fill)


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


@converts(*_MOVES)
def _rearrange(call) -> Rearrange:
    return probe_rearrangement(call)


@converts(
    nn.Identity, OnnxCopyIdentity, nn.Dropout, OnnxDropoutDynamic, F.dropout, "contiguous", "float", OnnxCast
)
def _alias(call) -> None:
    if not call.out_dtype.is_floating_point:
        raise ConversionError(f"cast of a graph tensor to {call.out_dtype}")

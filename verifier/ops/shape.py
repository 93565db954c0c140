"""Data movement: every operator that only moves, copies or pads values (Flatten, Reshape, Transpose,
Concat, Slice, Split, Gather with constant indices, Squeeze/Unsqueeze, Pad, Expand, Tile, nearest Resize) is
one :class:`Rearrange`, an index map the loader finds by running the original operator once on an index
tensor (each used piece of a Split on its own)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.ops.base import Affine, register


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
        y = self.linear(0, xs[0])  # a pure reshape is a view: no pass over the data
        for i, x in enumerate(xs[1:], start=1):
            y = y + self.linear(i, x)
        return y if self.fill is None else y + self.offset()

    def ibp(self, *bounds: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Exact and coordinatewise: every output is a copy of one input coordinate or a constant, so the
        map of the lower ends and that of the upper ends bound it (no centre and radius passes)."""
        return self.forward(*(lo for lo, _ in bounds)), self.forward(*(hi for _, hi in bounds))

    def linear(self, i: int, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self.index is not None:
            local, valid = self._local(i)
            flat = torch.where(valid, flat[:, local], 0.0)  # not a product: an infinite end stays out of
            # the positions that other inputs (or constants) fill, instead of becoming inf * 0 = nan there
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

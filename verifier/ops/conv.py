"""Convolutions and transposed convolutions (1-d and 2-d; stride, padding, dilation, groups).

The CROWN step of a convolution is its transpose, and the transpose of a strided convolution scatters each
coefficient over a window of the input: torch's ``convolution_backward`` does that slowly when the input
has few channels (the first layers of a CNN). Instead we split the input positions along each spatial axis
by their residue modulo the stride (their *phase*): within a phase, every position receives the same
kernel taps from coefficients at fixed offsets, so all phases at once are ONE stride-1 forward convolution
of the coefficients with a rearranged kernel, whose output channels are ``(in_channel, phase_h, phase_w)``.
Its result lives on a *phase grid*, ``[N, C_in, stride_h * stride_w * Gh * Gw]``: each phase is a
``Gh x Gw`` rectangle, some of whose cells fall outside the input (they hold values of no coordinate and
are dropped, or weighted by zero). :class:`_PhasePlan` maps cells to input positions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.ops.base import Affine, Weighted, register

_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d}


def _axis(k: int, s: int, p: int, d: int, n_in: int, n_out: int):
    """One spatial axis of the phase split: ``(taps, (pad_left, pad_right), positions)``.

    Forward ``y[i] = sum_u w[u] x[s i + d u - p]``: input ``m = s T + P`` receives ``w[u] y_bar[T + o]``
    for each tap u with ``P + p - d u = s o``. Cell t of phase P stands for ``T = t + base - lo_P`` (lo_P:
    the phase's smallest offset o, base: the smallest over phases), so every phase reads its taps from one
    window ``y_bar[t + base + j]``, j < window. ``taps[P][j]``: the tap at window place j (-1: none);
    ``positions[P][t]``: the input position of cell t (-1: outside the input)."""
    offsets = {u: ((d * u - p) % s, ((d * u - p) % s + p - d * u) // s) for u in range(k)}
    lo = [min((o for q, o in offsets.values() if q == P), default=0) for P in range(s)]
    base = min(lo)
    window = max(o - lo[q] for q, o in offsets.values()) + 1
    taps = [[-1] * window for _ in range(s)]
    for u, (q, o) in offsets.items():
        taps[q][o - lo[q]] = u
    count = [len(range(P, n_in, s)) for P in range(s)]  # input positions of each phase
    grid = max(count[P] + lo[P] - base for P in range(s))
    positions = [[s * (t + base - lo[P]) + P if 0 <= t + base - lo[P] < count[P] else -1 for t in range(grid)]
                 for P in range(s)]  # fmt: skip
    return taps, (-base, grid + window - 1 - n_out + base), positions


@dataclass(frozen=True)
class _PhasePlan:
    """The phase split of one 2-d convolution geometry (see the module docstring).

    ``kernel_index`` [sh, sw, Kh, Kw]: flat kernel tap (kh * kw: none) at each window place of each phase.
    ``padding``: conv2d's symmetric padding (h, w) and the rest for F.pad (w_left, w_right, h_left, h_right),
    negative entries cropping. ``cell_of_input`` [H * W]: grid cell of every input position (each input
    position is in exactly one cell). ``input_of_cell`` [cells]: input position of every cell (H * W:
    outside)."""

    kernel_index: Tensor
    padding: tuple[int, int]
    extra_padding: tuple[int, int, int, int]
    cell_of_input: Tensor
    input_of_cell: Tensor


@functools.lru_cache(maxsize=256)
def _phase_plan(kernel, stride, padding, dilation, in_hw, out_hw) -> _PhasePlan:
    """The plan of a 2-d geometry (all arguments pairs (h, w); out_hw: the convolution's output size)."""
    axes = [_axis(*args) for args in zip(kernel, stride, padding, dilation, in_hw, out_hw)]
    (taps_h, pad_h, cells_h), (taps_w, pad_w, cells_w) = axes
    none, outside = kernel[0] * kernel[1], in_hw[0] * in_hw[1]
    kernel_index = [[[[uh * kernel[1] + uw if min(uh, uw) >= 0 else none for uw in row_w] for uh in row_h]
                     for row_w in taps_w] for row_h in taps_h]  # fmt: skip
    inputs = [[[[mh * in_hw[1] + mw if min(mh, mw) >= 0 else outside for mw in row_w] for mh in row_h]
               for row_w in cells_w] for row_h in cells_h]  # fmt: skip
    inputs = torch.tensor(inputs).flatten()
    inside = inputs < outside
    cell_of_input = torch.empty(outside, dtype=torch.long)
    cell_of_input[inputs[inside]] = torch.arange(inputs.numel())[inside]
    sym = tuple(max(0, min(pads)) for pads in (pad_h, pad_w))
    extra = (pad_w[0] - sym[1], pad_w[1] - sym[1], pad_h[0] - sym[0], pad_h[1] - sym[0])
    return _PhasePlan(torch.tensor(kernel_index), sym, extra, cell_of_input, inputs)


def _on_grid(x: Tensor, plan: _PhasePlan) -> Tensor:
    """Input values [B, C, *spatial] laid out on the phase grid, [B, C * cells], 0 at cells outside."""
    padded = torch.cat([x.flatten(2), x.new_zeros(*x.shape[:2], 1)], 2)  # the last entry: outside
    cells = plan.input_of_cell.to(x.device)
    return padded.flatten(0, 1).index_select(1, cells).reshape(x.shape[0], -1)


@register
@dataclass(frozen=True)
class Conv(Weighted, Affine):
    """``y = conv(x, W) + b`` with zero padding; the backward step is the transposed convolution."""

    weight: Tensor  # [out_channels, in_channels / groups, *kernel]
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        return _CONV[w.dim() - 2](x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._conv(x, self.weight)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        return self.weight[0].numel() + 1  # (in_channels / groups) x kernel products, plus the bias

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._conv(x, self.weight.abs())

    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape((-1,) + (1,) * (self.weight.dim() - 2))

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        if all(s == 1 for s in self.stride):  # one phase: torch's transposed convolution, whose backward (a
            # training step differentiates through it) measured 1.4-2x faster than that of the phase grid's
            convt = _CONV_TRANSPOSE[self.weight.dim() - 2]  # stride 1: the output has the input's size
            return convt(a, self.weight, None, 1, self.padding, 0, self.groups, self.dilation)
        plan = self._phase_plan(in_shape)
        grid = self._grid(a, plan)
        cells = plan.cell_of_input.to(grid.device)  # a gather over a 2-d view: ~3x faster than x[..., i]
        return grid.reshape(-1, grid.shape[-1]).index_select(1, cells).reshape(a.shape[0], *in_shape)

    def box_form(self, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, _PhasePlan]:
        """``J centre`` ([B, *output_shape]: the centre's term is ``<a, J centre>``, read on the coefficients
        instead of their transpose) and the radius on the phase grid ([B, cells]: cells outside the input
        get 0, as they are no coordinate, and every input position is exactly one cell)."""
        plan = self._phase_plan(tuple(centre.shape[1:]))
        return self.linear(0, centre), _on_grid(radius, plan), plan

    def box_lower(self, a: Tensor, form: tuple[Tensor, Tensor, _PhasePlan]) -> Tensor:
        """``<a, J centre> - <|J^T a|, radius>``, the exact minimum of ``<a, J x>`` over the box, with the
        radius's sum over the phase grid instead of the input (the same sum: see ``box_form``)."""
        moved, r, plan = form
        s, b = a.shape[:2]
        grid = self._grid(a.flatten(0, 1), plan).reshape(s, b, -1)
        # vecdot broadcasts the box over the rows: einsum's batched matrix-vector product on the same
        # operands measured 4x slower (oval21 CNN, batch 64)
        centre_term = torch.linalg.vecdot(a.flatten(2), moved.flatten(1))
        if torch.is_grad_enabled() and grid.requires_grad:
            return centre_term - torch.linalg.vecdot(grid.abs(), r)
        # in place on the grid, a temporary: no new tensors of its size (as large as a cache, at batch 64)
        return centre_term - grid.abs_().mul_(r).sum(-1)

    def window(self, size: tuple[int, int]) -> tuple[int, int]:
        """The input window read by an ``h x w`` window of a 2-d convolution's output: ``(h', w') =
        ((h - 1) s + d (k - 1) + 1, ...)``, at origin ``s o - p`` for the output window's origin o (from
        ``y[o] = sum_u w[u] x[s o + d u - p]``)."""
        kernel = self.weight.shape[2:]
        return tuple(
            (n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(size, self.stride, self.dilation, kernel)
        )

    def window_map(self, size: tuple[int, int]) -> Tensor:
        """``J^T`` on coefficients held on an ``h x w`` window of a 2-d convolution's output: the matrix
        [C_out * h * w, C_in * h' * w'] taking them to the input window ``self.window(size)``. That window
        may cross the zero padding: entries there are coefficients of no input coordinate (callers drop
        them)."""
        c_out = self.weight.shape[0]
        eye = torch.eye(c_out * size[0] * size[1], dtype=self.weight.dtype, device=self.weight.device)
        window = F.conv_transpose2d(eye.reshape(-1, c_out, *size), self.weight, None, self.stride, 0, 0,
                                    self.groups, self.dilation)  # fmt: skip
        return window.flatten(1)

    def _geometry(self) -> tuple[Tensor, tuple, tuple, tuple]:
        """Weight, stride, padding and dilation as 2-d ones (a 1-d convolution runs over a unit height)."""
        w, stride, padding, dilation = self.weight, self.stride, self.padding, self.dilation
        if w.dim() == 3:
            w, stride, padding, dilation = w.unsqueeze(2), (1, *stride), (0, *padding), (1, *dilation)
        return w, stride, padding, dilation

    def _phase_plan(self, in_shape: tuple[int, ...]) -> _PhasePlan:
        """The phase split of this convolution on an input of per-sample shape ``in_shape``."""
        w, stride, padding, dilation = self._geometry()
        in_hw = tuple(in_shape[1:]) if len(in_shape) == 3 else (1, in_shape[1])
        out_hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                       for n, k, s, p, d in zip(in_hw, w.shape[2:], stride, padding, dilation))  # fmt: skip
        return _phase_plan(tuple(w.shape[2:]), stride, padding, dilation, in_hw, out_hw)

    def _grid(self, a: Tensor, plan: _PhasePlan) -> Tensor:
        """``J^T a`` on the phase grid of ``plan``, [N, C_in, cells], for a of shape [N, *output_shape]."""
        w = self._geometry()[0]
        a = a.reshape(*a.shape[:2], -1, a.shape[-1])
        g, (c_out, c_in) = self.groups, w.shape[:2]
        taps = w.reshape(g, c_out // g, c_in, -1)
        taps = torch.cat([taps, taps.new_zeros(*taps.shape[:3], 1)], 3)[..., plan.kernel_index.to(w.device)]
        kernel = taps.permute(0, 2, 3, 4, 1, 5, 6).reshape(-1, c_out // g, *plan.kernel_index.shape[2:])
        if any(plan.extra_padding):
            a = F.pad(a, plan.extra_padding)
        grid = F.conv2d(a, kernel, None, 1, plan.padding, 1, g)
        return grid.reshape(grid.shape[0], g * c_in, -1)


@register
@dataclass(frozen=True)
class ConvTranspose(Weighted, Affine):
    """``y = conv_transpose(x, W) + b`` (1-d or 2-d); its backward step is the ordinary convolution with W
    (same stride, padding, dilation and groups: it maps the output's size back to the input's, since the
    output padding is smaller than the stride)."""

    weight: Tensor  # [in_channels, out_channels / groups, *kernel]
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    def _convt(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        convt = _CONV_TRANSPOSE[w.dim() - 2]
        return convt(x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self._convt(x, self.weight, self.bias)

    def linear(self, i: int, x: Tensor) -> Tensor:
        return self._convt(x, self.weight)

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int:
        # an output receives at most in_channels x kernel products (fewer with groups or strides), plus the bias
        return self.weight.shape[0] * self.weight[0, 0].numel() + 1

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        return self._convt(x, self.weight.abs())

    def offset(self) -> Tensor | None:
        return None if self.bias is None else self.bias.reshape((-1,) + (1,) * (self.weight.dim() - 2))

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        conv = _CONV[self.weight.dim() - 2]
        return conv(a, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

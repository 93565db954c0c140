"""CROWN intermediate bounds of convolutional neurons, with each row's coefficients kept on its receptive
field ("patches").

The row that bounds one neuron of a CNN's early layer is zero outside the neuron's receptive field in every
earlier node: a window far smaller than the node. Along a path of 2-d convolutions and elementwise
relaxations from node k down to a box input, every row is therefore carried as a dense window
``[R, C, h, w]`` with its own origin (top-left corner, in the node's coordinates; the windows of all rows
have the same size at a given node). Each step is the dense pass's step restricted to the window:

* convolution: ``J^T`` of a window is a window of the input (``Conv.window_map``, one GEMM for all rows);
* relaxation: the lines are read on the row's window of its own batch element (zero outside the node, so
  coefficients that fell onto a convolution's zero padding are dropped there);
* input box: ``<A, centre> - <|A|, radius>`` with centre and radius read on the window (zero outside).

Same sums as the dense pass (``crown.backward``), in another order; rows are the selected neurons only,
with no padding of batch elements to the one with most unstable neurons."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.engine.state import BoundState
from verifier.ops.base import Nonlinear, Relaxation
from verifier.ops.conv import Conv

# largest window map (floats) a plan may build; past it the dense pass is used
MAX_MAP = 2**22


@dataclass(frozen=True)
class _Step:
    """Node j of the path; with ``matrix`` (a convolution), the window map from its output's windows to its
    input's, of size ``size``."""

    j: int
    matrix: Tensor | None
    size: tuple[int, int]


def plan(state: BoundState, k: int) -> list[_Step] | None:
    """The steps from node k down to the input (node 0), or None when windows do not apply: a region that
    is no box, a node that is neither a 2-d convolution nor an elementwise relaxation (or with several
    inputs), or a window as large as its node (the dense pass is then cheaper)."""
    graph = state.graph
    if not state.region.is_box:
        return None
    steps, size, j = [], (1, 1), k
    while j != 0:
        node = graph.nodes[j]
        if len(node.inputs) != 1:
            return None
        src = graph.nodes[node.inputs[0]].shape
        if len(src) != 3 or len(node.shape) != 3:
            return None
        matrix = None
        if isinstance(node.op, Conv) and node.op.weight.dim() == 4:
            new = node.op.window(size)
            if node.shape[0] * size[0] * size[1] * src[0] * new[0] * new[1] > MAX_MAP:
                return None
            matrix, size = node.op.window_map(size), new
        elif not (isinstance(node.op, Nonlinear) and src == node.shape and _elementwise(state, j)):
            return None
        if src[0] * size[0] * size[1] >= src[0] * src[1] * src[2]:
            return None
        steps.append(_Step(j, matrix, size))
        j = node.inputs[0]
    return steps


def _elementwise(state: BoundState, j: int) -> bool:
    rel = state.relaxation(j)
    return isinstance(rel, Relaxation) and rel.index is None


def refine(state: BoundState, k: int, selection: tuple[Tensor, Tensor], steps: list[_Step]) -> None:
    """``crown.refine`` without slopes, on windows: tighten ``state.bounds[k]`` on the neurons of
    ``selection`` (see ``crown.select_rows``), both sides of each (rows ``e_i`` and ``-e_i``), in chunks
    whose largest window tensor stays near ``cfg.max_elements``."""
    order, valid = selection
    batch_of, slot = valid.nonzero(as_tuple=True)
    if batch_of.numel() == 0:
        return
    pos = order[batch_of, slot]
    lo, hi = state.bounds[k]
    channels, height, width = state.graph.nodes[k].shape
    chan, rest = pos // (height * width), pos % (height * width)
    origin = torch.stack([rest // width, rest % width], 1)
    nodes = state.graph.nodes
    widest = max(nodes[nodes[s.j].inputs[0]].shape[0] * s.size[0] * s.size[1] for s in steps)
    chunk = max(1, state.cfg.max_elements // widest)
    lo_flat, hi_flat = lo.reshape(lo.shape[0], -1).clone(), hi.reshape(hi.shape[0], -1).clone()
    for start in range(0, pos.numel(), chunk):
        part = slice(start, start + chunk)
        m = chan[part].numel()
        unit = F.one_hot(chan[part], channels).to(lo.dtype).reshape(m, channels, 1, 1)
        rows = torch.cat([unit, -unit])
        res = _lower(state, steps, batch_of[part].repeat(2), origin[part].repeat(2, 1), rows)
        where = (batch_of[part], pos[part])
        lo_flat[where] = torch.maximum(lo_flat[where], res[:m])
        hi_flat[where] = torch.minimum(hi_flat[where], -res[m:])
    state.set_bounds(k, (lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape)))


def _lower(state: BoundState, steps: list[_Step], batch_of: Tensor, origin: Tensor, a: Tensor) -> Tensor:
    """Lower bounds [R] over the box of ``<a_r, z_k>``, for rows a [R, C_k, h, w] on windows at ``origin``
    [R, 2] of node k, row r in batch element ``batch_of[r]``. Every step keeps ``<a, z_k> >= <a_j, z_j> +
    const`` on the region, as the dense pass does: the coefficients outside the windows are zero."""
    nodes = state.graph.nodes
    const = a.new_zeros(a.shape[0])
    for step in steps:
        node = nodes[step.j]
        if step.matrix is not None:
            offset = node.op.offset()
            if offset is not None:  # a is zero off the node's grid (rows start on it; relaxations zero it)
                const = const + a.sum((2, 3)) @ offset.flatten()
            a = (a.flatten(1) @ step.matrix).reshape(a.shape[0], -1, *step.size)
            origin = origin * origin.new_tensor(node.op.stride) - origin.new_tensor(node.op.padding)
            if isinstance(nodes[node.inputs[0]].op, Conv):  # drop what fell on the zero padding
                ones = a.new_ones(1, 1, *nodes[node.inputs[0]].shape[1:])
                a = a * _windows([ones], torch.zeros_like(batch_of), origin, step.size)[0]
        else:
            rel = state.relaxation(step.j)
            a_lo, b_lo, a_up, b_up = _windows(
                [rel.a_lo, rel.b_lo, rel.a_up, rel.b_up], batch_of, origin, step.size
            )
            # the positive part of a row takes the lower line, the negative part the upper one
            neg = a.clamp(max=0)
            pos = a - neg
            const = const + torch.addcmul(pos * b_lo, neg, b_up).flatten(1).sum(1)
            a = torch.addcmul(pos * a_lo, neg, a_up)
    lo, hi = state.region.box()
    centre, radius = _windows([(hi + lo) / 2, (hi - lo) / 2], batch_of, origin, tuple(a.shape[2:]))
    return const + (a * centre).flatten(1).sum(1) - (a.abs() * radius).flatten(1).sum(1)


def _windows(tensors: list[Tensor], batch_of: Tensor, origin: Tensor, size: tuple[int, int]) -> list[Tensor]:
    """Windows [R, C, h, w] of tensors [B, C, H, W] (a leading dimension 1 serves every batch element), row
    r at ``origin[r]`` of batch element ``batch_of[r]``; zero where a window leaves the tensor."""
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    x = torch.stack([t.expand(shape) for t in tensors])  # [n, B, C, H, W]
    (h, w), (height, width) = size, shape[2:]
    top, left = (max(0, -int(origin[:, i].min())) for i in (0, 1))
    bottom = max(0, int(origin[:, 0].max()) + h - height)
    right = max(0, int(origin[:, 1].max()) + w - width)
    x = F.pad(x, (left, right, top, bottom))
    channels, rows_h, rows_w = x.shape[2:]
    start = ((batch_of * channels * rows_h) + origin[:, 0] + top) * rows_w + origin[:, 1] + left
    arange = lambda n: torch.arange(n, device=x.device)
    offsets = (arange(channels)[:, None, None] * rows_h + arange(h)[:, None]) * rows_w + arange(w)
    index = (start[:, None, None, None] + offsets).flatten()
    picked = x.reshape(len(tensors), -1).index_select(1, index)
    return list(picked.reshape(len(tensors), -1, channels, h, w))

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
    input's. ``size``: the window on node j's input; ``pad``: (left, right, top, bottom) zeros around that
    input that hold every row's window (origins range over the image of node k's grid)."""

    j: int
    matrix: Tensor | None
    size: tuple[int, int]
    pad: tuple[int, int, int, int]


def plan(state: BoundState, k: int) -> list[_Step] | None:
    """The steps from node k down to the input (node 0), or None when windows do not apply: a region that
    is no box, a node that is neither a 2-d convolution nor an elementwise relaxation (or with several
    inputs), or a window as large as its node (the dense pass is then cheaper)."""
    graph = state.graph
    if not state.region.is_box or len(graph.nodes[k].shape) != 3:
        return None
    steps, size, j = [], (1, 1), k
    first, last = (0, 0), tuple(n - 1 for n in graph.nodes[k].shape[1:])  # the range of window origins
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
            first, last = (
                [o * s - p for o, s, p in zip(ends, node.op.stride, node.op.padding)]
                for ends in (first, last)
            )
        elif not (isinstance(node.op, Nonlinear) and src == node.shape and _elementwise(state, j)):
            return None
        if size[0] * size[1] >= src[1] * src[2]:
            return None
        (top, left), (bottom, right) = (
            [max(0, e) for e in ends]
            for ends in ((-first[0], -first[1]), (last[0] + size[0] - src[1], last[1] + size[1] - src[2]))
        )
        steps.append(_Step(j, matrix, size, (left, right, top, bottom)))
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
    sources = _sources(state, steps)
    lo_flat, hi_flat = lo.reshape(lo.shape[0], -1).clone(), hi.reshape(hi.shape[0], -1).clone()
    for start in range(0, pos.numel(), chunk):
        part = slice(start, start + chunk)
        m = chan[part].numel()
        unit = F.one_hot(chan[part], channels).to(lo.dtype).reshape(m, channels, 1, 1)
        res = _lower(state, steps, sources, batch_of[part], origin[part], torch.stack([unit, -unit]))
        where = (batch_of[part], pos[part])
        lo_flat[where] = torch.maximum(lo_flat[where], res[0])
        hi_flat[where] = torch.minimum(hi_flat[where], -res[1])
    state.set_bounds(k, (lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape)))


def _sources(state: BoundState, steps: list[_Step]) -> list[Tensor | None]:
    """What each step reads on its windows, stacked and padded by ``step.pad``: a relaxation's lines
    [4, B, C, H', W']; for a convolution whose input is another convolution, ones on that input's grid
    [1, 1, 1, H', W'] (to drop what falls on the zero padding); last, the input box's centre and radius."""
    nodes, out = state.graph.nodes, []
    for step in steps:
        src = nodes[step.j].inputs[0]
        if step.matrix is None:
            rel = state.relaxation(step.j)
            lines = [rel.a_lo, rel.b_lo, rel.a_up, rel.b_up]
        elif isinstance(nodes[src].op, Conv):
            lines = [state.bounds[src][0].new_ones(1, 1, *nodes[src].shape[1:])]
        else:
            out.append(None)
            continue
        shape = torch.broadcast_shapes(*(t.shape for t in lines))
        out.append(F.pad(torch.stack([t.expand(shape) for t in lines]), step.pad))
    shape = (state.batch, *state.graph.input_shape)
    centre, radius = (t.reshape(shape) for t in state.region.centre_radius())  # kept with the box
    out.append(F.pad(torch.stack([centre, radius]), steps[-1].pad))
    return out


def _lower(state, steps: list[_Step], sources, batch_of: Tensor, origin: Tensor, a: Tensor) -> Tensor:
    """Lower bounds [K, R] over the box of ``<a_kr, z_k>``, for rows a [K, R, C_k, h, w] on windows at
    ``origin`` [R, 2] of node k, rows r in batch element ``batch_of[r]`` (the K rows of a window share its
    reads: both signs of a neuron's row). Every step keeps ``<a, z_k> >= <a_j, z_j> + const`` on the
    region, as the dense pass does: the coefficients outside the windows are zero."""
    nodes = state.graph.nodes
    const = a.new_zeros(a.shape[:2])
    for step, source in zip(steps, sources):
        node = nodes[step.j]
        if step.matrix is not None:
            offset = node.op.offset()
            if offset is not None:  # a is zero off the node's grid (rows start on it; relaxations zero it)
                const = const + a.sum((3, 4)) @ offset.flatten()
            a = (a.flatten(2) @ step.matrix).reshape(*a.shape[:2], -1, *step.size)
            origin = origin * origin.new_tensor(node.op.stride) - origin.new_tensor(node.op.padding)
            if source is not None:  # drop what fell on the zero padding of a convolution's output
                a = a * _windows(source, torch.zeros_like(batch_of), origin, step)[0]
        else:
            a_lo, b_lo, a_up, b_up = _windows(source, batch_of, origin, step)
            # the positive part of a row takes the lower line, the negative part the upper one
            neg = a.clamp(max=0)
            pos = a - neg
            const = const + torch.addcmul(pos * b_lo, neg, b_up).flatten(2).sum(2)
            a = torch.addcmul(pos * a_lo, neg, a_up)
    centre, radius = _windows(sources[-1], batch_of, origin, steps[-1])
    return const + (a * centre).flatten(2).sum(2) - (a.abs() * radius).flatten(2).sum(2)


def _windows(source: Tensor, batch_of: Tensor, origin: Tensor, step: _Step) -> Tensor:
    """Windows [n, R, C, h, w] of a padded source [n, B, C, H', W'] (``_sources``), row r at ``origin[r]``
    (unpadded coordinates) of batch element ``batch_of[r]``."""
    (h, w), (left, _, top, _) = step.size, step.pad
    channels, rows_h, rows_w = source.shape[2:]
    start = ((batch_of * channels * rows_h) + origin[:, 0] + top) * rows_w + origin[:, 1] + left
    arange = lambda n: torch.arange(n, device=source.device)
    offsets = (arange(channels)[:, None, None] * rows_h + arange(h)[:, None]) * rows_w + arange(w)
    index = (start[:, None, None, None] + offsets).flatten()
    return (
        source.reshape(source.shape[0], -1)
        .index_select(1, index)
        .reshape(source.shape[0], -1, channels, h, w)
    )

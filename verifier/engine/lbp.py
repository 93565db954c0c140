"""LBP (Lyu et al. 2021): linear bounds in the input carried forward, one layer at a time.

For node k: ``Lk x + lk <= z_k <= Uk x + uk`` for every x in the region, with ``Lk, Uk`` of shape
[n_in, B, *shape_k] (the input coordinates play the role of rows) and ``lk, uk`` of shape [B, *shape_k]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.engine.state import BoundState
from verifier.graph.graph import identity_coefficients
from verifier.ops.base import Affine, Interval, JointRelaxation, Nonlinear, Relaxation


@dataclass(frozen=True)
class LinearBounds:
    lower: Tensor  # [n_in, B, *shape]
    lower_const: Tensor  # [B, *shape]
    upper: Tensor
    upper_const: Tensor

    @property
    def exact(self) -> bool:
        return self.lower is self.upper and self.lower_const is self.upper_const


def input_bounds(state: BoundState) -> LinearBounds:
    x = state.bounds[0][0]
    eye = identity_coefficients(state.graph.input_shape, x.shape[0], x)
    zero = torch.zeros_like(x)
    return LinearBounds(eye, zero, eye, zero)


def step(state: BoundState, k: int, inputs: list[LinearBounds]) -> LinearBounds:
    """Linear bounds of node k from those of its inputs."""
    node = state.graph.nodes[k]
    if isinstance(node.op, Affine):
        return affine(node.op, node.shape, inputs)
    rel = state.relaxation(k)
    if isinstance(rel, JointRelaxation):
        return _jointly_relaxed(rel, [_broadcast(node.op, i, b) for i, b in enumerate(inputs)])
    return _relaxed(rel, inputs[0])


def affine(op: Affine, shape: tuple[int, ...], inputs: list[LinearBounds]) -> LinearBounds:
    """``J+ L + J- U = (J (L + U) + |J| (L - U)) / 2`` for the lower bound, mirrored for the upper."""

    def apply(i: int, lower: Tensor, upper: Tensor, exact: bool) -> tuple[Tensor, Tensor]:
        lead = lower.shape[: lower.dim() - len(op_in_shapes[i])]
        merge = lambda t: t.reshape(-1, *op_in_shapes[i])
        split = lambda t: t.reshape(*lead, *shape)
        if exact:
            y = split(op.linear(i, merge(lower)))
            return y, y
        mid = split(op.linear(i, merge(lower + upper)))
        rad = split(op.abs_linear(i, merge(upper - lower)))
        return (mid - rad) / 2, (mid + rad) / 2

    op_in_shapes = [tuple(b.lower_const.shape[1:]) for b in inputs]
    lower = upper = lower_c = upper_c = 0
    exact = all(b.exact for b in inputs)
    for i, b in enumerate(inputs):
        lo, up = apply(i, b.lower, b.upper, b.exact)
        lo_c, up_c = apply(i, b.lower_const, b.upper_const, b.exact)
        lower, upper, lower_c, upper_c = lower + lo, upper + up, lower_c + lo_c, upper_c + up_c
    offset = op.offset()
    if offset is not None:
        lower_c, upper_c = lower_c + offset, upper_c + offset
    if exact:
        return LinearBounds(lower, lower_c, lower, lower_c)
    return LinearBounds(lower, lower_c, upper, upper_c)


def _relaxed(rel: Relaxation, b: LinearBounds) -> LinearBounds:
    """Compose with the relaxation lines: a positive slope keeps the side, a negative one swaps it."""
    lower, lower_c, upper, upper_c = b.lower, b.lower_const, b.upper, b.upper_const
    if rel.index is not None:
        lower, upper = (_gather(t, rel.index, rel.a_lo.shape[1:]) for t in (lower, upper))
        lower_c, upper_c = (
            _gather(t.unsqueeze(0), rel.index, rel.a_lo.shape[1:])[0] for t in (lower_c, upper_c)
        )

    def line(a: Tensor, c: Tensor, same: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor]):
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        return pos * same[0] + neg * other[0], pos * same[1] + neg * other[1] + c

    lo, lo_c = line(rel.a_lo, rel.b_lo, (lower, lower_c), (upper, upper_c))
    up, up_c = line(rel.a_up, rel.b_up, (upper, upper_c), (lower, lower_c))
    return LinearBounds(lo, lo_c, up, up_c)


def _broadcast(op: Nonlinear, i: int, b: LinearBounds) -> LinearBounds:
    """Input i's linear bounds as the operator's output shape sees them (``op.broadcast``)."""

    def spread(t: Tensor, lead: int) -> Tensor:
        y = op.broadcast(i, t.flatten(0, lead - 1) if lead > 1 else t)
        return y.reshape(*t.shape[:lead], *y.shape[1:])

    return LinearBounds(
        spread(b.lower, 2), spread(b.lower_const, 1), spread(b.upper, 2), spread(b.upper_const, 1)
    )


def _jointly_relaxed(rel: JointRelaxation, inputs: list[LinearBounds]) -> LinearBounds:
    """Compose planes in several inputs with each input's linear bounds (all of the output's shape): per
    input, a positive slope keeps the side and a negative one swaps it."""
    lower, lower_c, upper, upper_c = 0, rel.b_lo, 0, rel.b_up
    for a_lo, a_up, b in zip(rel.a_lo, rel.a_up, inputs):
        lo_pos, lo_neg = a_lo.clamp(min=0), a_lo.clamp(max=0)
        up_pos, up_neg = a_up.clamp(min=0), a_up.clamp(max=0)
        lower = lower + lo_pos * b.lower + lo_neg * b.upper
        lower_c = lower_c + lo_pos * b.lower_const + lo_neg * b.upper_const
        upper = upper + up_pos * b.upper + up_neg * b.lower
        upper_c = upper_c + up_pos * b.upper_const + up_neg * b.lower_const
    return LinearBounds(lower, lower_c, upper, upper_c)


def _gather(t: Tensor, index: Tensor, out_shape) -> Tensor:
    """t: [n, B, *in_shape] -> [n, B, *out_shape], output j reading flat input position index[b, j]."""
    flat = t.flatten(2)
    return flat.gather(2, index.unsqueeze(0).expand(flat.shape[0], -1, -1)).reshape(
        *flat.shape[:2], *out_shape
    )


def concretize(state: BoundState, b: LinearBounds) -> Interval:
    """Concrete bounds [B, *shape] of a node from its linear bounds."""
    return lower_of(state, b.lower, b.lower_const), -lower_of(state, -b.upper, -b.upper_const)


def lower_of(state: BoundState, coeffs: Tensor, const: Tensor) -> Tensor:
    """min over the region of ``coeffs^T x + const`` per output: coeffs [n_in, B, *shape] -> [B, *shape]."""
    n, batch = coeffs.shape[:2]
    shape = const.shape[1:]
    a = coeffs.reshape(n, batch, -1).permute(2, 1, 0).reshape(-1, batch, *state.graph.input_shape)
    return state.region.concretize(a, const.reshape(batch, -1).T).T.reshape(batch, *shape)

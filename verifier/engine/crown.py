"""CROWN: backward linear bound propagation from any node to the input."""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine.state import BoundState, apply_relaxation
from verifier.ops.base import Affine


def backward(state: BoundState, start: int, a: Tensor) -> Tensor:
    """Lower bounds of ``<a_s, z_start>`` over the region, one per row s: shape [S, B].

    ``a`` has shape [S, B, *shape(start)]. Walks the ancestors of ``start`` in reverse topological order,
    accumulating coefficients for nodes with several consumers; affine nodes pass ``J^T a`` to their inputs
    and add ``<a, offset>``, nonlinear nodes apply their relaxation. Every step keeps
    ``<a, z_start> >= <a_j, z_j> + const`` for all inputs in the region, so the concretisation at the
    input is a sound lower bound."""
    nodes = state.graph.nodes
    pending: dict[int, Tensor] = {start: a}
    const = a.new_zeros(a.shape[:2])
    for j in range(start, 0, -1):
        a = pending.pop(j, None)
        if a is None:
            continue
        node, (s, b) = nodes[j], a.shape[:2]
        if isinstance(node.op, Affine):
            offset = node.op.offset()
            if offset is not None:
                const = const + (a * offset).flatten(2).sum(-1)
            flat = a.reshape(s * b, *node.shape)
            for i, src in enumerate(node.inputs):
                shape = nodes[src].shape
                _accumulate(pending, src, node.op.transpose(i, flat, shape).reshape(s, b, *shape))
        else:
            src = node.inputs[0]
            shape = nodes[src].shape
            new, c = apply_relaxation(a, state.relaxation(j), int(torch.Size(shape).numel()))
            const = const + c
            _accumulate(pending, src, new.reshape(s, b, *shape))
    return state.region.concretize(pending[0], const)


def _accumulate(pending: dict[int, Tensor], k: int, a: Tensor) -> None:
    pending[k] = pending[k] + a if k in pending else a


def refine(state: BoundState, k: int, mask: Tensor) -> None:
    """Tighten ``state.bounds[k]`` by CROWN on the neurons selected by ``mask`` ([B, *shape]).

    Row j of batch element b bounds the j-th selected neuron of b (rows past b's count are zero and
    ignored), both sides in one pass (rows ``e_j`` and ``-e_j``), in chunks that keep each coefficient
    tensor under ``cfg.max_elements``."""
    lo, hi = state.bounds[k]
    batch, numel = lo.shape[0], lo[0].numel()
    flat_mask = mask.reshape(batch, numel)
    counts = flat_mask.sum(1)
    most = int(counts.max())
    if most == 0:
        return
    # per batch element: its selected positions first (a permutation, so positions never repeat)
    order = flat_mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :most]
    valid = torch.arange(most, device=lo.device) < counts[:, None]  # [B, most]
    widest = max(int(torch.Size(n.shape).numel()) for n in state.graph.nodes[: k + 1])
    chunk = max(1, state.cfg.max_elements // (2 * batch * widest))
    lo_flat, hi_flat = lo.reshape(batch, numel), hi.reshape(batch, numel)
    for start in range(0, most, chunk):
        pos, ok = order[:, start : start + chunk], valid[:, start : start + chunk]  # [B, m]
        m = pos.shape[1]
        rows = torch.zeros(m, batch, numel, dtype=lo.dtype, device=lo.device)
        rows.scatter_(2, pos.T.unsqueeze(2), ok.T.unsqueeze(2).to(lo.dtype))
        res = backward(state, k, torch.cat([rows, -rows]).reshape(2 * m, batch, *state.graph.nodes[k].shape))
        old_lo, old_hi = lo_flat.gather(1, pos), hi_flat.gather(1, pos)
        lo_flat = lo_flat.scatter(1, pos, torch.where(ok, torch.maximum(old_lo, res[:m].T), old_lo))
        hi_flat = hi_flat.scatter(1, pos, torch.where(ok, torch.minimum(old_hi, -res[m:].T), old_hi))
    state.bounds[k] = (lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape))

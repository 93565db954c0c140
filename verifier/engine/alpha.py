"""alpha-CROWN at the output: the lower-line slopes of unstable ReLUs become free parameters, one per
specification row and neuron, optimised by projected gradient ascent on the CROWN lower bound.

Any slope in the valid range gives a sound bound (see ``ReLU``), so every iterate is a sound bound and
the best one per row is kept. Intermediate bounds are CROWN's (optimising them too is future work); the
start point is CROWN's adaptive choice, so the result is never looser than "crown"."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from verifier.engine import crown
from verifier.engine.state import BoundState
from verifier.ops.activations import ReLU

STEPS = 20
LEARNING_RATE = 0.25


def optimised_lower(state: BoundState, rows: Tensor, steps: int = STEPS) -> Tensor:
    """Lower bounds [S, B] of ``<rows_s, f(x)>`` with optimised ReLU lower slopes (rows: [S, B, *out])."""
    graph = state.graph
    base = {k: state.relaxation(k) for k, n in enumerate(graph.nodes)
            if isinstance(n.op, ReLU) and n.op.negative_slope <= 1.0}  # fmt: skip
    free = {}
    for k, rel in base.items():
        lo, hi = state.bounds[graph.nodes[k].inputs[0]]
        unstable = graph.nodes[k].op.needs_bounds(lo, hi)
        if unstable.any():
            start = rel.a_lo.detach().expand(rows.shape[0], *rel.a_lo.shape).clone()
            free[k] = (start.requires_grad_(True), unstable, graph.nodes[k].op.negative_slope)
    if not free:
        return crown.backward(state, graph.output, rows)
    keep_graph = torch.is_grad_enabled()  # the caller wants a differentiable bound: return the last iterate
    optimiser = torch.optim.Adam([p for p, _, _ in free.values()], lr=LEARNING_RATE)
    best = None
    for step in range(steps + 1):
        with torch.enable_grad():
            for k, (slope, unstable, _) in free.items():
                state.relaxations[k] = replace(base[k], a_lo=torch.where(unstable, slope, base[k].a_lo))
            lower = crown.backward(state, graph.output, rows if keep_graph else rows.detach())
            loss = -lower.sum()
        best = lower.detach() if best is None else torch.maximum(best, lower.detach())
        if step == steps:
            break
        optimiser.zero_grad()
        loss.backward(retain_graph=keep_graph)
        optimiser.step()
        with torch.no_grad():  # projection onto the valid slopes [negative_slope, 1] (clamp has no gradient
            for slope, _, alpha in free.values():  # at the ends, where the adaptive start lies)
                slope.clamp_(alpha, 1.0)
    for k in free:
        state.relaxations[k] = base[k]
    return lower if keep_graph else best

"""The exact minimum over a domain whose every relaxation is exact, by linear programming.

When every neuron of a domain is stable on its bounds or fixed by a split constraint, the network is one
affine function on the domain, and the domain itself is a polytope: the box, cut by ``s_i z_i(x) >= 0``
for every split neuron i, where ``z_i(x)`` is affine too (by induction over the nodes: once the constraints
of the earlier nodes hold, every earlier neuron is on its fixed side). The minimum of a spec row over the
domain is then a linear program. CROWN reaches the same value only as the optimum of its split
multipliers (the LP's dual), which gradient steps approach slowly; HiGHS solves it directly.

Soundness: the affine forms are CROWN's linear bounds through exact relaxations (equal to the function on
the domain, up to float rounding, which the verdict margin of ``verify.bounding`` covers); HiGHS accepts a
point within its feasibility tolerance (1e-7), so its optimum is at most the true one, and it reports
infeasible only when no point comes within that tolerance, which is then an empty domain."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from verifier.engine import crown
from verifier.engine.state import BoundState


def exact_lower(state: BoundState, rows: Tensor) -> Tensor:
    """Lower bounds [S, B] of ``<rows_s, f(x)>`` over each domain of ``state``: the LP minimum, ``+inf``
    for an empty domain, ``-inf`` where the solver gives no answer or some relaxation is not exact (the
    linear forms are then only lower bounds, and the polytope they cut is not the domain)."""
    from scipy.optimize import linprog  # a heavy import, needed only once branch and bound gets here

    out_a, out_c = (
        t.detach().double().cpu().numpy() for t in crown.linear_form(state, state.graph.output, rows)
    )
    cut_a, cut_b = _constraints(state)
    lo, hi = (t.detach().double().cpu().reshape(t.shape[0], -1).numpy() for t in state.region.box())
    result = np.full(out_c.shape, -np.inf)
    exact = state.exact_relaxations().tolist()
    for b in range(out_c.shape[1]):
        if not exact[b]:
            continue
        bounds = np.stack([lo[b], hi[b]], axis=1)
        for s in range(out_c.shape[0]):
            res = linprog(
                out_a[s, b].reshape(-1), A_ub=cut_a[b], b_ub=cut_b[b], bounds=bounds, method="highs"
            )
            if res.status == 0:
                result[s, b] = res.fun + out_c[s, b]
            elif res.status == 2:
                result[s, b] = np.inf
    return torch.as_tensor(result, dtype=rows.dtype, device=rows.device)


def _constraints(state: BoundState) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per domain, ``A x <= b`` for the split constraints: ``-s (A_i x + c_i) <= 0``."""
    batch = state.batch
    cut_a: list[list[np.ndarray]] = [[] for _ in range(batch)]
    cut_b: list[list[np.ndarray]] = [[] for _ in range(batch)]
    n_in = int(np.prod(state.graph.input_shape))
    for k, split in state.splits.items():
        flat = split.reshape(batch, -1)
        counts = (flat != 0).sum(1).tolist()
        most = max(counts)
        if most == 0:
            continue
        order, valid = crown.select_rows(state, k, split != 0)
        e = crown.indicator_rows(order, valid, state.graph.nodes[k].shape, state.bounds[k][0])
        a, c = crown.linear_form(state, k, e)
        a = a.detach().double().cpu().reshape(most, batch, n_in).numpy()
        c = c.detach().double().cpu().numpy()
        sign = flat.gather(1, order).double().cpu().numpy()  # [B, most]
        for b in range(batch):
            m = int(counts[b])
            cut_a[b].append(-sign[b, :m, None] * a[:m, b])
            cut_b[b].append(sign[b, :m] * c[:m, b])
    empty = np.zeros((0, n_in))
    return (
        [np.concatenate(x) if x else empty for x in cut_a],
        [np.concatenate(x) if x else np.zeros(0) for x in cut_b],
    )

"""A second, independent exact oracle for tiny networks: enumeration of activation patterns.

Fixing which unstable ReLUs are active makes the network affine on the polyhedron where that pattern
holds: ``z_k = A_k x + a_k`` with ``A_k`` composed layer by layer. The minimum over the box is the
smallest of one linear program per pattern,

    min c^T (A_out x + a_out)   s.t.   lo <= x <= hi,  z_kj >= 0 (active),  z_kj <= 0 (inactive),

solved by ``scipy.optimize.linprog``. No big-M and no integers: it checks the MILP encoding against a
formulation that shares nothing with it but the interval bounds telling stable neurons apart (which
only prune patterns that are empty anyway). Cost: ``2^(unstable neurons)`` LPs.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linprog

from tests.exact.milp import interval_bounds
from tests.exact.nets import ReluNet

MAX_UNSTABLE = 12


def _pattern_lp(net: ReluNet, c: np.ndarray, active: list[np.ndarray]) -> float:
    """The minimum of ``c^T f`` on the region of one pattern (``active[k]``: bool per neuron), or ``inf``
    when that region is empty."""
    n_in = net.n_in
    lin, off = np.eye(n_in), np.zeros(n_in)
    rows, rhs = [], []
    for (w, b), on in zip(net.layers[:-1], active):
        lin, off = w.astype(np.float64) @ lin, w.astype(np.float64) @ off + b.astype(np.float64)
        # z <= 0 for inactive neurons, -z <= 0 for active ones.
        sign = np.where(on, -1.0, 1.0)
        rows.append(sign[:, None] * lin)
        rhs.append(-sign * off)
        lin, off = lin * on[:, None], off * on
    w, b = (v.astype(np.float64) for v in net.layers[-1])
    bounds = list(zip(net.lo.astype(np.float64), net.hi.astype(np.float64)))
    result = linprog(c @ w @ lin, A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), bounds=bounds)
    if result.status == 2:  # infeasible: no input has this pattern
        return np.inf
    assert result.status == 0, result.message
    return float(result.fun + c @ (w @ off + b))


def minimise_by_patterns(net: ReluNet, c: np.ndarray) -> float:
    """The exact minimum of ``c^T f(x)`` over ``net``'s box, by enumeration (at most ``MAX_UNSTABLE``
    neurons may be unstable under interval bounds)."""
    bounds = interval_bounds(net)
    unstable = [np.flatnonzero((l < 0) & (u > 0)) for l, u in bounds]
    count = sum(len(i) for i in unstable)
    assert count <= MAX_UNSTABLE, f"{count} unstable neurons: too many patterns to enumerate"
    best = np.inf
    for bits in itertools.product((False, True), repeat=count):
        active, start = [], 0
        for (l, _), idx in zip(bounds, unstable):
            on = l >= 0
            on[idx] = bits[start : start + len(idx)]
            active.append(on)
            start += len(idx)
        best = min(best, _pattern_lp(net, np.asarray(c, dtype=np.float64), active))
    return best

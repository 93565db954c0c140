"""The exact oracle: ``min c^T f(x)`` over the box of a ``ReluNet``, as a mixed-integer linear program.

Big-M encoding (Tjeng et al. 2019), one block per hidden neuron with pre-activation ``z`` in ``[l, u]``
(interval bounds computed in float64) and output ``h = relu(z)``:

    z = W h_prev + b,    h >= z,    h >= 0,    h <= u a,    h <= z - l (1 - a),    a in {0, 1}

``a = 1`` forces ``h = z >= 0`` and ``a = 0`` forces ``h = 0 >= z``, so the feasible ``(x, h)`` are exactly
the points of the box and the network's activations there; stable neurons get ``a`` fixed by their sign.
HiGHS (``scipy.optimize.milp``) solves it up to its tolerances (about 1e-6 absolute); ``Optimum`` keeps
both the value the network attains at the returned point (an upper bound on the exact minimum, evaluated
in float64) and the solver's dual bound (a lower bound up to those tolerances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from tests.exact.nets import ReluNet

# Widening of interval bounds so that rounding in float64 interval arithmetic cannot cut off a value the
# network reaches (the solver's own feasibility tolerance, 1e-7, would hide it, but we do not rely on that).
WIDEN = 1e-9


@dataclass(frozen=True)
class Optimum:
    """A minimiser ``x`` (float64, inside the box), ``value = c^T f(x)`` there (float64) and the solver's
    ``dual_bound``; the exact minimum lies in ``[dual_bound - solver tolerance, value]``."""

    x: np.ndarray
    value: float
    dual_bound: float

    @property
    def gap(self) -> float:
        return self.value - self.dual_bound


def interval_bounds(net: ReluNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(l, u)]``: float64 bounds of every hidden layer's pre-activations over the box, slightly widened."""
    lo, hi = net.lo.astype(np.float64), net.hi.astype(np.float64)
    bounds = []
    for w, b in net.layers[:-1]:
        w, b = w.astype(np.float64), b.astype(np.float64)
        centre, radius = w @ ((lo + hi) / 2) + b, np.abs(w) @ ((hi - lo) / 2)
        l, u = centre - radius, centre + radius
        l, u = l - WIDEN * (1 + np.abs(l)), u + WIDEN * (1 + np.abs(u))
        bounds.append((l, u))
        lo, hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return bounds


class _Program:
    """Dense rows ``lb <= A v <= ub`` over variables ``v`` allocated block by block."""

    def __init__(self):
        self.lower, self.upper, self.integer = [], [], []
        self.rows: list[tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]] = []

    def block(self, lower: np.ndarray, upper: np.ndarray, integer: bool = False) -> np.ndarray:
        """New variables with these bounds; returns their indices."""
        start = len(self.lower)
        self.lower += list(lower)
        self.upper += list(upper)
        self.integer += [int(integer)] * len(lower)
        return np.arange(start, len(self.lower))

    def add(self, terms: list[tuple[np.ndarray, np.ndarray]], lb: np.ndarray, ub: np.ndarray) -> None:
        """Rows ``lb <= sum_k M_k v[idx_k] <= ub`` for ``terms = [(M_k, idx_k)]``, ``M_k`` of shape
        ``(rows, len(idx_k))``."""
        self.rows.append((terms, lb, ub))

    def solve(self, objective: np.ndarray, objective_idx: np.ndarray):
        """Minimise ``objective . v[objective_idx]`` with HiGHS; returns scipy's result (asserted solved)."""
        n = len(self.lower)
        blocks, lbs, ubs = [], [], []
        for terms, lb, ub in self.rows:
            a = np.zeros((len(lb), n))
            for matrix, idx in terms:
                a[:, idx] += matrix
            blocks.append(a)
            lbs.append(lb)
            ubs.append(ub)
        cost = np.zeros(n)
        cost[objective_idx] = objective
        constraint = LinearConstraint(np.vstack(blocks), np.concatenate(lbs), np.concatenate(ubs))
        result = milp(
            cost,
            constraints=constraint,
            integrality=np.array(self.integer),
            bounds=Bounds(np.array(self.lower), np.array(self.upper)),
            options={"mip_rel_gap": 1e-9},
        )
        assert result.success, f"MILP not solved: {result.message}"
        return result


def _relu_layer(program: _Program, w: np.ndarray, b: np.ndarray, prev: np.ndarray, l, u) -> np.ndarray:
    """Variables ``z, h, a`` of one hidden layer (``l <= z <= u``) and the rows of the module docstring;
    returns the indices of ``h``."""
    n = len(b)
    eye, inf = np.eye(n), np.full(n, np.inf)
    z = program.block(l, u)
    h = program.block(np.zeros(n), np.maximum(u, 0.0))
    # Stable neurons: a's value is forced by the sign of z, and the same rows then state h = z or h = 0.
    a = program.block((l >= 0).astype(float), (u > 0).astype(float), integer=True)
    program.add([(eye, z), (-w, prev)], b, b)
    program.add([(eye, h), (-eye, z)], np.zeros(n), inf)
    program.add([(eye, h), (-np.diag(u), a)], -inf, np.zeros(n))
    program.add([(eye, h), (-eye, z), (-np.diag(l), a)], -inf, -l)
    return h


def minimise(net: ReluNet, c: np.ndarray) -> Optimum:
    """The exact minimum of ``c^T f(x)`` over ``net``'s box (``c``: ``(n_out,)``), as an ``Optimum``."""
    c = np.asarray(c, dtype=np.float64)
    program = _Program()
    prev = program.block(net.lo.astype(np.float64), net.hi.astype(np.float64))
    x_idx = prev
    for (w, b), (l, u) in zip(net.layers[:-1], interval_bounds(net)):
        prev = _relu_layer(program, w.astype(np.float64), b.astype(np.float64), prev, l, u)
    w_out, b_out = (v.astype(np.float64) for v in net.layers[-1])
    result = program.solve(w_out.T @ c, prev)
    x = np.clip(result.x[x_idx], net.lo, net.hi)
    value = float(net.evaluate(x[None])[0] @ c)
    return Optimum(x, value, float(result.mip_dual_bound + c @ b_out))

"""A ``Property`` as padded tensors: every case becomes one batch entry for attacks and bound calls.

Shapes (``B`` cases, ``S`` rows, ``D`` disjuncts, the largest over cases; padding is marked invalid):

    lower, upper   (B, n_in)       the VNN-LIB boxes (float64)
    lo, hi         (B, n_in)       the same boxes rounded inwards to the model's input type
    C              (B, S, n_out)   every row of every disjunct of the case, stacked
    d              (B, S)
    member         (B, S, D)       member[b, s, j]: row s belongs to disjunct j
    valid          (B, D)          valid[b, j]: disjunct j exists in case b (a disjunct may have no rows)

The *margin* of an output ``y`` for case ``b`` is ``min_j max_{s in j} (C y - d)_s`` over valid ``j``: it
is ``<= 0`` exactly when ``y`` lies in the case's unsafe set (a disjunct without rows has margin -inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verifier.spec.property import Property


@dataclass(frozen=True)
class SpecBatch:
    lower: np.ndarray
    upper: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    C: np.ndarray
    d: np.ndarray
    member: np.ndarray
    valid: np.ndarray

    @property
    def n_cases(self) -> int:
        return self.lower.shape[0]

    def select(self, cases: np.ndarray) -> SpecBatch:
        """The sub-batch of the given case indices (an index array or boolean mask)."""
        return SpecBatch(*(getattr(self, f)[cases] for f in self.__dataclass_fields__))


def spec_batch(prop: Property, input_dtype=np.float32) -> SpecBatch:
    """Stack the cases of ``prop`` into one padded ``SpecBatch`` (see the module docstring)."""
    n_cases = len(prop.cases)
    # At least one (padding) row and disjunct, so reductions over S and D are never empty.
    n_rows = max([sum(len(dj.d) for dj in case.disjuncts) for case in prop.cases] + [1])
    n_disj = max([len(case.disjuncts) for case in prop.cases] + [1])
    C = np.zeros((n_cases, n_rows, prop.n_outputs))
    d = np.zeros((n_cases, n_rows))
    member = np.zeros((n_cases, n_rows, n_disj), dtype=bool)
    valid = np.zeros((n_cases, n_disj), dtype=bool)
    for b, case in enumerate(prop.cases):
        row = 0
        for j, disjunct in enumerate(case.disjuncts):
            k = len(disjunct.d)
            C[b, row : row + k], d[b, row : row + k] = disjunct.C, disjunct.d
            member[b, row : row + k, j] = True
            valid[b, j] = True
            row += k
    lower = np.stack([case.lower for case in prop.cases]) if n_cases else np.zeros((0, prop.n_inputs))
    upper = np.stack([case.upper for case in prop.cases]) if n_cases else np.zeros((0, prop.n_inputs))
    lo, hi = rounded_box(lower, upper, input_dtype, inward=True)
    return SpecBatch(lower, upper, lo, hi, C, d, member, valid)


def rounded_box(lower: np.ndarray, upper: np.ndarray, dtype, inward: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[lower, upper]`` (float64) rounded to ``dtype`` values: inwards (the largest box of ``dtype``
    values inside it, for attacks) or outwards (the smallest one containing it, for sound bounds).

    Inwards, where no ``dtype`` value lies in ``[lower[i], upper[i]]``, the result has ``lo[i] > hi[i]``;
    projections onto it then land outside the box and the checker (exact comparison) rejects them.
    """
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    lo, hi = lower.astype(dtype), upper.astype(dtype)
    up, down = dtype(np.inf), dtype(-np.inf)
    if inward:
        lo = np.where(lo.astype(np.float64) < lower, np.nextafter(lo, up), lo)
        hi = np.where(hi.astype(np.float64) > upper, np.nextafter(hi, down), hi)
        return lo, hi
    lo = np.where(lo.astype(np.float64) > lower, np.nextafter(lo, down), lo)
    hi = np.where(hi.astype(np.float64) < upper, np.nextafter(hi, up), hi)
    return lo, hi


def disjunct_margins(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``max_{s in j} (C y - d)_s`` per sample and disjunct ``j`` (``(N, D)``; ``-inf`` for a disjunct
    without rows). Arguments as in ``margin``."""
    return per_disjunct(torch.einsum("nso,no->ns", C, y) - d, member)


def per_disjunct(rows: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``(N, S) -> (N, D)``: the largest row of each disjunct (``-inf`` for one without rows)."""
    return torch.where(member, rows.unsqueeze(-1), float("-inf")).amax(dim=1)


def lowest(per_disjunct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``min_j per_disjunct[:, j]`` over the disjuncts in ``mask`` (``(N, D)``); ``inf`` where none."""
    return torch.where(mask, per_disjunct, float("inf")).amin(dim=1)


def margin(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor, member: torch.Tensor, valid: torch.Tensor):
    """Spec margin ``min_j max_{s in j} (C y - d)_s`` per sample; ``<= 0`` iff ``y`` is unsafe.

    Args:
        y: ``(N, n_out)`` outputs. C, d, member, valid: per-sample spec tensors ``(N, S, n_out)``,
            ``(N, S)``, ``(N, S, D)``, ``(N, D)``.
    Returns:
        ``(N,)`` margins (differentiable in ``y``).
    """
    return disjunct_min(torch.einsum("nso,no->ns", C, y) - d, member, valid)


def disjunct_min(rows: torch.Tensor, member: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``min_j max_{s in j} rows_s`` over the valid disjuncts ``j``: ``(N, S) -> (N,)``.

    With ``rows = C y - d`` this is the margin; with rows holding lower bounds of ``C f(x) - d`` minus the
    safety margin, it is ``> 0`` exactly when every disjunct has a row that excludes it.
    """
    return lowest(per_disjunct(rows, member), valid)

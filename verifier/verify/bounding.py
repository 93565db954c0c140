"""Sound exclusion of disjuncts by bound propagation, with a floating-point safety margin.

A disjunct of a case is *excluded* when one of its rows provably fails on the whole box:
``min_x (C f(x))_s > d_s``. The engine computes ``lb_s <= min_x (C f(x))_s`` in float32, so rounding
can push ``lb_s`` up by a little. We therefore require

    lb_s - d_s > tol_s,   tol_s = 1e-5 * (1 + |d_s| + ||C_s||_1 * M_b)

where ``M_b = max_j |f_j(centre of box b)|`` is the size of the outputs on that box. Float32 rounding in
a bound of a quantity of magnitude ``M`` is a few ulps per layer, about 1e-7 M for the depths we
handle; ``1e-5`` leaves a factor of ~100. The box handed to the engine is the file's box rounded
*outwards* to float32, so the bound covers every real point of the VNN-LIB box.

Bounds are also checked against the model's value at each box centre and at the attack's best point
(the one closest to the unsafe set): ``lb_s`` above ``(C f(x))_s + tol_s`` at such a point means the
bound is wrong, and ``UnsoundBoundError`` is raised instead of a verdict.
"""

from __future__ import annotations

import numpy as np
import torch

import verifier
from verifier.verify.deadline import Deadline
from verifier.verify.spec_batch import SpecBatch, rounded_box

REL_TOL = 1e-5
MAX_CASES_PER_CALL = 256


class UnsoundBoundError(AssertionError):
    """A bound contradicts a concrete evaluation of the model: a bug in the bound engine, never an input
    error, so no caller catches it (not a ``VerifierError``)."""


def row_tolerance(spec: SpecBatch, output_scale: np.ndarray) -> np.ndarray:
    """``tol`` of the module docstring, shape ``(B, S)``; ``output_scale`` is ``M_b``, shape ``(B,)``."""
    c_norm = np.abs(spec.C).sum(axis=-1)
    return REL_TOL * (1.0 + np.abs(spec.d) + c_norm * output_scale[:, None])


class Bounder:
    """Bounds ``C f(x)`` over the boxes of a ``SpecBatch`` with the engine's ``BoundedModel``.

    Keeps ``lower`` (``(B, S)``, the largest lower bound of ``(C f(x))_s`` any method gave) and ``excluded``
    (``(B, D)`` bool) across calls: every method's bound is sound, so the best of them is sound too. ``witnesses`` (``(B, n_in)``, e.g. the attack's best points) are
    evaluated besides the box centres to check every bound against concrete values. ``widening``
    (``(B, S)``, float queries only) is added to the margin a row needs to be excluded (``decide_tol``).
    """

    def __init__(self, model, spec: SpecBatch, witnesses: np.ndarray | None = None, device=None,
                 widening: np.ndarray | None = None):  # fmt: skip
        self.model, self.spec, self.device = model, spec, device
        self.input_shape = tuple(model.input_shape)
        self.excluded = np.zeros_like(spec.valid)
        self.lower = np.full(spec.d.shape, -np.inf)  # best lower bound of (C f(x))_s per case, any method
        self.box_lo, self.box_hi = rounded_box(spec.lower, spec.upper, np.float32, inward=False)
        # Inward-rounded points lie in the outward box the engine bounds, so the check is valid there.
        every = np.arange(spec.n_cases)
        rows, y = self.rows_at((spec.lo + spec.hi) / 2, every)
        if witnesses is not None:
            rows = np.minimum(rows, self.rows_at(witnesses, every)[0])
        self.sample_rows = rows
        self.tol = row_tolerance(spec, np.abs(y).max(axis=1) if y.size else np.zeros(len(y)))
        # what a row's lower bound must exceed ``d`` by to exclude it: the margin, plus for a float query
        # the rounding of the network's own evaluation (``float_semantics.row_widening``)
        self.decide_tol = self.tol if widening is None else self.tol + widening

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def rows_at(self, x: np.ndarray, cases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``C f(x_n) - d`` (``(N, S)``) and ``f(x_n)`` (``(N, n_out)``) for points ``x`` (``(N, n_in)``) of
        the cases ``cases`` (``(N,)``)."""
        with torch.no_grad():
            y = self.model(self.tensor(x).reshape((-1,) + self.input_shape)).reshape(len(x), -1)
        y = y.double().cpu().numpy()
        return np.einsum("bso,bo->bs", self.spec.C[cases], y) - self.spec.d[cases], y

    def case_excluded(self) -> np.ndarray:
        """``(B,)``: every disjunct of the case is excluded (padding counts as excluded)."""
        return (self.excluded | ~self.spec.valid).all(axis=1)

    def run(self, method: str, deadline: Deadline) -> bool:
        """Bound every case not yet excluded with ``method``; return whether all cases are now excluded.

        Checks the deadline between engine calls (``DeadlineReached`` propagates) and between alpha-CROWN's
        steps (which then end with the bounds so far).
        """
        todo = np.flatnonzero(~self.case_excluded())
        for begin in range(0, len(todo), MAX_CASES_PER_CALL):
            deadline.check()
            cases = todo[begin : begin + MAX_CASES_PER_CALL]
            shape = (len(cases),) + self.input_shape
            box = verifier.Box(
                self.tensor(self.box_lo[cases]).reshape(shape),
                self.tensor(self.box_hi[cases]).reshape(shape),
            )
            C = self.tensor(self.spec.C[cases])
            bounds = self.model.bounds(box, method=method, C=C, upper=False, stop=deadline.expired)
            lower = bounds.lower.detach().double().cpu().numpy()
            self._update(cases, lower, method)
        return bool(self.case_excluded().all())

    def _update(self, cases: np.ndarray, lower: np.ndarray, method: str) -> None:
        spec = self.spec
        check_against_samples(
            lower - spec.d[cases], self.sample_rows[cases], spec, cases, self.tol[cases], method
        )
        self.lower[cases] = np.maximum(self.lower[cases], lower)
        gap = self.lower[cases] - spec.d[cases]
        row_fails = (gap > self.decide_tol[cases]) & spec.member[cases].any(axis=-1)
        self.excluded[cases] |= (spec.member[cases] & row_fails[..., None]).any(axis=1)


def check_against_samples(gap, sample_rows, spec: SpecBatch, cases, tol, method: str, where="box") -> None:
    """Raise ``UnsoundBoundError`` where a bound of ``C f(x) - d`` exceeds its value at a point of the region.

    ``gap`` (lower bounds of ``C f(x) - d``), ``sample_rows`` (``C f(x_n) - d`` at a point ``x_n`` of region
    ``n``) and ``tol`` have shape ``(N, S)``; ``cases`` (``(N,)``) says whose rows they are. A sound bound
    satisfies ``gap <= sample_rows`` up to rounding, which ``tol`` covers.
    """
    wrong = spec.member[cases].any(axis=-1) & (gap > sample_rows + tol)
    if wrong.any():
        n, s = (int(i) for i in np.argwhere(wrong)[0])
        raise UnsoundBoundError(
            f"{method} lower bound {gap[n, s] + spec.d[cases][n, s]!r} of spec row {s} exceeds the value "
            f"{sample_rows[n, s] + spec.d[cases][n, s]!r} at a point of {where} {n} (case {cases[n]})"
        )

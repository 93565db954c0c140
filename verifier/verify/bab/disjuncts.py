"""How branch and bound scores domains against a property's disjuncts, and gives each disjunct its own domains.

A case's spec rows are grouped into disjuncts: the case is violated at a point where, for some disjunct,
every row is at or below its threshold. A domain's score (``scores``) is therefore the lowest, over the
case's valid disjuncts, of the highest gap of the disjunct's rows: positive when every disjunct has a row
above its threshold with the safety margin, i.e. when the domain is verified.

Two refinements are kept per domain, under keys of the domain dict:

- ``ROWS``: a domain of one disjunct only (``by_disjunct``), ``(N, R)`` row indices. It is closed by its
  own rows, whatever the others do, and needs only those bounded.
- ``JOINT``: per disjunct a lower bound of a convex combination of its rows' gaps, ``(N, D)``, which can
  exclude a disjunct where no single row does; ``check_joint`` tests it against the model's values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from verifier.verify.bab.queue import BOUND, Domains, take
from verifier.verify.bounding import Bounder, UnsoundBoundError
from verifier.verify.spec_batch import lowest, per_disjunct

ROWS = "rows"  # per domain of one disjunct: the indices of its rows (``by_disjunct``)
JOINT = "joint"  # per domain and disjunct, (N, D): a lower bound of a convex combination of its rows' gaps


def scores(bounder: Bounder, cases: Tensor, lower: Tensor, rows: Tensor | None = None,
           joint: Tensor | None = None) -> Tensor:  # fmt: skip
    """The score of each domain, ``(N,)``, for domains of ``cases`` with row bounds ``lower`` (``bounder``:
    the cases' spec and tolerances):

        score_n = min_j max_{s in j} (lower_ns - d_s - tol_s)       (j over the case's valid disjuncts)

    Domains of one disjunct (``rows``, see ``by_disjunct``) score ``max_{s in rows_n} (lower_ns - d_s -
    tol_s)``.

    ``joint`` (``(N, D)``, ``JOINT``): per disjunct j a lower bound of ``sum_{s in j} lam_s (C f(x) - d -
    tol)_s`` over the domain for some ``lam >= 0`` summing to 1 (``input_split.joint_gaps``). Where it is
    positive, no point of the domain has every row of j at or below its threshold, which is what j's
    unsafe set needs: j is excluded even when no single row is (the rows take turns being the high one
    across the domain). A disjunct then scores the larger of the two."""
    spec, c = bounder.spec, cases.numpy()
    gap = lower - torch.as_tensor(spec.d[c] + bounder.decide_tol[c])
    if rows is not None:
        return gap.gather(1, rows).amax(1)
    best = per_disjunct(gap, torch.as_tensor(spec.member[c]))
    return lowest(best if joint is None else torch.maximum(best, joint), torch.as_tensor(spec.valid[c]))


def by_disjunct(domains: Domains, bounder: Bounder, narrow: Callable[[Domains], Domains]) -> Domains:
    """One domain per open disjunct of each domain, holding that disjunct's rows (key ``ROWS``, ``(N, R)``
    row indices, R the most rows of any disjunct, repeated to fill), cut to them by ``narrow`` (the
    brancher's) and scored.

    A case is verified when each of its disjuncts is excluded on the whole box, so the disjuncts can be
    branched on apart: a domain of disjunct j is closed once one of j's rows is above its threshold,
    whatever the other rows do, and it only needs j's rows bounded. Splits that help one disjunct do not
    multiply the domains of another. A disjunct without rows can never be excluded; then the domains are
    returned as they are."""
    spec, c = bounder.spec, domains["case"].numpy()
    gap = domains["lower"].numpy() - spec.d[c] - bounder.decide_tol[c]
    member = spec.member[c]  # (N, S, D)
    excluded = (member & (gap > 0)[..., None]).any(axis=1)
    open_ = spec.valid[c] & ~excluded
    if (open_ & ~member.any(axis=1)).any():
        return domains
    n, j = np.nonzero(open_)
    if not len(n):  # every disjunct is excluded already: nothing to branch on
        return take(domains, torch.zeros(0, dtype=torch.long))
    width = max(1, int(spec.member.sum(axis=1).max()))
    rows = np.stack([np.resize(np.flatnonzero(member[a, :, b]), width) for a, b in zip(n, j)])
    out = take(domains, torch.as_tensor(n, dtype=torch.long))
    out[ROWS] = torch.as_tensor(rows, dtype=torch.long)
    out = narrow(out)
    out[BOUND] = scores(bounder, out["case"], out["lower"], out[ROWS])
    return out


def check_joint(joint: Tensor, rows: np.ndarray, cases: np.ndarray, bounder: Bounder, name: str) -> None:
    """Raise ``UnsoundBoundError`` where a disjunct's ``JOINT`` bound (``(N, D)``, of a convex combination of
    its rows' ``C f(x) - d - decide_tol``) exceeds the largest of those rows at a point of the domain
    (``rows``: ``C f(x) - d`` there, ``(N, S)``), beyond the rounding that ``tol`` covers."""
    member = torch.as_tensor(bounder.spec.member[cases])
    at = per_disjunct(torch.as_tensor(rows - bounder.decide_tol[cases]), member).numpy()
    wrong = joint.numpy() > at + bounder.tol[cases].max(axis=1, initial=0)[:, None]
    if wrong.any():
        n, j = (int(i) for i in np.argwhere(wrong)[0])
        raise UnsoundBoundError(f"{name} joint lower bound {joint[n, j].item()!r} of disjunct {j} exceeds "
                                f"its largest row {at[n, j]!r} at a point of domain {n} (case {cases[n]})")  # fmt: skip

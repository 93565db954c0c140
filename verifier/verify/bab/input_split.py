"""Input splitting: a domain is a box of the input, split in two at the midpoint of one coordinate.

Domain keys (``N`` domains, ``n_in`` flat input coordinates): ``lo``, ``hi`` (``(N, n_in)`` float32, inside
the case's box rounded outwards, so they cover every real point of it), ``case`` (``(N,)``), ``lower``
(``(N, S)`` float64), ``depth`` (``(N,)``, splits so far), ``split_score`` (below) and ``corner``
(``(N, S, n_in)``: per row, the box corner minimising its linear bound, a counterexample candidate). Both halves share the float32 midpoint, so
their union is exactly the parent box.

Which coordinate: the largest sum of three scores, each scaled to a maximum of 1 over the coordinates,
for the row ``s`` deciding the domain's score (the best row of its least excluded disjunct); a
coordinate too narrow to hold a float32 midpoint is never split while another can be:

* the *bound* score ``|A_si| (hi_i - lo_i)``. CROWN bounds row ``s`` by ``A_s x + c_s`` on the box, whose
  minimum there is ``sum_i min(A_si lo_i, A_si hi_i) + c_s``; halving coordinate ``i`` raises it for one
  half by ``|A_si| (hi_i - lo_i) / 2`` to first order. It is stored with each domain when it is bounded
  (key ``split_score``, ``(N, S, n_in)``) at no extra cost, ``A`` being the last function the engine
  concretises. It cannot see looseness of the relaxation itself (the half holding the minimising corner
  gains nothing to first order);
* the *smear* score ``|d(C f)_s / dx_i| (hi_i - lo_i)`` at the box centre (one forward and backward pass
  of the network per domain): how much the row itself varies along ``i``;
* the *width* relative to the case's box: the relaxation is loose where many neurons are unstable,
  which a coordinate left wide keeps causing even when both linear scores call it unimportant.

Domains needed on ACAS Xu (property / net; bound score alone, + smear, + width): 2 / 1_9: > 5000, 852,
1408; 3 / 1_2: 794, 906, 442; 1 / 3_3: 1326, 240, 176; 1 / 2_9: -, > 25000, 3506 (smear alone: 610,
4484, > 5000 on the first three). Where all scores vanish the widest coordinate is split.

Bounding: CROWN by default (``method``); this is a pure input-box refinement, so every child's bound is
a sound bound of the same quantity on a smaller box. A disjunct of several rows (ACAS Xu's "output 0 is
the largest": ``y_j <= y_0`` for every j) is also bounded as a whole: from the rows' linear lower bounds
``A_s x + c_s``, the best convex combination over the box (``joint_gaps``, key ``disjuncts.JOINT``) can be
positive where no single row's bound is, because different rows are high in different parts of the box.
Used when the flat input has at most ``max_inputs`` coordinates: splitting halves one coordinate per
level, which only pays in few dimensions.

Deep domains: a domain still open after ``alpha_depth`` splits is bounded once more with the output's slopes
optimised (``alpha_steps`` steps of alpha-CROWN from CROWN's slopes, CROWN's intermediate bounds; the
better of the two bounds is kept, and the split scores and joint bounds stay CROWN's). Near a tie the
domains get small and CROWN's fixed lower lines of the few unstable neurons are what keeps them open. On
the 256 worst open domains of ACAS Xu 3_3 property 2 after 40 s (CROWN bounds near -0.009, the exact
minima 0.002-0.004 by MILP), 10 steps closed 186 of them at 0.5 ms per domain, batched. For the whole search
(1 thread), 3_3 prop_2 went from a timeout at 116 s to unsat in 61 s, and 4_2 prop_2 from 96 s to 18 s.
Easy instances stay within noise: 1_1 prop_3 took 2.1 s against 2.0 s, and 1_9 prop_2 1.1 s against 1.0 s.
Optimising the slopes of every domain costs far more (2_9 prop_1: 97 s against 2 s), and so does a
triangle-relaxation LP per domain (HiGHS: 3.5-6 ms each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

import verifier
from verifier.engine import alpha
from verifier.engine.bounds import intermediate_bounds
from verifier.engine.state import BoundConfig, BoundState
from verifier.verify.bab.disjuncts import JOINT, scores
from verifier.verify.bab.queue import Domains, concat
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline

ASPECT = 2.0**8  # the most a coordinate may be halved more often than the widest, relative to the case box
JOINT_STEPS = 16  # exponentiated-gradient steps on the weights of a disjunct's rows (``joint_gaps``)


@dataclass(frozen=True)
class InputSplitConfig:
    max_inputs: int = 16
    method: str = "crown"
    alpha_depth: int | None = 18  # open domains split this often get optimised output slopes (None: never)
    alpha_steps: int = 10


class InputSplit:
    """The ``Brancher`` of input splitting (see the module docstring) for the cases of ``bounder``."""

    name = "bab-input"
    max_parents = None
    by_disjunct = False  # input domains are cheap to bound in every row: the cases' disjuncts stay together

    def __init__(self, bounder: Bounder, config: InputSplitConfig = InputSplitConfig()):
        self.bounder, self.config = bounder, config

    @staticmethod
    def applies(model, config: InputSplitConfig) -> bool:
        """Whether the model's input is small enough for input splitting."""
        return int(np.prod(model.input_shape)) <= config.max_inputs

    def roots(self, cases: np.ndarray, deadline: Deadline | None = None) -> Domains:
        """One domain per case in ``cases``: its outward-rounded box and the best bounds found so far (no
        bound pass, so nothing for ``deadline`` to cut short)."""
        b = self.bounder
        return {
            "lo": torch.as_tensor(b.box_lo[cases]),
            "hi": torch.as_tensor(b.box_hi[cases]),
            "case": torch.as_tensor(cases, dtype=torch.int64),
            "lower": torch.as_tensor(b.lower[cases]),
            "depth": torch.zeros(len(cases), dtype=torch.int64),
        }

    def boxes(self, domains: Domains) -> tuple[Tensor, Tensor]:
        return domains["lo"], domains["hi"]

    def points(self, domains: Domains) -> Tensor:
        """``(N, 1 + S, n_in)``: each box's centre and, per spec row, the corner minimising the row's
        linear bound (where the relaxation expects the row to be lowest)."""
        lo, hi = domains["lo"], domains["hi"]
        centre = ((lo.double() + hi.double()) / 2).float().clamp(min=lo, max=hi)
        return torch.cat([centre.unsqueeze(1), domains["corner"]], dim=1)

    def split(self, parents: Domains) -> Domains:
        """Both halves of every parent along its chosen coordinate: ``2N`` children, lower halves first."""
        lo, hi, cases = parents["lo"], parents["hi"], parents["case"].numpy()
        rows = torch.arange(lo.shape[0])
        deciding = torch.as_tensor(_deciding_row(self.bounder, cases, parents["lower"].numpy()))
        root = torch.as_tensor(self.bounder.box_hi[cases] - self.bounder.box_lo[cases])
        relative = (hi - lo) / root.clamp(min=torch.finfo(root.dtype).tiny)
        score = (_unit_max(parents["split_score"][rows, deciding]) + _unit_max(self._smear(parents, deciding))
                 + _unit_max(relative))  # fmt: skip
        score = torch.where(score.amax(dim=1, keepdim=True) > 0, score, hi - lo)
        # One float32 value shared by both halves, inside [lo, hi] (rounding of the mean is monotone); a
        # coordinate whose interval holds no float32 value strictly inside would give a child equal to its
        # parent: it is split only when every coordinate is that narrow
        middle = ((lo.double() + hi.double()) / 2).float().clamp(min=lo, max=hi)
        splittable = (middle > lo) & (middle < hi)
        score = torch.where(splittable | ~splittable.any(dim=1, keepdim=True), score, -torch.inf)
        # nor is a coordinate ASPECT times narrower (relative to the case's box) than the widest: the linear
        # scores can keep pointing at one coordinate whose halving gains nothing, while the bound is loose
        # along another that they do not see (a product x y near x = 1 hardly depends on y to first order)
        thin = relative * ASPECT < relative.amax(dim=1, keepdim=True)
        score = torch.where(thin, -torch.inf, score)
        dim = score.argmax(dim=1)
        mid = middle[rows, dim]
        lower_hi, upper_lo = hi.clone(), lo.clone()
        lower_hi[rows, dim], upper_lo[rows, dim] = mid, mid
        children = concat([parents | {"hi": lower_hi}, parents | {"lo": upper_lo}])
        children["depth"] = children["depth"] + 1
        return children

    def _smear(self, domains: Domains, row: Tensor) -> Tensor:
        """``(N, n_in)``: ``|d(C f)_row / dx| x width`` at each box centre (module docstring)."""
        b, lo, hi = self.bounder, domains["lo"], domains["hi"]
        cases = domains["case"].numpy()
        centre = b.tensor(((lo.double() + hi.double()) / 2).numpy()).requires_grad_(True)
        with torch.enable_grad():
            y = b.model(centre.reshape((-1,) + b.input_shape)).reshape(len(cases), -1)
            c_row = b.tensor(b.spec.C[cases])[torch.arange(len(cases)), row]
            (grad,) = torch.autograd.grad((c_row * y).sum(), centre)
        return grad.abs().cpu() * (hi - lo)

    def bound(self, domains: Domains) -> Tensor:
        """``(N, S)`` lower bounds of ``(C f(x))_s`` over each box, by ``config.method``; also sets the
        domains' ``split_score`` and ``corner`` from the bound's input coefficients (zero if the method
        has none)."""
        b = self.bounder
        shape = (-1,) + b.input_shape
        box = _RecordingBox(b.tensor(domains["lo"]).reshape(shape), b.tensor(domains["hi"]).reshape(shape))
        C = b.tensor(b.spec.C[domains["case"].numpy()])
        with torch.no_grad():
            lower = b.model.bounds(box, method=self.config.method, C=C, upper=False).lower.detach()
        lo, hi = domains["lo"].unsqueeze(1), domains["hi"].unsqueeze(1)  # (N, 1, n_in)
        a, c = box.seen if box.seen else (None, None)
        cases = domains["case"].numpy()
        if a is None or a.shape[:2] != (C.shape[1], C.shape[0]):
            a, c = torch.zeros(C.shape[1], C.shape[0], lo.shape[2]), None
        a = a.detach().flatten(2).transpose(0, 1).cpu()  # (N, S, n_in)
        domains["split_score"] = a.abs() * (hi - lo)
        domains["corner"] = torch.where(a > 0, lo, hi)
        lower = lower.double().cpu()
        joint = torch.full(b.spec.valid[cases].shape, -torch.inf, dtype=torch.float64)
        if c is not None:
            threshold = torch.as_tensor(b.spec.d[cases] + b.decide_tol[cases])
            member = torch.as_tensor(b.spec.member[cases])
            # only where no row excludes the disjunct already
            member &= ~(member & (lower > threshold)[..., None]).any(1, keepdim=True)
            todo = (member.sum(1) >= 2).any(1).nonzero().flatten()
            if len(todo):
                c = c.detach().transpose(0, 1).cpu()
                joint[todo] = joint_gaps(a[todo], c[todo], domains["lo"][todo], domains["hi"][todo],
                                         threshold[todo], member[todo])  # fmt: skip
        domains[JOINT] = torch.maximum(domains[JOINT], joint) if JOINT in domains else joint
        return self._optimise_deep(domains, lower, box, C)

    def _optimise_deep(self, domains: Domains, lower: Tensor, box: verifier.Box, C: Tensor) -> Tensor:
        """``lower`` raised, on the domains still open at depth ``alpha_depth`` or more, by CROWN with the
        output's slopes optimised (``alpha_steps`` steps from CROWN's, intermediate bounds by CROWN);
        ``box`` and ``C``: the domains' boxes and spec rows, as ``bound`` bounded them."""
        depth = self.config.alpha_depth
        if depth is None:
            return lower
        score = scores(self.bounder, domains["case"], lower, joint=domains[JOINT])
        todo = ((score <= 0) & (domains["depth"] >= depth)).nonzero().flatten()
        if not len(todo):
            return lower
        index = todo.to(C.device)
        cfg = BoundConfig(method="alpha-crown-final", alpha_steps=self.config.alpha_steps)
        state = BoundState(self.bounder.model.graph, verifier.Box(box.lower[index], box.upper[index]), cfg)
        with torch.no_grad():
            intermediate_bounds(state)
            tight = alpha.optimise(state, C[index].transpose(0, 1))
        lower[todo] = torch.maximum(lower[todo], tight.T.double().cpu())
        return lower


@dataclass(frozen=True)
class _RecordingBox(verifier.Box):
    """A box that keeps the coefficients ``A`` of the last linear function concretised over it.

    The engine concretises the output's spec rows after every intermediate bound, so after a bound call
    of the CROWN family ``seen`` holds ``A`` (``[S, B, *input_shape]``) and ``c`` (``[S, B]``) of the final
    ``A x + c``.
    """

    seen: list = field(default_factory=list, compare=False)

    def concretize(self, a: Tensor, c: Tensor) -> Tensor:
        self.seen[:] = [a, c]
        return super().concretize(a, c)

    def to(self, device=None, dtype=None) -> _RecordingBox:
        return _RecordingBox(self.lower.to(device, dtype), self.upper.to(device, dtype), self.seen)


def joint_gaps(a: Tensor, c: Tensor, lo: Tensor, hi: Tensor, threshold: Tensor, member: Tensor,
               steps: int = JOINT_STEPS) -> Tensor:  # fmt: skip
    """``(N, D)``: per domain and disjunct j of at least two rows, a lower bound over the box ``[lo, hi]``
    (``(N, n_in)``) of ``sum_{s in j} lam_s (C f(x) - threshold)_s`` for weights ``lam >= 0`` summing to 1
    (``-inf`` for disjuncts of fewer rows), from lower bounds ``a_s x + c_s`` of the rows (``a``
    ``(N, S, n_in)``, ``c`` ``(N, S)``) valid on the box; ``member`` ``(N, S, D)``.

    For given weights the bound is ``sum_s lam_s (c_s - threshold_s) + min_x (sum_s lam_s a_s) x``, the
    minimum over the box taken corner by corner: concave in ``lam``, whose maximum is (LP duality) the
    minimum over the box of the largest row bound, ``min_x max_s (a_s x + c_s - threshold_s)``. The weights
    climb it by exponentiated-gradient steps (they stay on the simplex; the gradient scaled to a largest
    entry of 1, steps of 2 / sqrt(t + 1)), from equal weights; the best value seen is kept. On random
    5-input, 4-row problems, 16 steps came within 0.02 of the optimum on average, 40 within 0.008 (the
    best single row: 0.44); 16 cost 2-8 ms per call for 64-2048 domains. Any weights give a sound bound,
    computed in float64."""
    a, c, lo, hi = a.double(), c.double(), lo.double()[:, None], hi.double()[:, None]
    offset = (c - threshold)[..., None]  # (N, S, 1)
    member = member & (member.sum(1, keepdim=True) >= 2)  # (N, S, D)
    best = torch.full(member.shape[::2], -torch.inf, dtype=torch.float64)
    if not member.any():
        return best
    lam = member.double() / member.sum(1, keepdim=True).clamp(min=1)  # (N, S, D): equal weights
    for step in range(steps + 1):
        w = torch.einsum("nsd,nsi->ndi", lam, a)  # (N, D, n_in): the combined row's coefficients
        corner = torch.where(w > 0, lo, hi)  # the minimising corner of each combined row
        value = (lam * offset).sum(1) + (w * corner).sum(2)
        best = torch.maximum(best, torch.where(member.any(1), value, -torch.inf))
        if step == steps:
            break
        grad = offset + torch.einsum("nsi,ndi->nsd", a, corner)  # the value's supergradient in lam
        scale = grad.abs().where(member, 0).amax(1, keepdim=True).clamp(min=1e-30)
        step_size = 2 / math.sqrt(1 + step)  # the best of the schedules tried (see the docstring)
        lam = lam * torch.exp(step_size * grad / scale).where(member, 0)
        lam = lam / lam.sum(1, keepdim=True).clamp(min=1e-300)
    return best


def _unit_max(score: Tensor) -> Tensor:
    """``score`` (``(N, n_in)``, non-negative) divided by its maximum per row (rows of zeros stay zero)."""
    return score / score.amax(dim=1, keepdim=True).clamp(min=torch.finfo(score.dtype).tiny)


def _deciding_row(bounder: Bounder, cases: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``(N,)``: the row deciding each domain's score -- in the valid disjunct whose best row bound
    (minus ``d`` and the margin) is lowest, that best row."""
    spec = bounder.spec
    gap = lower - spec.d[cases] - bounder.tol[cases]  # (N, S)
    member = spec.member[cases]  # (N, S, D)
    per_row = np.where(member, gap[..., None], -np.inf)
    per_disjunct = np.where(spec.valid[cases], per_row.max(axis=1), np.inf)  # (N, D)
    worst = per_disjunct.argmin(axis=1)
    in_worst = per_row[np.arange(len(cases)), :, worst]  # (N, S)
    return in_worst.argmax(axis=1)

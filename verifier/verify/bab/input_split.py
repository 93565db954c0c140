"""Input splitting: a domain is a box of the input, split in two at the midpoint of one coordinate.

Domain keys (``N`` domains, ``n_in`` flat input coordinates): ``lo``, ``hi`` (``(N, n_in)`` float32, inside
the case's box rounded outwards, so they cover every real point of it), ``case`` (``(N,)``), ``lower``
(``(N, S)`` float64), ``depth`` (``(N,)``, splits so far) and ``split_score`` (below). Both halves share the float32 midpoint, so
their union is exactly the parent box.

Which coordinate: the one whose halving improves the deciding row's linear bound most. CROWN bounds
row ``s`` by ``A_s x + c_s`` on the box, whose minimum there is ``sum_i min(A_si lo_i, A_si hi_i) + c_s``;
moving either end of coordinate ``i`` to the midpoint raises that minimum for one half by
``|A_si| (hi_i - lo_i) / 2`` (the other half keeps it, to first order). ``|A_si| (hi_i - lo_i)`` is stored
with each domain when it is bounded (key ``split_score``, ``(N, S, n_in)``) -- it costs nothing extra,
``A`` being the last function the engine concretises -- and the deciding row ``s`` is the best row of
the least excluded disjunct. Where all scores vanish the widest coordinate is split.

Bounding: CROWN by default (``method``); this is a pure input-box refinement, so every child's bound is
a sound bound of the same quantity on a smaller box. Used when the flat input has at most ``max_inputs``
coordinates: splitting halves one coordinate per level, which only pays in few dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

import verifier
from verifier.verify.bab.queue import Domains, concat
from verifier.verify.bounding import Bounder


@dataclass(frozen=True)
class InputSplitConfig:
    max_inputs: int = 16
    method: str = "crown"


class InputSplit:
    """The ``Brancher`` of input splitting (see the module docstring) for the cases of ``bounder``."""

    name = "bab-input"
    exact_boxes = True

    def __init__(self, bounder: Bounder, config: InputSplitConfig = InputSplitConfig()):
        self.bounder, self.config = bounder, config

    @staticmethod
    def applies(model, config: InputSplitConfig) -> bool:
        """Whether the model's input is small enough for input splitting."""
        return int(np.prod(model.input_shape)) <= config.max_inputs

    def roots(self, cases: np.ndarray) -> Domains:
        """One domain per case in ``cases``: its outward-rounded box and the best bounds found so far."""
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

    def split(self, parents: Domains) -> Domains:
        """Both halves of every parent along its chosen coordinate: ``2N`` children, lower halves first."""
        lo, hi = parents["lo"], parents["hi"]
        rows = torch.arange(lo.shape[0])
        deciding = torch.as_tensor(
            _deciding_row(self.bounder, parents["case"].numpy(), parents["lower"].numpy())
        )
        score = parents["split_score"][rows, deciding]
        score = torch.where(score.amax(dim=1, keepdim=True) > 0, score, hi - lo)
        dim = score.argmax(dim=1)
        a, b = lo[rows, dim], hi[rows, dim]
        # One float32 value shared by both halves, inside [a, b] (rounding of the mean is monotone).
        mid = ((a.double() + b.double()) / 2).float().clamp(min=a, max=b)
        lower_hi, upper_lo = hi.clone(), lo.clone()
        lower_hi[rows, dim], upper_lo[rows, dim] = mid, mid
        children = concat([parents | {"hi": lower_hi}, parents | {"lo": upper_lo}])
        children["depth"] = children["depth"] + 1
        return children

    def bound(self, domains: Domains) -> Tensor:
        """``(N, S)`` lower bounds of ``(C f(x))_s`` over each box, by ``config.method``; also sets the
        domains' ``split_score`` from the bound's input coefficients (zero if the method has none)."""
        b = self.bounder
        shape = (-1,) + b.input_shape
        box = _RecordingBox(b.tensor(domains["lo"]).reshape(shape), b.tensor(domains["hi"]).reshape(shape))
        C = b.tensor(b.spec.C[domains["case"].numpy()])
        with torch.no_grad():
            lower = b.model.bounds(box, method=self.config.method, C=C, upper=False).lower.detach()
        width = (domains["hi"] - domains["lo"]).unsqueeze(1)  # (N, 1, n_in)
        a = box.seen[-1].detach() if box.seen else None
        if a is None or a.shape[:2] != (C.shape[1], C.shape[0]):
            domains["split_score"] = torch.zeros(C.shape[:2] + width.shape[2:])
        else:
            domains["split_score"] = a.flatten(2).transpose(0, 1).abs().cpu() * width
        return lower.double().cpu()


@dataclass(frozen=True)
class _RecordingBox(verifier.Box):
    """A box that keeps the coefficients ``A`` of the last linear function concretised over it.

    The engine concretises the output's spec rows after every intermediate bound, so after a bound call
    of the CROWN family ``seen[-1]`` is the ``A`` (``[S, B, *input_shape]``) of the final ``A x + c``.
    """

    seen: list = field(default_factory=list, compare=False)

    def concretize(self, a: Tensor, c: Tensor) -> Tensor:
        self.seen[:] = [a]
        return super().concretize(a, c)

    def to(self, device=None, dtype=None) -> _RecordingBox:
        return _RecordingBox(self.lower.to(device, dtype), self.upper.to(device, dtype), self.seen)


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

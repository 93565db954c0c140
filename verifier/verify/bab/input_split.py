"""Input splitting: a domain is a box of the input, split in two at the midpoint of one coordinate.

Domain keys (``N`` domains, ``n_in`` flat input coordinates): ``lo``, ``hi`` (``(N, n_in)`` float32, inside
the case's box rounded outwards, so they cover every real point of it), ``case`` (``(N,)``), ``lower``
(``(N, S)`` float64) and ``depth`` (``(N,)``, splits so far). Both halves share the float32 midpoint, so
their union is exactly the parent box.

Which coordinate: the *smear* score ``|d(C f)_s / dx_i| x (hi_i - lo_i)`` at the box centre, for the row
``s`` that decides the domain's score (the best row of its least excluded disjunct). It estimates how
much the row can vary along coordinate ``i`` over the box -- the looseness that halving that width
removes first -- and costs one forward and backward pass of the network per domain, small next to the
CROWN bound of the children. Where the gradient vanishes the widest coordinate is split.

Bounding: CROWN by default (``method``); this is a pure input-box refinement, so every child's bound is
a sound bound of the same quantity on a smaller box. Used when the flat input has at most ``max_inputs``
coordinates: splitting halves one coordinate per level, which only pays in few dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        rows, dim = torch.arange(lo.shape[0]), self._choose(parents)
        a, b = lo[rows, dim], hi[rows, dim]
        # One float32 value shared by both halves, inside [a, b] (rounding of the mean is monotone).
        mid = ((a.double() + b.double()) / 2).float().clamp(min=a, max=b)
        lower_hi, upper_lo = hi.clone(), lo.clone()
        lower_hi[rows, dim], upper_lo[rows, dim] = mid, mid
        children = concat([parents | {"hi": lower_hi}, parents | {"lo": upper_lo}])
        children["depth"] = children["depth"] + 1
        return children

    def bound(self, children: Domains) -> Tensor:
        """``(N, S)`` lower bounds of ``(C f(x))_s`` over each child's box, by ``config.method``."""
        b = self.bounder
        shape = (-1,) + b.input_shape
        box = verifier.Box(b.tensor(children["lo"]).reshape(shape), b.tensor(children["hi"]).reshape(shape))
        cases = children["case"].numpy()
        with torch.no_grad():
            lower = b.model.bounds(box, method=self.config.method, C=b.tensor(b.spec.C[cases]), upper=False)
        return lower.lower.detach().double().cpu()

    def _choose(self, parents: Domains) -> Tensor:
        """``(N,)`` coordinate to split per domain: the largest smear score (module docstring)."""
        b, lo, hi = self.bounder, parents["lo"], parents["hi"]
        cases = parents["case"].numpy()
        row = torch.as_tensor(_deciding_row(b, cases, parents["lower"].numpy()), device=b.device)
        centre = b.tensor(((lo.double() + hi.double()) / 2).numpy()).requires_grad_(True)
        with torch.enable_grad():
            y = b.model(centre.reshape((-1,) + b.input_shape)).reshape(len(cases), -1)
            c_row = b.tensor(b.spec.C[cases, :, :])[torch.arange(len(cases)), row]
            (grad,) = torch.autograd.grad((c_row * y).sum(), centre)
        width = (hi - lo).to(grad.device)
        smear = grad.abs() * width
        smear = torch.where(smear.amax(dim=1, keepdim=True) > 0, smear, width)
        return smear.argmax(dim=1).cpu()


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

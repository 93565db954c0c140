"""Falsification: batched multi-restart PGD on the spec margin, with probes and diversified restarts.

The objective is the spec margin of ``spec_batch.margin`` (``<= 0`` iff the output is unsafe). A round
attacks a batch of *boxes*, each inside one case's box: the case boxes themselves (``run_round``) or
sub-boxes that branch and bound finds promising (``attack_boxes``). Boxes are rounded inwards to the
input type, so every iterate is a point the model file can take. Per box, one round

1. evaluates many probes in one batch: the best point of earlier rounds for the case (clipped into the
   box), the centre and the two extreme corners, random vertices (where ReLU networks often take
   extreme values) and uniform points; it keeps the ``restarts`` lowest margins,
   *distinct values first*: a ReLU network is constant wherever a whole layer is inactive (76 % of the
   box of ACAS Xu 1_9 property 7 gives one output value), and ties would start every restart on the
   same flat piece, where the gradient is zero;
2. gives restart ``k`` a target: ``k mod (D + 1)`` is 0 for the spec margin itself and ``j`` for the
   ``j``-th disjunct alone. The margin's minimum over disjuncts only pulls towards the disjunct that is
   closest *now*, which is often not one that can be reached;
3. lets the second half of the restarts first spend ``odi_steps`` large steps maximising a random linear
   function of the outputs (output-diversified initialisation, Tashiro et al. 2020): starts then spread
   over the output space instead of the neighbourhood of the best probes, where PGD stalls on local
   minima (MNIST 256x6 property 1 at eps 0.05 is found only this way);
4. runs PGD: steps along the sign of a momentum average of normalised gradients, of a size drawn per
   restart log-uniformly from ``step_range`` (fractions of the box width; narrow unsafe regions need
   small steps, wide ones large) and decayed geometrically; a restart on a flat piece (zero gradient)
   takes a random sign step to leave it.

The points whose margin is ``<= 0`` under the torch model are re-checked on the ONNX file by
``OnnxChecker``; only a point that passes is returned. The torch model is only a guide: its verdict is
never trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from verifier.spec.property import Property
from verifier.verify.deadline import Deadline
from verifier.verify.onnx_check import Counterexample, OnnxChecker
from verifier.verify.spec_batch import SpecBatch, disjunct_margins, lowest, margin, rounded_box


@dataclass(frozen=True)
class AttackConfig:
    """Size of one attack round (per box: ``run_round`` attacks every case box, ``attack_boxes`` each
    sub-box it is given).

    Each round evaluates ``probes`` random points per box (fewer for wide inputs: at most
    ``probe_values`` numbers per box), keeps the ``restarts`` best as starts and runs ``odi_steps``
    diversification steps of ``odi_step`` box widths (second half of the restarts only), then ``steps``
    PGD iterations with ``momentum``; step sizes are described in the module docstring.
    """

    probes: int = 4096
    probe_values: int = 1_000_000
    restarts: int = 64
    steps: int = 52
    odi_steps: int = 8
    odi_step: float = 0.25
    momentum: float = 0.75
    step_range: tuple[float, float] = (0.003, 0.5)
    step_decay: float = 0.02
    check_top: int = 4
    max_batch: int = 4096


# ``attack_boxes``' default: branch and bound hands over many sub-boxes at once, each much smaller than
# the case box, so fewer probes and restarts per box keep one call near the cost of one full round
# (about 0.2 s for 64 ACAS Xu sub-boxes on one core).
SUB_BOX_CONFIG = AttackConfig(probes=256, restarts=16, steps=30, odi_steps=4)

Forward = Callable[[torch.Tensor], torch.Tensor]


def start_points(lo: np.ndarray, hi: np.ndarray, lead: np.ndarray, count: int, rng: np.random.Generator):
    """``count`` probes in each box ``[lo[u], hi[u]]`` (``lo``, ``hi``: ``(U, n_in)``): ``(U, count, n_in)``.

    Each box's probes lead with ``lead[u]`` (e.g. the best point of earlier rounds, clipped into the
    box), its centre and its all-lower / all-upper corners, then mix random vertices with uniform points.
    """
    n_in = lo.shape[1]
    fixed = np.stack([lead, (lo + hi) / 2, lo, hi], axis=1)[:, :count]
    rest = count - fixed.shape[1]
    n_vertices = rest // 2
    low, high = lo[:, None], hi[:, None]
    vertices = np.where(rng.random((len(lo), n_vertices, n_in)) < 0.5, high, low)
    uniform = low + rng.random((len(lo), rest - n_vertices, n_in)) * (high - low)
    return np.clip(np.concatenate([fixed, vertices, uniform], axis=1), low, high)


def distinct_lowest(margins: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest ``margins``, each distinct value once before any repeat of it."""
    order = np.argsort(margins, kind="stable")
    ranked = margins[order]
    repeat = np.concatenate([[False], ranked[1:] == ranked[:-1]])
    return np.concatenate([order[~repeat], order[repeat]])[:count]


def target_masks(valid: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The disjuncts restart ``rank`` descends on (``(N, D)`` bool, from ``valid``: ``(N, D)``).

    ``rank mod (D_n + 1)`` (``D_n`` valid disjuncts) is 0 for all of them (the spec margin) and ``j`` for
    the ``j``-th valid disjunct alone.
    """
    pick = rank % (valid.sum(axis=1) + 1)
    alone = valid & (np.cumsum(valid, axis=1) == pick[:, None])
    return np.where((pick == 0)[:, None], valid, alone)


@dataclass(frozen=True)
class Restarts:
    """Per-restart tensors of one PGD batch (``N`` restarts, flat inputs).

    ``x0``, ``lo``, ``hi``: ``(N, n_in)``; ``spec``: ``(C, d, member, valid)`` as in ``margin``;
    ``target``: ``(N, D)`` disjuncts to descend on; ``direction``: ``(N, n_out)`` random output
    direction for diversification (zero rows: none); ``step0``: ``(N, 1)`` initial step in box widths.
    """

    x0: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    spec: tuple
    target: torch.Tensor
    direction: torch.Tensor
    step0: torch.Tensor


def descent_sign(grad: torch.Tensor, velocity: torch.Tensor, momentum: float, noise: torch.Generator):
    """Update ``velocity`` (``(N, n_in)``) with the per-sample normalised ``grad``; return its sign.

    A sample whose gradient is zero sits on a flat piece of the network: it gets a random unit-scale
    gradient instead, so that it walks until the function varies again.
    """
    scale = grad.abs().mean(dim=1, keepdim=True)
    grad = grad / scale.clamp_min(torch.finfo(grad.dtype).tiny)
    flat = scale == 0
    if bool(flat.any()):
        grad = grad + flat * torch.randn(grad.shape, generator=noise, dtype=grad.dtype).to(grad.device)
    velocity.mul_(momentum).add_(grad)
    return velocity.sign()


def pgd(forward: Forward, r: Restarts, config: AttackConfig, deadline: Deadline, noise: torch.Generator):
    """Minimise the spec margin from ``r.x0`` within ``[r.lo, r.hi]``, after the diversification steps.

    Returns the best point (``(N, n_in)``) and its spec margin (``(N,)``) seen for every restart;
    stops early at the deadline or once a margin is negative, keeping what it has.
    """
    x = r.x0.clone()
    best_x, best_m = x.clone(), torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    width = r.hi - r.lo
    diverse = (r.direction != 0).any(dim=1, keepdim=True)
    odi_size, step = config.odi_step * width, r.step0 * width
    decay = config.step_decay ** (1.0 / max(config.steps - 1, 1))
    velocity = torch.zeros_like(x)
    C, d, member, valid = r.spec
    total = config.odi_steps + config.steps
    for iteration in range(total + 1):
        x.requires_grad_(True)
        y = forward(x).reshape(x.shape[0], -1)
        per_disjunct = disjunct_margins(y, C, d, member)
        m = lowest(per_disjunct, valid)
        with torch.no_grad():
            better = m < best_m
            best_m = torch.where(better, m, best_m)
            best_x[better] = x[better]
        # One point below zero ends the batch: the round re-checks it on the ONNX file at once.
        if iteration == total or deadline.expired() or bool((best_m < 0).any()):
            break
        loss = lowest(per_disjunct, r.target)
        if iteration < config.odi_steps:
            loss = torch.where(diverse[:, 0], -(y * r.direction).sum(dim=1), loss)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            if iteration == config.odi_steps:
                velocity.zero_()  # the diversification direction says nothing about the margin
            size = torch.where(diverse, odi_size, step) if iteration < config.odi_steps else step
            x = torch.clamp(x - size * descent_sign(grad, velocity, config.momentum, noise), r.lo, r.hi)
            if iteration >= config.odi_steps:
                step = step * decay
    return best_x.detach(), best_m.detach()


class Attack:
    """Repeated attack rounds on one property; each round uses fresh random starts.

    Args:
        forward: the torch model (float32), ``(N, *input_shape) -> (N, ...)`` outputs.
        input_shape: per-sample input shape of ``forward``.
        spec: the property as a ``SpecBatch``; checker: the onnxruntime checker; prop: the property.
    """

    def __init__(
        self,
        forward: Forward,
        input_shape,
        spec: SpecBatch,
        checker: OnnxChecker,
        prop: Property,
        config: AttackConfig = AttackConfig(),
        seed: int = 0,
        device=None,
    ):
        self.forward, self.input_shape = forward, tuple(input_shape)
        self.spec, self.checker, self.prop, self.config = spec, checker, prop, config
        self.rng = np.random.default_rng(seed)
        self.noise = torch.Generator().manual_seed(seed)
        self.device = device
        self.rounds = 0
        # The point of lowest margin seen so far per case (starts at the centre).
        self.best_x = ((spec.lo + spec.hi) / 2).astype(np.float32)
        self.best_margin = np.full(spec.n_cases, np.inf)

    def run_round(self, deadline: Deadline) -> Counterexample | None:
        """One round over every case box; returns a checked counterexample or ``None``.

        Raises ``DeadlineReached`` if the deadline passes between two batches.
        """
        self.rounds += 1
        cases = np.arange(self.spec.n_cases)
        return self._attack(self.spec.lo, self.spec.hi, cases, self.config, deadline)

    def attack_boxes(
        self,
        lower: np.ndarray,
        upper: np.ndarray,
        cases: np.ndarray,
        deadline: Deadline,
        config: AttackConfig | None = None,
    ) -> Counterexample | None:
        """One round over sub-boxes of the property's case boxes (e.g. branch and bound's best domains).

        Args:
            lower, upper: ``(N, n_in)`` sub-box bounds (float64, flat); each is intersected with the
                box of its case, so a counterexample always lies in the case's box.
            cases: ``(N,)`` index of the case each sub-box belongs to (its disjuncts are the targets).
            deadline: polled between PGD steps; ``DeadlineReached`` if it passes between two batches.
            config: the round's size per sub-box; ``SUB_BOX_CONFIG`` by default.
        Returns:
            A counterexample checked on the ONNX file, or ``None``.
        """
        cases = np.asarray(cases, dtype=np.int64)
        lo, hi = rounded_box(lower, upper, self.checker.dtype, inward=True)
        lo, hi = np.maximum(lo, self.spec.lo[cases]), np.minimum(hi, self.spec.hi[cases])
        return self._attack(lo, hi, cases, config or SUB_BOX_CONFIG, deadline)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        # the search runs in float32 whatever the model's precision (a float64 model's outputs only
        # guide it; onnxruntime checks every candidate exactly)
        return self.forward(x.reshape((x.shape[0],) + self.input_shape)).to(torch.float32)

    def _attack(self, lo, hi, cases, config: AttackConfig, deadline: Deadline) -> Counterexample | None:
        """Probes and PGD on the boxes ``[lo[u], hi[u]]`` (``(U, n_in)``) of cases ``cases`` (``(U,)``),
        as many boxes per PGD batch as ``max_batch`` allows."""
        per_chunk = max(1, config.max_batch // config.restarts)
        for begin in range(0, len(cases), per_chunk):
            part = slice(begin, begin + per_chunk)
            starts, unit = self._best_probes(lo[part], hi[part], cases[part], config, deadline)
            found = self._descend(starts, lo[part][unit], hi[part][unit], cases[part][unit], config, deadline)
            if found is not None or deadline.expired():
                return found
        return None

    def _spec_tensors(self, owner: np.ndarray) -> tuple:
        spec = self.spec
        floats = tuple(self._tensor(a[owner]) for a in (spec.C, spec.d))
        return floats + tuple(
            torch.as_tensor(a[owner], device=self.device) for a in (spec.member, spec.valid)
        )

    def _margins(self, x: np.ndarray, owner: np.ndarray, config: AttackConfig) -> np.ndarray:
        """Torch margins of flat points ``x`` for their cases ``owner``, in batches."""
        out = []
        with torch.no_grad():
            for begin in range(0, len(x), config.max_batch):
                part = slice(begin, begin + config.max_batch)
                y = self._model(self._tensor(x[part])).reshape(len(x[part]), -1)
                out.append(margin(y, *self._spec_tensors(owner[part])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _best_probes(self, lo, hi, cases, config: AttackConfig, deadline: Deadline):
        """Evaluate the probes of every box; keep the ``restarts`` best (``distinct_lowest``) of each.

        Returns the starts (``(U * R, n_in)``, grouped by box) and the box index of each (``(U * R,)``).
        """
        n_in = lo.shape[1]
        n_probes = max(config.restarts, min(config.probes, config.probe_values // max(n_in, 1)))
        group = max(1, config.probe_values // (n_probes * max(n_in, 1)))  # bounds the probes' memory
        starts = []
        for begin in range(0, len(cases), group):
            deadline.check()
            part = slice(begin, begin + group)
            lead = self.best_x[cases[part]]  # clipped into the box by start_points
            points = start_points(lo[part], hi[part], lead, n_probes, self.rng)
            owner = np.repeat(cases[part], n_probes)
            m = self._margins(points.reshape(-1, n_in), owner, config).reshape(len(points), n_probes)
            best = np.stack([distinct_lowest(row, config.restarts) for row in m])
            starts.append(np.take_along_axis(points, best[..., None], axis=1))
        starts = np.concatenate(starts)
        return starts.reshape(-1, n_in), np.repeat(np.arange(len(cases)), starts.shape[1])

    def _descend(self, starts, lo, hi, owner, config: AttackConfig, deadline: Deadline):
        """PGD from ``starts`` (``(N, n_in)``, ``restarts`` consecutive ones per box) in ``[lo, hi]``
        (``(N, n_in)``) on the cases ``owner`` (``(N,)``), then re-check the best points on onnxruntime."""
        rank = np.arange(len(starts)) % config.restarts
        diverse = rank >= (config.restarts + 1) // 2
        direction = self.rng.uniform(-1.0, 1.0, (len(starts), self.spec.C.shape[2])) * diverse[:, None]
        low, high = np.log(config.step_range[0]), np.log(config.step_range[1])
        restarts = Restarts(
            x0=self._tensor(starts),
            lo=self._tensor(lo),
            hi=self._tensor(hi),
            spec=self._spec_tensors(owner),
            target=torch.as_tensor(target_masks(self.spec.valid[owner], rank), device=self.device),
            direction=self._tensor(direction),
            step0=self._tensor(np.exp(self.rng.uniform(low, high, size=(len(starts), 1)))),
        )
        x, m = pgd(self._model, restarts, config, deadline, self.noise)
        x, m = x.cpu().numpy(), m.cpu().numpy()
        self._remember(x, m, owner)
        return self._check_candidates(x, m, owner, config)

    def _remember(self, x: np.ndarray, m: np.ndarray, owner: np.ndarray) -> None:
        for i in np.argsort(-m, kind="stable"):  # the lowest margin per case is written last
            if m[i] < self.best_margin[owner[i]]:
                self.best_margin[owner[i]], self.best_x[owner[i]] = m[i], x[i]

    def _check_candidates(self, x, m, owner, config: AttackConfig) -> Counterexample | None:
        """Re-check on onnxruntime the best few points per case whose torch margin is ``<= 0``."""
        order = np.argsort(m, kind="stable")
        checked: dict[int, int] = {}
        for i in order:
            if m[i] > 0:
                break
            case = int(owner[i])
            if checked.get(case, 0) >= config.check_top:
                continue
            checked[case] = checked.get(case, 0) + 1
            found = self.checker.check(self.prop.cases, case, x[i])
            if found is not None:
                return found
        return None

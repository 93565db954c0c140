"""Falsification: batched multi-restart PGD on the spec margin, with probes at the centre and corners.

The objective is the spec margin of ``spec_batch.margin`` (``<= 0`` iff the output is unsafe), minimised
by signed-gradient steps projected onto the case's box (rounded inwards to the input type, so every
iterate is a point the model file can take). One round evaluates many probes per case in one batch --
the centre and the two extreme corners (first round), random vertices and uniform points -- and runs
PGD from the best of them, all cases and restarts together. The points whose margin is ``<= 0`` under
the torch model are then re-checked on the ONNX file by ``OnnxChecker``; only a point that passes is
returned. The torch model is only a guide: its verdict is never trusted.
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
from verifier.verify.spec_batch import SpecBatch, margin


@dataclass(frozen=True)
class AttackConfig:
    """Size of one attack round.

    Each round evaluates ``probes`` random points per case (fewer for wide inputs: at most
    ``probe_values`` numbers in all), keeps the ``restarts`` best as PGD starts, and runs ``steps`` PGD
    iterations. Step sizes are fractions of each input's box width; each start draws its initial
    step log-uniformly from ``step_range`` (narrow unsafe regions need small steps, wide ones large),
    decayed geometrically by ``step_decay`` over the run.
    """

    probes: int = 4096
    probe_values: int = 1_000_000
    restarts: int = 64
    steps: int = 60
    step_range: tuple[float, float] = (0.003, 0.5)
    step_decay: float = 0.02
    check_top: int = 4
    max_batch: int = 4096


Forward = Callable[[torch.Tensor], torch.Tensor]


def start_points(lo: np.ndarray, hi: np.ndarray, count: int, rng: np.random.Generator, first: bool):
    """``count`` starting points in ``[lo, hi]`` (``(count, n_in)``).

    The first round leads with the centre and the all-lower / all-upper corners; every round then
    mixes random vertices (where ReLU networks often take extreme values) with uniform points.
    """
    n_in = lo.shape[0]
    fixed = [(lo + hi) / 2, lo, hi] if first else []
    fixed = fixed[:count]
    rest = count - len(fixed)
    n_vertices = rest // 2
    signs = rng.random((n_vertices, n_in)) < 0.5
    vertices = np.where(signs, hi, lo)
    uniform = lo + rng.random((rest - n_vertices, n_in)) * (hi - lo)
    points = np.concatenate([np.array(fixed).reshape(-1, n_in), vertices, uniform])
    return np.clip(points, lo, hi)


def pgd(
    forward: Forward,
    x0: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: tuple,
    step0: torch.Tensor,
    config: AttackConfig,
    deadline: Deadline,
):
    """Minimise the margin from ``x0`` (``(N, n_in)``, flat) within ``[lo, hi]`` (per sample).

    ``spec`` holds the per-sample ``(C, d, member, valid)`` tensors and ``step0`` (``(N, 1)``) the initial
    step as a fraction of the box width. Returns the best point and margin seen for every sample;
    stops early at the deadline, keeping what it has.
    """
    x = x0.clone()
    best_x, best_m = x0.clone(), torch.full((x0.shape[0],), math.inf, dtype=x0.dtype, device=x0.device)
    step = step0 * (hi - lo)
    decay = config.step_decay ** (1.0 / max(config.steps - 1, 1))
    for iteration in range(config.steps + 1):
        x.requires_grad_(True)
        m = margin(forward(x).reshape(x.shape[0], -1), *spec)
        with torch.no_grad():
            better = m < best_m
            best_m = torch.where(better, m, best_m)
            best_x[better] = x[better]
        if iteration == config.steps or deadline.expired() or bool((best_m < 0).all()):
            break
        (grad,) = torch.autograd.grad(m.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
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
        self.device = device
        self.rounds = 0
        # The point of lowest margin seen so far per case (starts at the centre).
        self.best_x = ((spec.lo + spec.hi) / 2).astype(np.float32)
        self.best_margin = np.full(spec.n_cases, np.inf)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def _model(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x.reshape((x.shape[0],) + self.input_shape))

    def run_round(self, deadline: Deadline) -> Counterexample | None:
        """One round over every case; returns a checked counterexample or ``None``."""
        first = self.rounds == 0
        self.rounds += 1
        per_chunk = max(1, self.config.max_batch // self.config.restarts)
        for begin in range(0, self.spec.n_cases, per_chunk):
            cases = np.arange(begin, min(begin + per_chunk, self.spec.n_cases))
            starts, owner = self._best_probes(cases, first, deadline)
            found = self._descend(starts, owner, deadline)
            if found is not None or deadline.expired():
                return found
        return None

    def _spec_tensors(self, owner: np.ndarray) -> tuple:
        spec = self.spec
        floats = tuple(self._tensor(a[owner]) for a in (spec.C, spec.d))
        return floats + tuple(
            torch.as_tensor(a[owner], device=self.device) for a in (spec.member, spec.valid)
        )

    def _margins(self, x: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Torch margins of flat points ``x`` for their cases ``owner``, in batches."""
        out = []
        with torch.no_grad():
            for begin in range(0, len(x), self.config.max_batch):
                part = slice(begin, begin + self.config.max_batch)
                y = self._model(self._tensor(x[part])).reshape(len(x[part]), -1)
                out.append(margin(y, *self._spec_tensors(owner[part])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _best_probes(self, cases: np.ndarray, first: bool, deadline: Deadline):
        """Evaluate the probes of every case in ``cases``; keep the ``restarts`` best of each."""
        spec, config = self.spec, self.config
        n_probes = max(config.restarts, min(config.probes, config.probe_values // max(spec.lo.shape[1], 1)))
        starts, owner = [], []
        for b in cases:
            deadline.check()
            points = start_points(spec.lo[b], spec.hi[b], n_probes, self.rng, first)
            best = np.argsort(self._margins(points, np.full(len(points), b)), kind="stable")[
                : config.restarts
            ]
            starts.append(points[best])
            owner.append(np.full(len(best), b))
        return np.concatenate(starts), np.concatenate(owner)

    def _descend(self, starts: np.ndarray, owner: np.ndarray, deadline: Deadline) -> Counterexample | None:
        """PGD from ``starts``, then re-check the best points on onnxruntime."""
        low, high = np.log(self.config.step_range[0]), np.log(self.config.step_range[1])
        step0 = np.exp(self.rng.uniform(low, high, size=(len(starts), 1)))
        lo, hi = self._tensor(self.spec.lo[owner]), self._tensor(self.spec.hi[owner])
        x, m = pgd(
            self._model,
            self._tensor(starts),
            lo,
            hi,
            self._spec_tensors(owner),
            self._tensor(step0),
            self.config,
            deadline,
        )
        x, m = x.cpu().numpy(), m.cpu().numpy()
        self._remember(x, m, owner)
        return self._check_candidates(x, m, owner)

    def _remember(self, x: np.ndarray, m: np.ndarray, owner: np.ndarray) -> None:
        for i in np.argsort(-m, kind="stable"):  # the lowest margin per case is written last
            if m[i] < self.best_margin[owner[i]]:
                self.best_margin[owner[i]], self.best_x[owner[i]] = m[i], x[i]

    def _check_candidates(self, x: np.ndarray, m: np.ndarray, owner: np.ndarray) -> Counterexample | None:
        """Re-check on onnxruntime the best few points per case whose torch margin is ``<= 0``."""
        order = np.argsort(m, kind="stable")
        checked: dict[int, int] = {}
        for i in order:
            if m[i] > 0:
                break
            case = int(owner[i])
            if checked.get(case, 0) >= self.config.check_top:
                continue
            checked[case] = checked.get(case, 0) + 1
            found = self.checker.check(self.prop.cases, case, x[i])
            if found is not None:
                return found
        return None

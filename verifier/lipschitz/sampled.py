"""A lower bound of the L2 Lipschitz constant from samples: ``L >= ||J_f(x)||_2`` at any point where f is
differentiable, and ``L >= ||f(x) - f(x')|| / ||x - x'||`` for any pair.

The Jacobian's spectral norm is taken at sampled points (exactly, from the full Jacobian in float64); the
best points then seed pairs ``(x, x + d)`` along their top right singular vector, and a few Adam steps
raise the difference quotient (for ReLU networks the Jacobian is piecewise constant, so its norm has no
gradient, but the quotient of a pair straddling linear regions does). The result is the largest value seen:
a true lower bound (up to float64 rounding of the quotients), never an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.graph.graph import Graph
from verifier.lipschitz.operator_norm import float64_graph


@dataclass(frozen=True)
class SampleConfig:
    """n: points sampled as ``centres + scale * N(0, I)`` (centres: the given points, else 0; cycled);
    steps: Adam steps on the pairs of the ``pairs`` best points; step_size: their initial separation."""

    n: int = 256
    scale: float = 1.0
    steps: int = 20
    pairs: int = 16
    step_size: float = 1e-2
    seed: int = 0


def sampled_bound(graph: Graph, rows: Tensor | None = None, points: Tensor | None = None,
                  cfg: SampleConfig = SampleConfig()) -> Tensor:  # fmt: skip
    """``l <= L`` (or ``l_r <= L_r`` per row r of ``rows`` [R, n_out]). Returns a scalar or [R]."""
    graph = float64_graph(graph)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = graph.input_shape
    centres = torch.zeros(1, *shape, dtype=torch.float64) if points is None else points.to(torch.float64)
    pick = torch.arange(cfg.n) % centres.shape[0]
    x = centres[pick] + cfg.scale * torch.randn(cfg.n, *shape, generator=gen, dtype=torch.float64)
    rows = None if rows is None else rows.to(torch.float64)
    norms, tops = _jacobian_norms(graph, x, rows)
    best = norms.max(0).values
    order = norms.max(1).values.argsort(descending=True)[: cfg.pairs] if norms.dim() == 2 else None
    order = norms.argsort(descending=True)[: cfg.pairs] if order is None else order
    return torch.maximum(best, _pair_ascent(graph, x[order], tops[order], rows, cfg))


def _flat_out(graph: Graph, x: Tensor, rows: Tensor | None) -> Tensor:
    y = graph.forward(x).reshape(x.shape[0], -1)
    return y if rows is None else y @ rows.T


def _jacobian_norms(graph: Graph, x: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """Spectral norm of the Jacobian at each point ([N], or per row [N, R]: gradient norms) and a direction
    of largest stretch per point ([N, *input_shape])."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        y = _flat_out(graph, x, rows)
        jac = torch.stack([torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)[0].flatten(1)
                           for j in range(y.shape[1])], dim=1)  # fmt: skip  # [N, m, n]
    if rows is not None:
        norms = jac.norm(dim=2)
        return norms, jac[torch.arange(len(x)), norms.argmax(1)].reshape(x.shape)
    _, s, vh = torch.linalg.svd(jac, full_matrices=False)
    return s[:, 0], vh[:, 0].reshape(x.shape)


def _pair_ascent(
    graph: Graph, x: Tensor, direction: Tensor, rows: Tensor | None, cfg: SampleConfig
) -> Tensor:
    """The largest difference quotient seen while Adam raises it from ``(x, x + step_size * direction)``."""
    unit = direction / direction.flatten(1).norm(dim=1).clamp(min=1e-300).reshape(-1, *[1] * (x.dim() - 1))
    a = x.clone().requires_grad_(True)
    d = (cfg.step_size * unit).requires_grad_(True)
    opt = torch.optim.Adam([a, d], lr=cfg.step_size)
    best = torch.zeros(() if rows is None else rows.shape[0], dtype=torch.float64)
    for _ in range(cfg.steps + 1):
        with torch.enable_grad():
            diff = _flat_out(graph, a + d, rows) - _flat_out(graph, a, rows)
            gap = d.flatten(1).norm(dim=1).clamp(min=1e-12)
            ratio = (
                (diff.norm(dim=1) / gap) if rows is None else diff.abs() / gap.unsqueeze(1)
            )  # [P] or [P, R]
            best = torch.maximum(best, ratio.detach().max(0).values)
            opt.zero_grad()
            (-ratio.sum()).backward()
        opt.step()
    return best

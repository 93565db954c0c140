"""alpha-CROWN: the free parameters of the relaxations (ReLU lower slopes, one set per bound being
computed) and the split multipliers of beta-CROWN, optimised by projected Adam on the output's lower bound.

Any projected parameter value gives a sound bound (``Nonlinear.project``; beta >= 0), so every iterate is
sound: the best output bound per row is kept, and so are the tightest intermediate bounds, which later
iterates start from. The first iterate uses the default parameters, so the result is never looser than
CROWN with the same intermediate bounds."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from verifier.engine import crown
from verifier.engine.params import Params
from verifier.engine.state import BoundState

PATIENCE = 4  # stop after this many steps without a relative gain of IMPROVEMENT in the summed bound
IMPROVEMENT = 1e-4
LR_END = 0.1  # the learning rate decays geometrically to this fraction of cfg.alpha_lr over the steps


def optimise(state: BoundState, rows: Tensor, refresh: Callable[[Params], object] | None = None,
             params: Params | None = None, steps: int | None = None, record: dict[int, Tensor] | None = None,
             enough: Callable[[Tensor], bool] | None = None, start: int | None = None) -> Tensor:  # fmt: skip
    """Lower bounds [S, B] of ``<rows_s, f(x)>`` (rows: [S, B, *out]) with optimised parameters; of
    ``<rows_s, z_start>`` with ``start`` (a node before the output: its bounds must then be at hand).

    ``refresh(params)`` recomputes the intermediate bounds with the same store each iterate (full
    alpha-CROWN); without it the state's intermediate bounds are used as they are (branch and bound reuses a
    parent's). ``params`` warm-starts from an earlier optimisation and receives the final values. Under
    grad mode the last iterate is returned (differentiable); otherwise the best one. ``record`` receives the
    coefficients of the last pass, the one with the final ``params`` (``crown.backward``'s ``record``).
    ``enough(best)`` ([S, B], the best bounds so far) ends the optimisation early when it returns True:
    a verifier stops once its question is answered (on the ERAN sigmoid 6x200 net, one step of the 20
    already proves mnist_spec_idx_5087)."""
    params = Params() if params is None else params
    steps = state.cfg.alpha_steps if steps is None else steps
    keep_graph = torch.is_grad_enabled()
    out = state.graph.output if start is None else start
    best, best_total, stale, optimiser = None, -float("inf"), 0, None
    for step in range(steps + 1):
        with torch.enable_grad():
            if refresh is not None:
                refresh(params)
                _keep_tightest(state)
            a = rows if keep_graph else rows.detach()
            lower = crown.backward(state, out, a, params, ("out",), True, record)
            objective = lower.sum()
        params.freeze()
        best = lower.detach() if best is None else torch.maximum(best, lower.detach())
        total = float(best.sum())
        stale = 0 if total > best_total + IMPROVEMENT * (1 + abs(best_total)) else stale + 1
        best_total = max(best_total, total)
        if step == steps or not params.leaves() or stale >= PATIENCE or (enough is not None and enough(best)):
            break
        if optimiser is None:
            # Adam's steps are about lr whatever the gradient: shrink them, so that the last iterates can
            # settle within a small fraction of lr of the optimum (near-zero margins need it)
            optimiser = Adam(params.leaves(), state.cfg.alpha_lr, decay=LR_END ** (1 / max(steps, 1)))
        optimiser.zero_grad()
        objective.backward(retain_graph=keep_graph)
        optimiser.step()
        params.project_()
    if refresh is not None:
        for k, bounds in state.best.items():
            state.set_bounds(k, bounds)
    return lower if keep_graph else best


class Adam:
    """Adam ascent (maximising) on ``leaves``, its learning rate multiplied by ``decay`` after each step.

    ``torch.optim.Adam`` computes the same, but its first use imports ``torch._dynamo``: 1.2 s in every
    process that reaches alpha-CROWN, as many as there are instances when each runs in its own
    ``verify-model`` process (the competition's way). This calls the kernel that ``Adam(fused=True)``
    calls, where the device has one (on CPU since torch 2.4; one pass per tensor instead of about ten,
    15-20% of a branch-and-bound run on mnist_fc), else the textbook update; the two differ only in
    rounding. A leaf without a gradient in a step is left alone, as torch's optimisers do."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, leaves: list[Tensor], lr: float, decay: float = 1.0):
        self.leaves, self.lr, self.decay = leaves, lr, decay
        self.moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in leaves]
        self.steps = [torch.zeros((), dtype=torch.float32, device=t.device) for t in leaves]
        self.fused = hasattr(torch, "_fused_adam_")

    def zero_grad(self) -> None:
        for t in self.leaves:
            t.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, t in enumerate(self.leaves) if t.grad is not None]
        groups: dict[tuple, list[int]] = {}
        for i in live:  # the kernel takes tensors of one device and dtype
            groups.setdefault((self.leaves[i].device, self.leaves[i].dtype), []).append(i)
        for group in groups.values():
            if self.fused:
                try:
                    self._fused(group)
                    continue
                except (RuntimeError, NotImplementedError):  # no fused kernel for this device
                    self.fused = False
            self._plain(group)
        self.lr *= self.decay

    def _fused(self, group: list[int]) -> None:
        steps = [self.steps[i] for i in group]
        torch._foreach_add_(steps, 1)  # the kernel reads the counts of this step, as torch's Adam does
        (beta1, beta2), m, v = self.BETAS, *zip(*(self.moments[i] for i in group))
        try:
            torch._fused_adam_([self.leaves[i] for i in group], [self.leaves[i].grad for i in group],
                               list(m), list(v), [], steps, lr=self.lr, beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=self.EPS, amsgrad=False, maximize=True)  # fmt: skip
        except (RuntimeError, NotImplementedError):
            torch._foreach_sub_(steps, 1)  # the plain update that follows counts this step
            raise

    def _plain(self, group: list[int]) -> None:
        beta1, beta2 = self.BETAS
        for i in group:
            t, (m, v), step = self.leaves[i], self.moments[i], self.steps[i]
            step += 1
            k = float(step)
            m.mul_(beta1).add_(t.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(t.grad, t.grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**k)).add_(self.EPS)
            t.addcdiv_(m, denom, value=self.lr / (1 - beta1**k))


def full_fits(graph, batch: int, cfg) -> bool:
    """Whether full alpha-CROWN (slopes for every intermediate bound, optimised through one gradient graph)
    fits ``cfg.max_alpha_bytes`` for ``batch`` domains. Its gradient keeps, per bounded node k, about the
    coefficients of its 2 n_k rows on every node before it: ``sum_k 2 n_k (n_0 + ... + n_k)`` floats per
    domain (0.04 GiB for the mnist_fc 256x6 MLP, 0.5 GiB for the oval21 CNNs, 72 GiB for the vit ibp_3_3_8
    transformer, which a 24 GiB machine cannot hold). Callers that do not fit keep CROWN's intermediate
    bounds and optimise the output's slopes only (the ``alpha-crown-final`` plan): sound, looser."""
    sizes = [int(torch.Size(node.shape).numel()) for node in graph.nodes]
    before = torch.tensor(sizes).cumsum(0).tolist()
    floats = sum(2 * sizes[k] * before[k] for k in graph.needs_bounds())
    return 4 * floats * batch <= cfg.max_alpha_bytes


def _keep_tightest(state: BoundState) -> None:
    """Record the intermediate bounds of this iterate as the tightest so far (the walk already intersected
    them with the earlier ones)."""
    for k in state.graph.needs_bounds():
        lo, hi = state.bounds[k]
        state.best[k] = (lo.detach(), hi.detach())

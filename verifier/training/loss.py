"""Certified training losses: the natural cross-entropy mixed with the cross-entropy of the worst-case
logits that certified bounds allow, for any training loop.

For a label y, the margins ``m_j = f_y - f_j`` (j != y) are bounded below over the perturbation set by
one bound computation whose specification is the margin rows themselves (one pass over n - 1 rows, not
2n logit bounds). The worst-case logits ``z`` have ``z_y = 0`` and ``z_j = -lower(m_j)``;
``CE(z, y) = log(1 + sum_j exp(-lower(m_j)))`` is an upper bound of the cross-entropy of every point of the
set (CE is invariant to shifting the logits, and decreasing in every margin). The loss is

    kappa * CE(f(x), y) + (1 - kappa) * CE(z, y)

with the margin bounds from (``method``):

| method    | intermediate bounds | margins                                                           |
|-----------|---------------------|-------------------------------------------------------------------|
| ibp       | IBP                 | IBP, the margin rows pushed through the last affine layer exactly  |
| crown-ibp | IBP                 | ``beta * CROWN + (1 - beta) * IBP`` (Zhang et al. 2020)            |
| crown-lbp | LBP                 | CROWN                                                              |
| crown     | CROWN               | CROWN (slow: a backward pass per layer)                            |

With ``fused=True`` (methods with a CROWN pass) the CROWN part bounds the cross-entropy itself instead of
the n - 1 margins: one backward row per example instead of n - 1, so that pass costs about 1 / (n - 1) as
much (loss fusion, Xu et al. 2020). Let ``d_j = f_j - f_y`` lie in ``[l_j, u_j]`` by the intermediate bounds
pushed through the last layer (IBP's, for crown-ibp). Each ``exp(d_j)`` lies below its chord over
``[l_j, u_j]``, slope ``k_j`` (exp is convex). CROWN bounds ``sum_j k_j d_j``, one linear function of ``f``,
from above by ``T``, so ``CE <= log(1 + sum_j (exp(l_j) - k_j l_j) + T)`` (computed shifted by
``max(0, max_j u_j)``: nothing overflows). The chords are as loose as those intervals are wide: the bound
can be looser or tighter than the margins' (measured in the README). ``margins`` (and ``verified``) are then
the intervals' margins, and ``beta`` mixes the fused loss with theirs, per example.

BatchNorm: with ``batch_norm="batch"`` the live model's BatchNorm layers normalise by the clean batch's
statistics, in the logits and in the bounds alike (as the peers train); with ``"running"`` both use the
running statistics; ``"auto"`` picks "batch" when the module is in training mode.

The gradient of the worst-case logits drops entries below ``eps**2`` of their row's largest
(``_drop_negligible``): they are below rounding, and would turn into denormals in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verifier.api import BoundedModel, margin_rows
from verifier.engine import crown
from verifier.engine.bounds import intermediate_bounds, interval_spec
from verifier.engine.state import BoundConfig, BoundState
from verifier.errors import InputError
from verifier.ops.base import Interval
from verifier.spec.regions import Box

METHODS = ("ibp", "crown-ibp", "crown-lbp", "crown")


@dataclass
class LossTerms:
    """A certified loss and what it was made of (tensors keep their graph unless noted)."""

    loss: Tensor  # scalar: kappa * natural + (1 - kappa) * robust
    natural: Tensor  # scalar: cross-entropy of the clean logits
    robust: Tensor  # scalar: cross-entropy of the worst-case logits
    logits: Tensor  # [B, n] clean logits
    margins: Tensor  # [B, n - 1] certified lower bounds of f_y - f_j (exact margins at eps 0)
    input_bounds: Interval | None  # the perturbation box (None at eps 0)
    pre_activation: list[Interval]  # bounds of every nonlinear operator's input (empty at eps 0)

    @property
    def verified(self) -> Tensor:
        """[B] bool: every margin certified positive."""
        return (self.margins > 0).all(1)


def certified_loss(bounded: BoundedModel, x: Tensor, y: Tensor, eps: float, method: str = "crown-ibp", *,
                   kappa: float = 0.5, beta: float = 1.0, batch_norm: str = "auto", lower: float = 0.0,
                   upper: float = 1.0, fused: bool = False) -> LossTerms:  # fmt: skip
    """The certified loss of the batch ``x`` [B, *input_shape] with labels ``y`` [B] over the L-inf balls of
    radius ``eps`` intersected with the data range [lower, upper]. ``bounded``: a classifier with a flat
    output of n classes, loaded with ``live=True`` to train its parameters (see the module docstring)."""
    if method not in METHODS:
        raise InputError(f"unknown certified loss method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= kappa <= 1.0 or not 0.0 <= beta <= 1.0:
        raise InputError(f"kappa and beta must lie in [0, 1], got kappa={kappa}, beta={beta}")
    if batch_norm not in ("auto", "batch", "running"):
        raise InputError(f"batch_norm must be 'auto', 'batch' or 'running', got {batch_norm!r}")
    if fused and method == "ibp":
        raise InputError("fused=True bounds the loss in a CROWN pass, which method 'ibp' does not make")
    if len(bounded.output_shape) != 1:
        raise InputError(f"a classifier's output must be flat, got per-sample shape {bounded.output_shape}")
    n = bounded.output_shape[0]
    training = bounded.module is not None and bounded.module.training
    if batch_norm == "batch" or (batch_norm == "auto" and training):
        logits, view = bounded.with_batch_statistics(x)
    else:
        logits, view = bounded(x), bounded
    y = torch.as_tensor(y, device=logits.device).reshape(-1)
    if y.shape[0] != logits.shape[0] or y.is_floating_point() or (y < 0).any() or (y >= n).any():
        raise InputError(f"labels must be {logits.shape[0]} integers in [0, {n})")
    natural = F.cross_entropy(logits, y)
    spec = margin_rows(y, n, logits).transpose(0, 1)  # the engine's layout: [n - 1, B, n]
    if float(eps) == 0.0:  # the set is the point: the margins are exact and the two losses coincide
        margins = torch.einsum("sbn,bn->bs", spec, logits)
        return LossTerms(natural, natural, natural, logits, margins, None, [])
    x = x.to(logits.device, logits.dtype)
    region = Box((x - eps).clamp(min=lower), (x + eps).clamp(max=upper))
    state = BoundState(view.graph, region, BoundConfig(method="ibp" if method == "crown-ibp" else method))
    intermediate_bounds(state)
    crown_weight = beta if method != "ibp" else 0.0
    if fused:
        ibp_lower, ibp_upper = interval_spec(state, spec)
        margins = ibp_lower.T
        robust = _worst_case_cross_entropy(margins)
        if crown_weight > 0.0:
            fusion = _fused_cross_entropy(state, spec, ibp_lower, ibp_upper)
            robust = crown_weight * fusion + (1.0 - crown_weight) * robust
    else:
        margins = interval_spec(state, spec)[0] if crown_weight < 1.0 else None
        if crown_weight > 0.0:
            tight = crown.backward(state, view.graph.output, spec)
            margins = tight if margins is None else crown_weight * tight + (1.0 - crown_weight) * margins
        margins = margins.T
        robust = _worst_case_cross_entropy(margins)
    robust = robust.mean()
    pre = [state.bounds[k] for k in sorted(view.graph.needs_bounds())]
    return LossTerms(
        kappa * natural + (1 - kappa) * robust, natural, robust, logits, margins, region.box(), pre
    )


def _worst_case_cross_entropy(margins: Tensor) -> Tensor:
    """[B] ``CE(z, y)`` of the worst-case logits of margin lower bounds [B, n - 1]."""
    worst = torch.cat([margins.new_zeros(margins.shape[0], 1), -margins], 1)
    if worst.requires_grad:
        worst.register_hook(_drop_negligible)
    return torch.logsumexp(worst, 1) - worst[:, 0]


def _fused_cross_entropy(state: BoundState, spec: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """[B] upper bounds of the cross-entropy over the region from one CROWN row (see the module docstring).
    ``spec`` [n - 1, B, n]: the margin rows; ``lower``, ``upper`` [n - 1, B]: the margins' IBP bounds."""
    d_lo, d_hi = -upper.T, -lower.T  # [B, n - 1]: bounds of d_j = f_j - f_y
    shift = d_hi.amax(1, keepdim=True).clamp(min=0.0).detach()  # exp(. - shift) <= 1: no overflow
    e_lo, e_hi = torch.exp(d_lo - shift), torch.exp(d_hi - shift)
    width = d_hi - d_lo
    # the chord's slope; on a narrow interval the top's derivative, which is no smaller (exp is convex)
    slope = torch.where(width > 1e-3, (e_hi - e_lo) / width.clamp(min=1e-3), e_hi)
    tiny = torch.finfo(slope.dtype).eps
    # slopes below rounding would feed denormals to the backward pass
    negligible = slope < tiny * tiny * slope.amax(1, keepdim=True)
    slope = slope.masked_fill(negligible, 0.0)
    # exp(d_j - shift) <= start_j + slope_j (d_j - d_lo_j): the chord, or the constant e_hi for a dropped
    # slope, raised by a few roundings of e_hi so that the float chord stays above exp
    start = torch.where(negligible, e_hi, e_lo) + 8 * tiny * e_hi
    row = (slope.T.unsqueeze(-1) * spec).sum(0, keepdim=True)  # [1, B, n]: sum_j slope_j (f_y - f_j)
    top = -crown.backward(state, state.graph.output, row)[0]  # >= sum_j slope_j d_j over the region
    total = torch.exp(-shift[:, 0]) + (start - slope * d_lo).sum(1) + top
    return shift[:, 0] + torch.log(total.clamp(min=torch.finfo(total.dtype).tiny))


def _drop_negligible(grad: Tensor) -> Tensor:
    """The gradient of the worst-case logits [B, n] with every entry below ``eps**2`` times its row's largest
    set to 0. A margin far from the worst gets ``softmax`` weight ``exp(-gap)``, which the backward pass
    through the bounds multiplies down into denormals, computed up to ~100x slower on x86 (and
    ``torch.set_flush_denormal`` reaches only the calling thread, not torch's running worker threads).
    The dropped terms are below the float rounding of the row's contribution to every parameter
    gradient, unless a margin's derivative is ``1 / eps`` times that of the row's dominant one."""
    eps = torch.finfo(grad.dtype).eps
    return grad.masked_fill(grad.abs() < eps * eps * grad.abs().amax(1, keepdim=True), 0.0)

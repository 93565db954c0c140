"""The warm-up regularisers of Shi et al. 2021 ("Fast certified robust training with short warmup").

They act on interval bounds, each a pair ``(lo, hi)`` of tensors ``[B, ...]`` with ``lo <= hi``: the bounds
of the network input and of the input of every nonlinear layer (the pre-activations). All functions are
differentiable in these tensors and return a scalar tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

Interval = tuple[Tensor, Tensor]
_TINY = 1e-12  # keeps divisions finite when a width or a sum is exactly zero


def tightness(input_bounds: Interval, pre_activation_bounds: list[Interval], tol: float = 0.5) -> Tensor:
    """Penalty on pre-activation intervals that are much wider than the input's.

    With ``w0`` the mean half-width ``(hi - lo) / 2`` of the input bounds and ``w_k`` that of layer k's
    pre-activation bounds (means over the batch and all neurons):

        tightness = mean_k relu(tol - w0 / w_k) / tol

    zero while every ``w_k <= w0 / tol``, rising towards 1 as ``w_k`` grows without bound. Zero when there
    are no layers.
    """
    _check_tol(tol)
    lo0, hi0 = input_bounds
    w0 = ((hi0 - lo0) / 2).mean()
    terms = [
        torch.relu(tol - w0 / ((hi - lo) / 2).mean().clamp(min=_TINY)) / tol
        for lo, hi in pre_activation_bounds
    ]
    return torch.stack(terms).mean() if terms else w0.new_zeros(())


def relu_balance(pre_activation_bounds: list[Interval], tol: float = 0.5) -> Tensor:
    """Penalty on layers whose stably active and stably inactive ReLUs are out of balance.

    Per layer, with centres ``c = (lo + hi) / 2``, active set ``A = {lo > 0}``, inactive set ``I = {hi < 0}``
    and ``mu`` the mean of ``c`` over the whole layer (batch and neurons):

        r_mean = sum_A c / sum_I (-c)
        r_var  = sum_A (c - mu)^2 / sum_I (c - mu)^2
        term   = (relu(tol - b(r_mean)) + relu(tol - b(r_var))) / tol,   b(r) = min(r, 1/r)

    (``b(r) = min(x, y) / max(x, y)`` for the two sums ``x, y``: 1 when balanced, towards 0 when not; the
    ratio of the sums equals that of the masked means ``mean(c * [A])`` and ``mean(-c * [I])``.) A layer
    with no active or no inactive neuron has no defined ratio; its term, like any NaN or inf term, counts
    as 0. The result is the sum of the terms divided by the number of layers (0 when there are none).
    """
    _check_tol(tol)
    if not pre_activation_bounds:
        return torch.zeros(())
    total = pre_activation_bounds[0][0].new_zeros(())
    for lo, hi in pre_activation_bounds:
        c = ((lo + hi) * 0.5).flatten()
        values = torch.stack([c, (c - c.mean()) ** 2])  # [2, n]
        masks = torch.stack([lo.flatten() > 0, hi.flatten() < 0]).to(c.dtype)  # [2, n]: A, I
        sums = values @ masks.T  # [[sum_A c, sum_I c], [sum_A dev, sum_I dev]]: one pass, no sync
        term = _penalty(sums[0, 0], -sums[0, 1], tol) + _penalty(sums[1, 0], sums[1, 1], tol)
        defined = (masks.sum(1) > 0).all() & torch.isfinite(term)
        total = total + torch.where(defined, term, torch.zeros_like(term))
    return total / len(pre_activation_bounds)


def _check_tol(tol: float) -> None:
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def _penalty(x: Tensor, y: Tensor, tol: float) -> Tensor:
    """``relu(tol - b) / tol`` with the balance ``b = min(x, y) / max(x, y)`` of two sums x, y >= 0."""
    return torch.relu(tol - torch.minimum(x, y) / torch.maximum(x, y).clamp(min=_TINY)) / tol


def warmup_regulariser(
    input_bounds: Interval,
    pre_bounds: list[Interval],
    eps: float,
    eps_max: float,
    weight: float = 0.5,
    tol: float = 0.5,
) -> Tensor:
    """Both regularisers, faded out as epsilon reaches its final value:

        weight * max(0, 1 - eps / eps_max) * (tightness + relu_balance)

    (0 when ``eps_max == 0``; the clamp at 0 keeps an epsilon past ``eps_max`` from rewarding loose bounds.)
    """
    if eps_max < 0:
        raise ValueError(f"warmup_regulariser: eps_max must be >= 0, got {eps_max}")
    fade = max(0.0, 1.0 - eps / eps_max) if eps_max > 0 else 0.0
    if fade == 0.0:
        return input_bounds[0].new_zeros(())
    reg = tightness(input_bounds, pre_bounds, tol) + relu_balance(pre_bounds, tol)
    return weight * fade * reg

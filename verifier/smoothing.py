"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a *probabilistic* L2 certificate for any model.

The smoothed classifier is ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``. If
``P(f(x + e) = A) >= p_A > 1/2`` then ``g(x') = A`` for every ``||x' - x||_2 < sigma Phi^-1(p_A)``.
``certify`` guesses A from ``n0`` samples, then lower-bounds ``p_A`` from ``n`` fresh samples by the
one-sided Clopper-Pearson bound at level ``alpha``: with probability at least ``1 - alpha`` over the
sampling, the returned class and radius are right about ``g``; otherwise it abstains. ``predict`` returns
``g(x)`` or abstains, wrong with probability at most ``alpha`` (two-sided binomial test of the top two
counts). These are statements about ``g``, with a confidence, never a deterministic verdict about ``f``:
results are :class:`SmoothedCertificate` / :class:`SmoothedPrediction`, not the engine's bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor

from verifier.errors import InputError

ABSTAIN = -1


@dataclass(frozen=True)
class SmoothingConfig:
    """sigma: noise level; n0: selection samples; n: estimation samples; alpha: failure probability;
    batch: samples per forward pass; seed: of the noise generator."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class SmoothedCertificate:
    """Probabilistic: with probability >= 1 - alpha over the noise, the smoothed classifier predicts
    ``label`` on the whole L2 ball of ``radius`` (``label`` -1: abstained, radius 0). [B] tensors."""

    label: Tensor
    radius: Tensor
    p_lower: Tensor
    alpha: float
    sigma: float
    n: int
    probabilistic: bool = True

    @property
    def abstained(self) -> Tensor:
        return self.label == ABSTAIN


@dataclass(frozen=True)
class SmoothedPrediction:
    """Probabilistic: ``label`` differs from the smoothed classifier's class with probability <= alpha
    (-1: abstained). [B] tensor."""

    label: Tensor
    alpha: float
    probabilistic: bool = True


def sample_counts(model: Callable[[Tensor], Tensor], x: Tensor, n: int, cfg: SmoothingConfig,
                  gen: torch.Generator) -> Tensor:  # fmt: skip
    """Class counts [B, n_classes] of ``argmax model(x_b + e)`` over n noise draws per input, ``cfg.batch``
    draws per forward pass."""
    counts = []
    for xb in x:
        votes = []
        for start in range(0, n, cfg.batch):
            noise = torch.randn(min(cfg.batch, n - start), *x.shape[1:], generator=gen, dtype=x.dtype)
            with torch.no_grad():
                logits = model(xb.unsqueeze(0) + cfg.sigma * noise)
            votes.append(logits.reshape(len(noise), -1).argmax(1))
        counts.append(torch.bincount(torch.cat(votes), minlength=logits.reshape(len(noise), -1).shape[1]))
    return torch.stack(counts)


def _check(x: Tensor, cfg: SmoothingConfig) -> None:
    if cfg.sigma <= 0 or not 0 < cfg.alpha < 1 or cfg.n < 1 or cfg.n0 < 1:
        raise InputError(f"smoothing needs sigma > 0, 0 < alpha < 1, n, n0 >= 1; got {cfg}")
    if not torch.isfinite(x).all():
        raise InputError("input contains NaN or inf")


def certify(
    model: Callable[[Tensor], Tensor], x: Tensor, cfg: SmoothingConfig = SmoothingConfig()
) -> SmoothedCertificate:
    """Cohen et al.'s CERTIFY for each input of the batch x [B, *input_shape]: class A = the most frequent of
    ``n0`` draws; ``p_lower`` = Clopper-Pearson lower bound (level alpha) of ``P(f(x + e) = A)`` from ``n``
    draws; abstain if ``p_lower <= 1/2``, else radius ``sigma Phi^-1(p_lower)``."""
    _check(x, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    guess = sample_counts(model, x, cfg.n0, cfg, gen).argmax(1)
    counts = sample_counts(model, x, cfg.n, cfg, gen)
    n_a = counts.gather(1, guess.unsqueeze(1)).squeeze(1)
    # one-sided Clopper-Pearson: the alpha quantile of Beta(k, n - k + 1) (0 when k = 0)
    p_lower = torch.tensor(beta.ppf(cfg.alpha, n_a.numpy(), cfg.n - n_a.numpy() + 1), dtype=torch.float64)
    p_lower = torch.nan_to_num(p_lower, nan=0.0)
    certified = p_lower > 0.5
    radius = torch.where(certified, cfg.sigma * torch.tensor(norm.ppf(p_lower.numpy())), 0.0)
    label = torch.where(certified, guess, ABSTAIN)
    return SmoothedCertificate(label, radius, p_lower, cfg.alpha, cfg.sigma, cfg.n)


def predict(
    model: Callable[[Tensor], Tensor], x: Tensor, cfg: SmoothingConfig = SmoothingConfig()
) -> SmoothedPrediction:
    """Cohen et al.'s PREDICT: the top class of ``n`` draws unless the two-sided binomial test of its count
    against the runner-up's (``n_A`` of ``n_A + n_B`` at 1/2) has p-value above alpha (abstain)."""
    _check(x, cfg)
    counts = sample_counts(model, x, cfg.n, cfg, torch.Generator().manual_seed(cfg.seed))
    top = counts.topk(2, dim=1)
    labels = []
    for (n_a, n_b), a in zip(top.values.tolist(), top.indices[:, 0].tolist()):
        p = binomtest(n_a, n_a + n_b, 0.5).pvalue if n_a + n_b > 0 else 1.0
        labels.append(a if p <= cfg.alpha else ABSTAIN)
    return SmoothedPrediction(torch.tensor(labels), cfg.alpha)

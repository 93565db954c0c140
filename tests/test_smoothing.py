"""Randomized smoothing on a linear classifier, where the smoothed classifier and its robust radius are
known in closed form: ``g = f`` and the radius at x is the distance ``|w x + b| / ||w||`` to the boundary
(``sigma Phi^-1(p_A)`` with ``p_A = Phi((w x + b) / (sigma ||w||))``)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binom

from verifier import smoothing
from verifier.smoothing import ABSTAIN, SmoothingConfig


def linear_classifier(w: torch.Tensor, b: float):
    return lambda x: torch.stack([torch.zeros(len(x)), x.flatten(1) @ w + b], dim=1)


W = torch.tensor([0.6, -0.8, 0.0])  # ||w|| = 1


def test_coverage_holds_at_the_stated_confidence():
    """Over independent runs the certificate is wrong (radius beyond the true radius, or the wrong class)
    at most at rate alpha, up to the binomial spread of the runs."""
    alpha, runs, sigma = 0.1, 300, 0.5
    x = torch.tensor([[0.25, 0.0, 3.0]])  # class 1 at distance 0.15: p_A = Phi(0.3) = 0.62
    true_radius = 0.15
    model = linear_classifier(W, 0.0)
    wrong = 0
    for seed in range(runs):
        cfg = SmoothingConfig(sigma=sigma, n0=20, n=200, alpha=alpha, batch=128, seed=seed)
        cert = smoothing.certify(model, x, cfg)
        if not cert.abstained[0]:
            wrong += int(cert.label[0] != 1 or cert.radius[0] > true_radius)
    assert wrong <= binom.ppf(0.999, runs, alpha), wrong


def test_radius_approaches_the_true_radius_with_many_samples():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])  # distances 0.6 (class 1), 0.4 (class 0)
    cfg = SmoothingConfig(sigma=0.5, n0=100, n=20_000, alpha=0.001, batch=5000)
    cert = smoothing.certify(linear_classifier(W, 0.0), x, cfg)
    assert cert.label.tolist() == [1, 0]
    assert (cert.radius <= torch.tensor([0.6, 0.4])).all()
    assert (cert.radius >= torch.tensor([0.6, 0.4]) * 0.9).all()
    assert cert.probabilistic and cert.alpha == 0.001


def test_predict_abstains_on_the_boundary():
    """On the boundary p_A = 1/2: a prediction is returned at most at rate alpha."""
    x = torch.zeros(1, 3)
    answered = sum(
        int(smoothing.predict(linear_classifier(W, 0.0), x, SmoothingConfig(n=200, alpha=0.05, seed=s)).label[0]
            != ABSTAIN)
        for s in range(100)
    )  # fmt: skip
    assert answered <= binom.ppf(0.999, 100, 0.05)


def test_predict_and_certify_far_from_the_boundary():
    x = torch.tensor([[3.0, 0.0, 0.0]])
    cfg = SmoothingConfig(sigma=0.25, n0=50, n=500, alpha=0.001)
    assert smoothing.predict(linear_classifier(W, 0.0), x, cfg).label.tolist() == [1]
    cert = smoothing.certify(linear_classifier(W, 0.0), x, cfg)
    assert cert.label.tolist() == [1] and 0 < cert.radius[0] <= 1.8


def test_bad_configuration_is_an_input_error():
    with pytest.raises(smoothing.InputError):
        smoothing.certify(linear_classifier(W, 0.0), torch.zeros(1, 3), SmoothingConfig(sigma=0.0))

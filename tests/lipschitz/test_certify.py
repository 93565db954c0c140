"""L2 certificates from Lipschitz bounds: a certified radius is never beaten by an attack, the "lipschitz"
bounds contain sampled outputs, and combining them with CROWN keeps the tighter bound per row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import verifier
from tests.helpers import assert_inside
from tests.lipschitz.nets import load, mlp
from verifier.api import margin_rows


def l2_pgd(model, x, labels, radius, steps=100, restarts=4, seed=0):
    """The smallest margin ``f_y - f_j`` found in the L2 balls ``||x' - x|| <= radius`` (per example) by
    projected normalised-gradient descent from random starts."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.Size(model.output_shape).numel())
    c = margin_rows(labels, n, x)
    r = radius.reshape(-1, *[1] * (x.dim() - 1))
    best = torch.full((len(x),), torch.inf)
    for _ in range(restarts):
        d = torch.randn(x.shape, generator=gen)
        d = d / d.flatten(1).norm(dim=1).reshape(r.shape) * r * torch.rand(r.shape, generator=gen)
        for step in range(steps):
            d.requires_grad_(True)
            m = (c * model(x + d).reshape(len(x), 1, n)).sum(-1).min(1).values
            best = torch.minimum(best, m.detach())
            (g,) = torch.autograd.grad(m.sum(), d)
            g = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(r.shape)
            with torch.no_grad():
                d = d - 2.5 * r / steps * g
                d = d * (r / d.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(r.shape)).clamp(max=1)
        best = torch.minimum(best, (c * model(x + d).reshape(len(x), 1, n)).sum(-1).min(1).values.detach())
    return best


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-tanh", "cnn-batchnorm", "residual"])
def test_certified_radius_is_never_beaten_by_pgd(name):
    torch.set_num_threads(1)
    model, shape = load(name)
    x = torch.randn(8, *shape)
    labels = model(x).argmax(1)
    radius = model.certified_radius(x, labels).float()
    assert (radius > 0).all()
    assert (l2_pgd(model, x, labels, radius) > 0).all()


def test_linear_classifier_radius_is_exact_and_attack_reaches_it():
    """For an affine classifier the Lipschitz radius is the distance to the decision boundary: PGD finds a
    flip just beyond it (so the attack above is strong enough to notice a wrong radius)."""
    net = nn.Linear(6, 3)
    model = verifier.load(net, torch.zeros(1, 6))
    x = torch.randn(16, 6)
    labels = model(x).argmax(1)
    radius = model.certified_radius(x, labels).float()
    assert (l2_pgd(model, x, labels, radius * 0.999) > 0).all()
    assert (l2_pgd(model, x, labels, radius * 1.01) < 0).all()


@pytest.mark.parametrize("name", ["mlp-relu", "cnn-batchnorm", "residual"])
def test_lipschitz_bounds_contain_sampled_outputs(name):
    model, shape = load(name)
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, *shape, generator=gen), 0.3
    region = verifier.L2Ball(x, eps)
    d = torch.randn(500, *x.shape, generator=gen)
    norms = d.flatten(2).norm(dim=2).reshape(500, 3, *[1] * len(shape))
    d = d / norms * eps * torch.rand(500, 3, *[1] * len(shape), generator=gen) ** (1 / x[0].numel())
    y = torch.stack([model(x + di) for di in d])
    lip = model.bounds(region, method="lipschitz")
    both = model.bounds(region, method="crown+lipschitz")
    crown = model.bounds(region, method="crown")
    assert_inside(y, lip.lower, lip.upper, "lipschitz")
    assert_inside(y, both.lower, both.upper, "crown+lipschitz")
    assert (both.lower >= torch.maximum(lip.lower, crown.lower)).all()
    assert (both.upper <= torch.minimum(lip.upper, crown.upper)).all()


def test_lipschitz_margins_agree_with_certified_radius():
    """The margin rows' lower bounds at eps reach 0 where eps is the certified radius."""
    torch.manual_seed(3)
    model = verifier.load(mlp(2), torch.zeros(1, 12))
    x = torch.randn(4, 12)
    labels = model(x).argmax(1)
    radius = model.certified_radius(x, labels)
    m = model.margins(verifier.L2Ball(x.double(), radius), labels, method="lipschitz")
    assert m.min(1).values.abs().max() < 1e-5


def test_lipschitz_method_needs_an_l2_ball():
    model, _ = load("mlp-relu")
    with pytest.raises(verifier.InputError, match="L2Ball"):
        model.bounds(verifier.LinfBall(torch.zeros(1, 12), 0.1), method="lipschitz")

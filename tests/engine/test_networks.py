"""End-to-end soundness and tightness of every method on random networks of every supported kind."""

from __future__ import annotations

import itertools

import pytest
import torch

import verifier
from tests.engine.nets import linear_networks, networks
from tests.helpers import assert_inside, samples
from verifier.ops.linear import Linear

NETS = networks()


def _model_and_box(name, eps=0.3, batch=2, seed=0):
    module, shape = NETS[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=gen)
    return module, verifier.load(module, x[:1]), verifier.LinfBall(x, eps)


def _attack(module, region, steps=20):
    """Signed-gradient ascent and descent on every output inside the box: points that push to the bounds."""
    lo, hi = region.box()
    points = []
    n_out = module(lo).flatten(1).shape[1]
    for j, sign in itertools.product(range(n_out), (1.0, -1.0)):
        x = ((lo + hi) / 2).clone().requires_grad_(True)
        for _ in range(steps):
            (sign * module(x).flatten(1)[:, j].sum()).backward()
            with torch.no_grad():
                x += (hi - lo) / 8 * x.grad.sign()
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            x.grad = None
        points.append(x.detach()[None])
    return torch.cat(points)


@pytest.mark.parametrize("method", verifier.METHODS)
@pytest.mark.parametrize("name", list(NETS))
def test_sampled_and_attacked_points_inside_bounds(name, method):
    module, model, region = _model_and_box(name)
    b = model.bounds(region, method=method)
    lo, hi = region.box()
    pts = torch.cat([samples(lo, hi, 300, torch.Generator().manual_seed(1)), _attack(module, region)])
    with torch.no_grad():
        y = module(pts.flatten(0, 1)).reshape(pts.shape[0], *b.lower.shape)
    assert_inside(y, b.lower, b.upper, f"{name} {method}")
    assert (b.lower <= b.upper).all()


ORDER = [("ibp", "lbp"), ("ibp", "crown-ibp"), ("lbp", "crown-lbp"), ("crown-ibp", "crown-lbp"),
         ("crown-lbp", "crown"), ("crown", "alpha-crown")]  # fmt: skip


@pytest.mark.parametrize("name", ["mlp", "residual", "cnn_bn_pool"])
def test_tightness_order_under_zero_lower_line(name):
    """Lyu et al. 2021: IBP <= {LBP, CROWN-IBP} <= CROWN-LBP <= CROWN, element-wise, with the "zero" line."""
    _module, model, region = _model_and_box(name, eps=0.2, batch=3, seed=3)
    b = {m: model.bounds(region, method=m, relu_lower="zero") for m in verifier.METHODS}
    for loose, tight in ORDER:
        assert (b[tight].lower >= b[loose].lower - 1e-5).all(), f"{tight} lower below {loose}"
        assert (b[tight].upper <= b[loose].upper + 1e-5).all(), f"{tight} upper above {loose}"
    assert (b["crown"].upper - b["crown"].lower).sum() < (b["ibp"].upper - b["ibp"].lower).sum()


@pytest.mark.parametrize("name", list(linear_networks()))
def test_crown_is_exact_without_activations(name):
    module, shape = linear_networks()[name]
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(5))
    model, region = verifier.load(module, x[:1]), verifier.LinfBall(x, 0.5)
    lo, hi = region.box()
    n = lo[0].numel()
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n))).reshape(-1, 1, *shape)
    with torch.no_grad():
        y = module((lo + (hi - lo) * corners).flatten(0, 1)).reshape(corners.shape[0], 2, -1)
    for method in ("crown", "crown-ibp", "crown-lbp", "lbp"):
        b = model.bounds(region, method=method)
        torch.testing.assert_close(b.lower, y.min(0).values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.upper, y.max(0).values, rtol=1e-5, atol=1e-5)


def test_specification_matrix_and_margins():
    module, model, region = _model_and_box("mlp", eps=0.05, batch=2)
    C = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(2))
    b = model.bounds(region, method="crown", C=C)
    assert b.lower.shape == (2, 5)
    lo, hi = region.box()
    pts = samples(lo, hi, 300, torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = torch.einsum("bsm,nbm->nbs", C, module(pts.flatten(0, 1)).reshape(pts.shape[0], 2, 4))
    assert_inside(y, b.lower, b.upper, "C f(x)")
    lower_only = model.bounds(region, method="crown", C=C, upper=False)
    assert lower_only.upper is None
    torch.testing.assert_close(lower_only.lower, b.lower)
    labels = torch.tensor([1, 3])
    m = model.margins(region, labels, method="crown")
    assert m.shape == (2, 3)
    with torch.no_grad():
        out = module(pts.flatten(0, 1)).reshape(pts.shape[0], 2, 4)
    for i, y_label in enumerate(labels.tolist()):
        others = [j for j in range(4) if j != y_label]
        true = out[:, i, y_label : y_label + 1] - out[:, i, others]
        assert (true >= m[i] - 1e-5).all()


def test_l2_ball_is_sound_and_tighter_than_its_box():
    module, model, _ = _model_and_box("mlp")
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(8))
    ball = verifier.L2Ball(x, 0.4)
    b = model.bounds(ball, method="crown")
    box = model.bounds(verifier.LinfBall(x, 0.4), method="crown")
    direction = torch.randn(500, 2, 5, generator=torch.Generator().manual_seed(9))
    direction = direction / direction.norm(dim=-1, keepdim=True)
    pts = x + 0.4 * direction * torch.rand(500, 2, 1) ** 0.2
    with torch.no_grad():
        y = module(pts.flatten(0, 1)).reshape(500, 2, 4)
    assert_inside(y, b.lower, b.upper, "L2 ball")
    assert (b.lower >= box.lower - 1e-6).all() and (b.upper <= box.upper + 1e-6).all()


def test_bounds_are_differentiable_when_asked():
    _module, model, _ = _model_and_box("mlp")
    x = torch.randn(2, 5, requires_grad=True)
    for method in verifier.METHODS:
        lower = model.bounds(verifier.LinfBall(x, 0.1), method=method, grad=True).lower
        (grad,) = torch.autograd.grad(lower.sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not model.bounds(verifier.LinfBall(x, 0.1)).lower.requires_grad


def test_float64_model_gives_float64_bounds():
    _module, model, region = _model_and_box("sigmoid_tanh")
    b64 = model.to(dtype=torch.float64).bounds(region, method="crown")
    b32 = model.bounds(region, method="crown")
    assert b64.lower.dtype == torch.float64
    torch.testing.assert_close(b64.lower.float(), b32.lower, rtol=1e-4, atol=1e-4)


def test_batch_rows_are_independent():
    """Bounding a batch equals bounding each row alone (sub-domains never interact)."""
    _module, model, region = _model_and_box("cnn_bn_pool", batch=3)
    lo, hi = region.box()
    together = model.bounds(region, method="crown")
    for i in range(3):
        alone = model.bounds(verifier.Box(lo[i : i + 1], hi[i : i + 1]), method="crown")
        torch.testing.assert_close(alone.lower[0], together.lower[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NETS))
def test_refining_from_a_linear_nodes_weight_rows_matches_the_indicator_rows(name, monkeypatch):
    """A CROWN pass bounding a Linear node's neurons starts on its input with rows of W
    (``Affine.jacobian_rows``) instead of pushing indicator rows through W: the same bounds, and under
    ``grad`` the same gradients in the input and in live weights."""
    module, _, region = _model_and_box(name)
    x = region.box()[0].detach().clone().requires_grad_(True)
    model = verifier.load(module, x[:1].detach(), live=True)
    params = [p for p in module.parameters() if p.requires_grad]
    results, gathered = {}, []
    rows_of = Linear.jacobian_rows
    monkeypatch.setattr(
        Linear, "jacobian_rows", lambda *args: gathered.append(rows_of(*args)) or gathered[-1]
    )
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(Linear, "jacobian_rows", lambda self, positions, out_shape: None)
        for method in ("crown", "alpha-crown", "crown-ibp"):
            lower = model.bounds(verifier.LinfBall(x, 0.3), method=method, grad=True).lower
            grads = torch.autograd.grad(lower.sum(), [x, *params])
            results[shortcut, method] = (lower.detach(), grads)
    # a Linear node before an activation is refined, through its weight's rows
    assert any(rows is not None for rows in gathered) == (name in ("mlp", "residual", "sigmoid_tanh"))
    for method in ("crown", "alpha-crown", "crown-ibp"):
        (lo, grads), (lo_ref, grads_ref) = results[True, method], results[False, method]
        torch.testing.assert_close(lo, lo_ref, rtol=1e-5, atol=1e-5, msg=method)
        if method != "alpha-crown":  # its optimiser's steps carry the rounding differences further
            for g, g_ref in zip(grads, grads_ref):
                torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=method)


def test_linear_jacobian_rows_are_weight_rows_for_a_vector_output_only():
    weight = torch.randn(4, 3)
    op = Linear(weight, torch.randn(4))
    pos = torch.tensor([[2, 0], [3, 3]])
    assert torch.equal(op.jacobian_rows(pos, (4,)), weight[pos])
    assert op.jacobian_rows(pos, (2, 4)) is None  # rows over a sequence: a row sits at one place

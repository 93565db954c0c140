"""The certified loss: finite, differentiable with respect to the parameters (matching finite
differences), sound (its margin bounds never exceed true margins at sampled or attacked points), and
effective (a few steps on real data raise verified accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import verifier
from tests.ops.test_batch_norm import batch_statistics_formula
from verifier.api import margin_rows
from verifier.errors import InputError
from verifier.ops.linear import BatchNorm, ScaleShift
from verifier.training import loss as loss_module
from verifier.training.loss import METHODS, _drop_negligible, certified_loss

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def _mlp(seed: int = 0, dtype=torch.float32, batch_norm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 12)] + ([nn.BatchNorm1d(12)] if batch_norm else []) + [nn.ReLU(), nn.Linear(12, 8),
              nn.ReLU(), nn.Linear(8, 3)]  # fmt: skip
    return nn.Sequential(*layers).to(dtype)


def _batch(n: int = 16, seed: int = 1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def _true_margins(net, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[..., B, n - 1] margins f_y - f_j at points [..., B, d]."""
    logits = net(points.flatten(0, -2)).reshape(*points.shape[:-1], -1)
    C = margin_rows(y, logits.shape[-1], logits)  # [B, S, n]
    return torch.einsum("bsn,...bn->...bs", C, logits)


def test_margin_rows():
    C = margin_rows(torch.tensor([0, 2]), 3, torch.zeros(()))
    assert C.shape == (2, 2, 3)
    assert C[0].tolist() == [[1, -1, 0], [1, 0, -1]]
    assert C[1].tolist() == [[-1, 0, 1], [0, -1, 1]]


@pytest.mark.parametrize("method, fused", [(m, False) for m in METHODS] + [(m, True) for m in METHODS[1:]])
def test_loss_is_finite_and_reaches_every_parameter(method, fused):
    net = _mlp(batch_norm=True).train()
    x, y = _batch()
    bounded = verifier.load(net, x, live=True)
    terms = certified_loss(bounded, x, y, 0.1, method, fused=fused)
    assert torch.isfinite(terms.loss) and terms.robust >= terms.natural - 1e-6
    grads = torch.autograd.grad(terms.loss, list(net.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method, fused", [("ibp", False), ("crown-ibp", False), ("crown-lbp", False),
                                          ("crown-ibp", True)])  # fmt: skip
def test_parameter_gradients_match_finite_differences(method, fused):
    net = _mlp(seed=3, dtype=torch.float64).eval()
    x, y = _batch(6, seed=4, dtype=torch.float64)
    bounded = verifier.load(net, x, live=True)
    params = list(net.parameters())
    loss = lambda: certified_loss(bounded, x, y, 0.05, method, kappa=0.3, beta=0.7, fused=fused).loss
    grads = torch.autograd.grad(loss(), params)
    gen = torch.Generator().manual_seed(0)
    h = 1e-6
    for p, g in zip(params, grads):
        for _ in range(4):
            k = int(torch.randint(0, p.numel(), (), generator=gen))
            with torch.no_grad():
                p.view(-1)[k] += h
                up = loss()
                p.view(-1)[k] -= 2 * h
                down = loss()
                p.view(-1)[k] += h
            numeric = (up - down) / (2 * h)
            assert abs(numeric - g.view(-1)[k]) <= 1e-6 + 1e-4 * abs(numeric), (method, p.shape, k)


def _pgd(net, x, y, eps, steps=30):
    """A few steps of L-inf PGD on the smallest margin, inside the ball and [0, 1]."""
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    z = (lo + hi) / 2
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        worst = _true_margins(net, z, y).min(-1).values.sum()
        (g,) = torch.autograd.grad(worst, z)
        z = torch.minimum(torch.maximum(z - eps / 4 * g.sign(), lo), hi)
    return z.detach()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_margin_bounds_are_sound_at_sampled_and_attacked_points(method, beta):
    net = _mlp(seed=2).eval()
    x, y = _batch(32, seed=5)
    eps = 0.2
    bounded = verifier.load(net, x, live=True)
    terms = certified_loss(bounded, x, y, eps, method, beta=beta)
    lo, hi = terms.input_bounds
    gen = torch.Generator().manual_seed(6)
    points = lo + (hi - lo) * torch.rand(500, *x.shape, generator=gen)
    adversarial = _pgd(net, x, y, eps)
    with torch.no_grad():
        sampled = _true_margins(net, points, y)
        attacked = _true_margins(net, adversarial, y)
        clean = _true_margins(net, x, y)
    bound = terms.margins.detach()
    assert (sampled >= bound - 1e-5).all() and (attacked >= bound - 1e-5).all()
    assert (attacked.min(-1).values < clean.min(-1).values).all()  # the attack does reach inside the set


@pytest.mark.parametrize("method", ["crown-ibp", "crown-lbp", "crown"])
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fused_loss_bounds_the_cross_entropy_at_sampled_and_attacked_points(method, eps):
    """Loss fusion: each example's robust loss (one CROWN row of the chords of exp) is at least the
    cross-entropy at every sampled and attacked point of its set."""
    net = _mlp(seed=2).eval()
    x, y = _batch(24, seed=5)
    bounded = verifier.load(net, x, live=True)
    gen = torch.Generator().manual_seed(6)
    adversarial = _pgd(net, x, y, eps)
    for i in range(len(y)):
        with torch.no_grad():
            terms = certified_loss(bounded, x[i : i + 1], y[i : i + 1], eps, method, fused=True)
        lo, hi = terms.input_bounds
        points = torch.cat(
            [lo + (hi - lo) * torch.rand(2000, 4, generator=gen), adversarial[i : i + 1], lo, hi]
        )
        with torch.no_grad():
            ce = nn.functional.cross_entropy(net(points), y[i].repeat(len(points)), reduction="none")
        assert float(terms.robust) >= float(ce.max()) - 1e-6, (i, float(terms.robust), float(ce.max()))


def test_fused_loss_takes_one_backward_row_and_beta_mixes_it_with_ibp(monkeypatch):
    net = _mlp(seed=9).eval()
    x, y = _batch(8, seed=10)
    bounded = verifier.load(net, x, live=True)
    rows = []
    backward = loss_module.crown.backward
    monkeypatch.setattr(loss_module.crown, "backward", lambda state, start, a, *r, **k: rows.append(a.shape[0])
                        or backward(state, start, a, *r, **k))  # fmt: skip
    ibp = certified_loss(bounded, x, y, 0.1, "ibp")
    fused = certified_loss(bounded, x, y, 0.1, "crown-ibp", fused=True)
    assert rows == [1]
    certified_loss(bounded, x, y, 0.1, "crown-ibp")
    assert rows == [1, 2]  # n - 1 margin rows
    torch.testing.assert_close(fused.margins, ibp.margins)  # the margins reported are IBP's
    none = certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=0.0, fused=True)
    half = certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=0.5, fused=True)
    assert rows == [1, 2, 1]
    torch.testing.assert_close(none.robust, ibp.robust)
    torch.testing.assert_close(half.robust, (ibp.robust + fused.robust) / 2)
    with pytest.raises(InputError, match="fused"):
        certified_loss(bounded, x, y, 0.1, "ibp", fused=True)


@pytest.mark.parametrize("eps", [0.2, 1e-3])
@pytest.mark.parametrize("method", METHODS)
def test_batch_statistics_bounds_are_sound_for_the_batch_function(method, eps):
    """Training mode: the bounds (over a view with each batch's BatchNorm map folded into the layer before it)
    hold for the function with this batch's statistics, sampled through the unfolded graph."""
    net = _mlp(seed=4, batch_norm=True).train()
    x, y = _batch(32, seed=12)
    bounded = verifier.load(net, x, live=True)
    terms = certified_loss(bounded, x, y, eps, method, batch_norm="batch")
    _, unfolded = bounded.graph.with_batch_statistics(x)  # the same maps: they depend on x only
    lo, hi = terms.input_bounds
    points = lo + (hi - lo) * torch.rand(500, *x.shape, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        logits = unfolded.forward(points.flatten(0, 1)).reshape(500, *x.shape[:1], 3)
        true = torch.einsum("bsn,pbn->pbs", margin_rows(y, 3, logits), logits)
    assert (true >= terms.margins.detach() - 1e-5).all()


def test_ibp_margins_through_the_last_layer_beat_subtracted_logit_intervals():
    net = _mlp(seed=7).eval()
    x, y = _batch(16, seed=8)
    bounded = verifier.load(net, x, live=True)
    terms = certified_loss(bounded, x, y, 0.1, "ibp")
    logits = bounded.bounds(verifier.Box((x - 0.1).clamp(min=0), (x + 0.1).clamp(max=1)), method="ibp")
    C = margin_rows(y, 3, x)
    naive = torch.einsum("bsn,bn->bs", C.clamp(min=0), logits.lower) + torch.einsum(
        "bsn,bn->bs", C.clamp(max=0), logits.upper
    )
    assert (terms.margins >= naive - 1e-6).all() and (terms.margins > naive + 1e-4).any()


def test_beta_interpolates_between_crown_ibp_and_ibp():
    net = _mlp(seed=9).eval()
    x, y = _batch(8, seed=10)
    bounded = verifier.load(net, x, live=True)
    ibp = certified_loss(bounded, x, y, 0.1, "ibp").margins
    crown = certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=1.0).margins
    half = certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=0.5).margins
    torch.testing.assert_close(certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=0.0).margins, ibp)
    torch.testing.assert_close(half, (ibp + crown) / 2)


def test_at_eps_zero_the_losses_coincide_and_margins_are_exact():
    net = _mlp().eval()
    x, y = _batch()
    terms = certified_loss(verifier.load(net, x, live=True), x, y, 0.0, "crown-ibp", kappa=0.2)
    torch.testing.assert_close(terms.robust, terms.natural)
    torch.testing.assert_close(terms.margins, _true_margins(net, x, y))
    assert terms.verified.tolist() == (net(x).argmax(1) == y).tolist()


def test_negligible_gradient_entries_are_dropped_relative_to_their_row():
    grad = torch.tensor([[0.5, -1e-20, 1e-5, 0.0], [1e-20, 1e-36, -1e-30, 0.0]])
    dropped = _drop_negligible(grad)
    assert torch.equal(dropped, torch.tensor([[0.5, 0.0, 1e-5, 0.0], [1e-20, 0.0, -1e-30, 0.0]]))
    assert torch.equal(_drop_negligible(grad.double()), grad.double())  # float64: eps**2 ~ 5e-32


def _small_cnn(seed: int) -> nn.Sequential:
    """DM-small's layer kinds (strided and unstrided convolutions, BatchNorm, ReLU) on 1x10x10 inputs; the last
    layer scaled up so that the worst-case logits of a row are far apart (tiny softmax weights)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 4, 2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(54, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip
    with torch.no_grad():
        net[-1].weight.mul_(20.0)
    return net.train()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_dropping_negligible_gradients_keeps_the_loss_and_the_parameter_gradients(method, monkeypatch):
    """A training step with the worst-case logits' negligible gradient entries dropped (float32, BatchNorm in
    training mode) gives the same loss and, up to rounding, the same parameter gradients as without (a
    threshold of 1e-4 of the row's largest, instead of eps**2, fails here)."""
    x = torch.rand(24, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(4))
    results, dropped = [], []

    def counting(grad):
        kept = _drop_negligible(grad)
        dropped.append(int(((kept == 0) & (grad != 0)).sum()))
        return kept

    for keep in (counting, lambda g: g):
        monkeypatch.setattr(loss_module, "_drop_negligible", keep)
        net = _small_cnn(5)  # afresh: the step updates the running statistics
        terms = certified_loss(verifier.load(net, x, live=True), x, y, 0.3, method)
        results.append((terms.loss.detach(), torch.autograd.grad(terms.loss, list(net.parameters()))))
    assert dropped[0] > 0  # the case does exercise the drop
    (loss, grads), (plain_loss, plain_grads) = results
    assert torch.equal(loss, plain_loss)
    for g, p in zip(grads, plain_grads):
        torch.testing.assert_close(g, p, rtol=1e-5, atol=1e-6 * float(p.abs().max()))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_training_mode_loss_and_gradients_equal_the_statistics_formula(method, monkeypatch):
    """Training mode (float64): the loss and every parameter gradient with BatchNorm through torch's fused
    kernels equal those with the batch's statistics and affine map written out as formulas."""
    x = torch.rand(24, 1, 10, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.randint(0, 5, (24,), generator=torch.Generator().manual_seed(4))

    def formula(op, x):
        y, scale, shift = batch_statistics_formula(op.module, x)
        return y, ScaleShift(scale, shift)

    results = []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(BatchNorm, "with_batch_statistics", formula)
        net = _small_cnn(5).double()
        terms = certified_loss(verifier.load(net, x, live=True), x, y, 0.1, method, kappa=0.3)
        results.append((terms.loss, torch.autograd.grad(terms.loss, list(net.parameters()))))
    (loss, grads), (want_loss, want_grads) = results
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    largest = max(float(g.abs().max()) for g in want_grads)  # biases before BatchNorm: zero up to rounding
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * largest)


def test_batch_norm_statistics_choice():
    net = _mlp(batch_norm=True).train()
    x, y = _batch(16, seed=11)
    bounded = verifier.load(net, x, live=True)
    batch = certified_loss(bounded, x, y, 0.0, batch_norm="batch").logits
    net.eval()
    running = certified_loss(bounded, x, y, 0.0, batch_norm="running").logits
    torch.testing.assert_close(running, net(x))
    assert not torch.allclose(batch, running)
    auto = certified_loss(bounded, x, y, 0.1, batch_norm="auto")  # eval mode: running statistics
    torch.testing.assert_close(auto.logits, running)


def test_bad_arguments_are_refused():
    net = _mlp().eval()
    x, y = _batch(4)
    bounded = verifier.load(net, x, live=True)
    for kwargs in ({"method": "alpha-crown"}, {"kappa": 1.5}, {"beta": -0.1}, {"batch_norm": "mean"}):
        with pytest.raises(InputError):
            certified_loss(bounded, x, y, 0.1, **kwargs)
    with pytest.raises(InputError, match="labels"):
        certified_loss(bounded, x, torch.tensor([0, 1, 2, 3]), 0.1)


def test_a_few_steps_on_mnist_raise_verified_accuracy():
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    from verifier.datasets import read_mnist

    images, labels = read_mnist(DATA, "train")
    x = torch.from_numpy(images[:2048]).unsqueeze(1)
    y = torch.from_numpy(labels[:2048])
    test_x, test_y = x[-256:], y[-256:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    bounded = verifier.load(net, x[:1], live=True)

    def verified() -> float:
        with torch.no_grad():
            return certified_loss(bounded, test_x, test_y, 0.05, "ibp").verified.float().mean().item()

    before = verified()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for step in range(50):
        k = (step * 64) % 1792
        terms = certified_loss(bounded, x[k : k + 64], y[k : k + 64], 0.05, "crown-ibp", kappa=0.5, beta=0.5)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    after = verified()
    assert after >= before + 0.3, (before, after)


def _reference_ibp_loss(net: nn.Sequential, x, y, eps: float, kappa: float) -> torch.Tensor:
    """The IBP certified loss by plain lower / upper interval arithmetic over the module's layers: weights
    split by sign, BatchNorm as its per-channel affine map (of the batch's statistics in training mode),
    the margin rows composed with the last layer's weights."""
    lo, hi, z = (x - eps).clamp(min=0), (x + eps).clamp(max=1), x
    for layer in net[:-1]:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            apply = layer._conv_forward if isinstance(layer, nn.Conv2d) else nn.functional.linear
            pos, neg, b = layer.weight.clamp(min=0), layer.weight.clamp(max=0), layer.bias
            lo, hi = apply(lo, pos, b) + apply(hi, neg, None), apply(hi, pos, b) + apply(lo, neg, None)
            z = layer(z)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            dims = [0, *range(2, z.dim())]
            var, mean = torch.var_mean(z, dims, unbiased=False) if net.training else (
                layer.running_var, layer.running_mean)  # fmt: skip
            scale = layer.weight * torch.rsqrt(var + layer.eps)
            shape = (-1,) + (1,) * (z.dim() - 2)
            scale, shift = scale.reshape(shape), (layer.bias - mean * scale).reshape(shape)
            ends = (lo * scale, hi * scale)
            lo, hi = torch.minimum(*ends) + shift, torch.maximum(*ends) + shift
            z = z * scale + shift
        else:  # ReLU, Flatten: monotone
            lo, hi, z = layer(lo), layer(hi), layer(z)
    last = net[-1]
    logits = last(z)
    C = margin_rows(y, logits.shape[1], logits)  # [B, n - 1, n]
    a = C @ last.weight  # [B, n - 1, d]: the margins as one map of the last layer's input
    lowest = a.clamp(min=0) @ lo.unsqueeze(-1) + a.clamp(max=0) @ hi.unsqueeze(-1)  # [B, n - 1, 1]
    margins = lowest.squeeze(-1) + C @ last.bias
    worst = torch.cat([margins.new_zeros(margins.shape[0], 1), -margins], 1)
    robust = nn.functional.cross_entropy(worst, torch.zeros_like(y))
    return kappa * nn.functional.cross_entropy(logits, y) + (1 - kappa) * robust


@pytest.mark.parametrize("training", [True, False])
def test_ibp_loss_and_gradients_equal_plain_interval_arithmetic(training):
    """The IBP loss of a conv + BatchNorm network (the live view, its BatchNorm maps folded into the layers,
    centre / radius rules) equals plain lower / upper interval arithmetic, and so do its parameter
    gradients: in training mode with the batch's statistics, in eval mode with the running ones."""
    torch.manual_seed(21)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(24, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))  # fmt: skip
    net = net.double().train()
    gen = torch.Generator().manual_seed(22)
    x = torch.rand(16, 1, 9, 9, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    net(torch.rand(64, 1, 9, 9, generator=gen, dtype=torch.float64))  # running statistics away from (0, 1)
    net.train(training)
    bounded = verifier.load(net, x, live=True)
    terms = certified_loss(bounded, x, y, 0.1, "ibp", kappa=0.3)
    reference = _reference_ibp_loss(net, x, y, 0.1, kappa=0.3)
    params = list(net.parameters())
    torch.testing.assert_close(terms.loss, reference, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(terms.loss, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

import pytest
import torch

from verifier.training.regularisers import relu_balance, tightness, warmup_regulariser


def _box(centre: torch.Tensor, radius: float, grad: bool = False):
    lo, hi = centre - radius, centre + radius
    return lo.requires_grad_(grad), hi.requires_grad_(grad)


def _layer(active: float, inactive: float, n: int = 10, radius: float = 0.1, unstable: int = 0, grad=False):
    """Pre-activation bounds [2, 2n + unstable]: n neurons centred at active > 0, n at inactive < 0, and
    unstable ones centred at 0."""
    centre = torch.tensor([active] * n + [inactive] * n + [0.0] * unstable).repeat(2, 1)
    return _box(centre, radius, grad)


INPUT = _box(torch.zeros(2, 5), 0.1)


def test_balanced_tight_bounds_cost_nothing():
    layers = [_layer(1.0, -1.0), _layer(2.0, -2.0, radius=0.2, unstable=3)]
    assert tightness(INPUT, layers).item() == 0
    assert relu_balance(layers).item() == 0
    assert warmup_regulariser(INPUT, layers, eps=0.0, eps_max=1.0).item() == 0


def test_tightness_values():
    # w0 = 0.1: penalty relu(0.5 - 0.1 / w) / 0.5 is 0 for w = 0.2, 0.5 for w = 0.4, ~1 for w = 100
    assert tightness(INPUT, [_layer(1, -1, radius=0.2)]).item() == pytest.approx(0.0)
    assert tightness(INPUT, [_layer(1, -1, radius=0.4)]).item() == pytest.approx(0.5)
    assert tightness(INPUT, [_layer(1, -1, radius=100.0)]).item() == pytest.approx(0.998)
    both = [_layer(1, -1, radius=0.1), _layer(1, -1, radius=0.4)]
    assert tightness(INPUT, both).item() == pytest.approx(0.25)
    assert tightness(INPUT, []).item() == 0


def test_tightness_gradients_shrink_exploding_bounds():
    inp = _box(torch.zeros(2, 5), 0.1, grad=True)
    layer = _layer(1.0, -1.0, radius=100.0, grad=True)
    tightness(inp, [layer]).backward()
    (lo, hi), (lo0, hi0) = layer, inp
    for g in (lo.grad, hi.grad, lo0.grad, hi0.grad):
        assert torch.isfinite(g).all() and (g != 0).all()
    assert (hi.grad > 0).all() and (lo.grad < 0).all()  # descending narrows the layer's interval
    assert (hi0.grad < 0).all()  # and a wider input interval would lower the ratio


def test_relu_balance_values():
    # active sum 10 * 3 = 30 against inactive 10: balance 1/3, penalty (0.5 - 1/3) / 0.5 = 1/3; the
    # squared deviations from the mean 1 (4 each on both sides) are balanced.
    unbalanced = _layer(3.0, -1.0)
    assert relu_balance([unbalanced]).item() == pytest.approx(1 / 3)
    assert relu_balance([_layer(-1.0, 3.0)]).item() == pytest.approx(1 / 3)  # min(r, 1/r): symmetric
    # no inactive neuron: the ratio is undefined, the layer's term is skipped but counted in the mean
    all_active = _box(torch.rand(2, 8) + 1, 0.1)
    assert relu_balance([unbalanced, all_active]).item() == pytest.approx(1 / 6)
    assert relu_balance([all_active]).item() == 0
    assert relu_balance([]).item() == 0


def test_relu_balance_gradients():
    layer = _layer(3.0, -1.0, unstable=4, grad=True)
    loss = relu_balance([layer])
    loss.backward()
    lo, hi = layer
    for g in (lo.grad, hi.grad):
        assert torch.isfinite(g).all()
        assert (g[:, :20] != 0).all()  # the stable neurons' centres enter the balance of the sums
    # descending moves the active centres down and the inactive ones further down, towards balance
    assert (lo.grad[:, :10] > 0).all() and (lo.grad[:, 10:20] > 0).all()
    # a balanced layer sits where the penalty is flat
    balanced = _layer(1.0, -1.0, grad=True)
    relu_balance([balanced]).backward()
    assert (balanced[0].grad == 0).all()


def test_warmup_regulariser_fades_with_epsilon():
    layers = [_layer(3.0, -1.0, radius=0.4)]  # tightness 0.5, relu balance 1/3
    full = warmup_regulariser(INPUT, layers, eps=0.0, eps_max=0.2, weight=0.5)
    assert full.item() == pytest.approx(0.5 * (0.5 + 1 / 3))
    assert warmup_regulariser(INPUT, layers, eps=0.05, eps_max=0.2).item() == pytest.approx(
        0.75 * full.item()
    )
    assert warmup_regulariser(INPUT, layers, eps=0.2, eps_max=0.2).item() == 0
    assert warmup_regulariser(INPUT, layers, eps=0.3, eps_max=0.2).item() == 0
    assert warmup_regulariser(INPUT, layers, eps=0.0, eps_max=0.0).item() == 0
    grad_layer = _layer(3.0, -1.0, radius=0.4, grad=True)
    warmup_regulariser(INPUT, [grad_layer], eps=0.1, eps_max=0.2).backward()
    assert torch.isfinite(grad_layer[1].grad).all() and (grad_layer[1].grad != 0).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="tol"):
        tightness(INPUT, [], tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        relu_balance([], tol=-1.0)
    with pytest.raises(ValueError, match="eps_max"):
        warmup_regulariser(INPUT, [], eps=0.0, eps_max=-1.0)

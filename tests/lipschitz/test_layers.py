"""The Lipschitz-by-construction layers: every layer and network satisfies ``|f(x) - f(x')| <= gamma
|x - x'|_2`` on random and adversarially chosen pairs, and its Jacobian's spectral norm is at most gamma, for
random values of all free parameters (the guarantee holds for every parameter value)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from verifier.lipschitz.layers import (
    AOLLinear,
    MaxMin,
    OrthogonalLinear,
    SandwichConv2d,
    SandwichLayer,
    cayley,
)
from verifier.lipschitz.models import lipschitz_cnn, lipschitz_mlp

DTYPE = torch.float64
SLACK = 1e-9  # rounding of float64 networks a few layers deep, relative


def _scrambled(module: nn.Module, seed: int) -> nn.Module:
    """The module in float64 with every free parameter redrawn (larger than at initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    module = module.to(DTYPE)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=gen, dtype=DTYPE))
    return module


def _ratios(f, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return (f(x) - f(x2)).flatten(1).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)


def _worst_pairs(f, x: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """The ratio after gradient ascent on both points of each pair (an attack on the Lipschitz bound)."""
    a = x.clone().requires_grad_(True)
    b = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=0.02)
    best = _ratios(f, a, b).detach()
    for _ in range(steps):
        loss = -_ratios(f, a, b).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = torch.maximum(best, _ratios(f, a, b).detach())
    return best


def _jacobian_norms(f, x: torch.Tensor) -> torch.Tensor:
    """Spectral norm of f's Jacobian at each point of x [n, d] (f applied to one point at a time)."""
    jac = torch.func.vmap(torch.func.jacrev(lambda p: f(p[None])[0]))(x)
    return torch.linalg.matrix_norm(jac.flatten(1, -1 - x[0].dim()).flatten(2), ord=2)


def _check(f, gamma: float, x: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(7)
    near = x + 1e-3 * torch.randn(x.shape, generator=gen, dtype=DTYPE)
    far = torch.randn(x.shape, generator=gen, dtype=DTYPE) * 3
    ratios = torch.cat([_ratios(f, x, near), _ratios(f, x, far), _worst_pairs(f, x)])
    assert ratios.max().item() <= gamma * (1 + SLACK), f"ratio {ratios.max().item()} > gamma {gamma}"
    norms = _jacobian_norms(f, x)
    assert norms.max().item() <= gamma * (1 + SLACK), f"Jacobian norm {norms.max().item()} > {gamma}"


LAYERS = {
    "sandwich": lambda: SandwichLayer(6, 9),
    "sandwich_narrowing": lambda: SandwichLayer(9, 4),
    "sandwich_output": lambda: SandwichLayer(6, 3, activation=False),
    "aol": lambda: AOLLinear(6, 9),
    "aol_narrowing": lambda: AOLLinear(9, 4),
    "orthogonal": lambda: OrthogonalLinear(6, 9),
    "orthogonal_narrowing": lambda: OrthogonalLinear(9, 4),
    "maxmin": lambda: MaxMin(),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_is_1_lipschitz(name, seed):
    layer = _scrambled(LAYERS[name](), seed)
    width = 9 if "narrowing" in name else 6
    x = torch.randn(64, width, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    _check(layer, 1.0, x)


def test_maxmin_is_gradient_norm_preserving_and_sorts_pairs():
    x = torch.randn(32, 8, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    m = MaxMin(dim=1)
    y = m(x)
    assert torch.equal(y[:, :4], torch.maximum(x[:, :4], x[:, 4:]))
    assert torch.equal(y[:, 4:], torch.minimum(x[:, :4], x[:, 4:]))
    jac = torch.func.vmap(torch.func.jacrev(lambda p: m(p[None])[0]))(x).reshape(32, 24, 24)
    sv = torch.linalg.svdvals(jac)
    assert torch.allclose(sv, torch.ones_like(sv))  # a permutation: every singular value 1
    with pytest.raises(ValueError, match="even"):
        m(torch.ones(2, 3))


def test_cayley_has_orthonormal_columns():
    gen = torch.Generator().manual_seed(0)
    for rows, cols in [(5, 5), (9, 4)]:
        q = cayley(torch.randn(rows, cols, generator=gen, dtype=DTYPE) * 3)
        assert torch.allclose(q.T @ q, torch.eye(cols, dtype=DTYPE), atol=1e-12)
    assert torch.linalg.matrix_norm(
        OrthogonalLinear(3, 7).orthogonal_weight(), ord=2
    ).item() == pytest.approx(1.0)


def test_sandwich_with_every_relu_active_is_contractive():
    """With every ReLU active the layer is the linear map ``2 A^T B``, of norm at most 1 (the two halves on
    their own need not be: ``sqrt(2) Psi^-1 B`` can be large)."""
    layer = _scrambled(SandwichLayer(5, 5), 0)
    w_in, w_out = layer.weights()
    assert torch.linalg.matrix_norm(w_out @ w_in, ord=2).item() <= 1 + SLACK


KINDS = [("sandwich", "relu"), ("aol", "relu"), ("aol", "maxmin"), ("orthogonal", "relu"),
         ("orthogonal", "maxmin")]  # fmt: skip


@pytest.mark.parametrize(("kind", "activation"), KINDS)
@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_network_is_gamma_lipschitz(kind, activation, gamma):
    torch.manual_seed(0)
    net = _scrambled(lipschitz_mlp([5, 8, 8, 3], gamma, kind, activation), 4)
    assert net.lipschitz_bound() == gamma
    x = torch.randn(48, 5, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    _check(net, gamma, x)


def test_builder_refuses_what_it_cannot_guarantee():
    with pytest.raises(ValueError, match="elementwise"):
        lipschitz_mlp([4, 8, 2], 1.0, "sandwich", "maxmin")
    with pytest.raises(ValueError, match="even"):
        lipschitz_mlp([4, 7, 2], 1.0, "aol", "maxmin")
    with pytest.raises(ValueError, match="kind"):
        lipschitz_mlp([4, 8, 2], 1.0, "spectral")
    with pytest.raises(ValueError, match="positive"):
        lipschitz_mlp([4, 8, 2], 0.0)


CONVS = {
    "conv": lambda: SandwichConv2d(2, 3, 3, 6),
    "conv_narrowing_odd_size": lambda: SandwichConv2d(3, 2, 3, 5),
    "conv_even_kernel": lambda: SandwichConv2d(2, 2, 2, 4),
    "conv_output": lambda: SandwichConv2d(2, 3, 3, 6, activation=False),
}


def _images(layer: SandwichConv2d, n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    shape = (n, layer.in_channels, layer.input_size, layer.input_size)
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_layer_is_1_lipschitz(name, seed):
    layer = _scrambled(CONVS[name](), seed)
    _check(layer, 1.0, _images(layer, 32, seed))


@pytest.mark.parametrize("name", ["conv", "conv_narrowing_odd_size"])
def test_conv_layer_is_a_sandwich_of_circular_convolutions(name):
    """As operators on flattened images: ``A A^T + B B^T = I`` (with ``Psi = I``), the dense maps give the
    forward's output (real, whatever the frequencies' symmetry), and shifts commute with the layer."""
    layer = _scrambled(CONVS[name](), 3)
    with torch.no_grad():
        layer.psi.zero_()
        w_in, bias, w_out = layer.dense_weights()
        a_t, b = w_out / math.sqrt(2.0), w_in / math.sqrt(2.0)
        eye = torch.eye(a_t.shape[0], dtype=DTYPE)
        assert torch.allclose(a_t.T @ a_t + b @ b.T, eye, atol=1e-12)
        x = _images(layer, 8, 4)
        y = layer(x)
        assert torch.allclose(torch.relu(x.flatten(1) @ w_in.T + bias) @ w_out.T, y.flatten(1), atol=1e-12)
        shifted = layer(torch.roll(x, (1, 2), dims=(2, 3)))
        assert torch.allclose(shifted, torch.roll(y, (1, 2), dims=(2, 3)), atol=1e-12)


class _Inflated(SandwichConv2d):
    """A broken layer: its output half ``A^T`` scaled by 1.05, no longer 1-Lipschitz."""

    def responses(self):
        q_a, q_b = super().responses()
        return 1.05 * q_a, q_b


def _tight(layer: SandwichConv2d) -> SandwichConv2d:
    """Parameters where the bound is attained: ``X = 0``, ``Y = tan(pi / 8) I`` at every frequency (a
    centre tap), so ``A^T = cos(pi / 4) I``, ``B = -sin(pi / 4) I`` and, where every ReLU is active (a large
    bias), the layer is ``2 A^T B x + c = -x + c``: an isometry."""
    layer = layer.to(DTYPE)
    c, k = layer.out_channels, layer.kernel_size
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[c:, :, k // 2, k // 2] = math.tan(math.pi / 8) * torch.eye(c, dtype=DTYPE)
        layer.scale.copy_(layer.weight.norm())
        layer.psi.zero_()
        layer.bias.fill_(10.0)
    return layer


def test_check_catches_a_conv_layer_inflated_by_5_percent():
    x = _images(SandwichConv2d(2, 2, 3, 6), 16, 5, scale=0.1)
    tight = _tight(SandwichConv2d(2, 2, 3, 6))
    _check(tight, 1.0, x)
    assert _ratios(tight, x, x.flip(0)).min().item() == pytest.approx(1.0, abs=1e-12)  # the bound is sharp
    with pytest.raises(AssertionError, match="> gamma"):
        _check(_tight(_Inflated(2, 2, 3, 6)), 1.0, x)
    inflated = _scrambled(_Inflated(2, 3, 3, 6), 0)  # random parameters come within 1% of the bound too
    with pytest.raises(AssertionError, match="> gamma"):
        _check(inflated, 1.0, _images(inflated, 32, 0))


@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_cnn_is_gamma_lipschitz(gamma):
    torch.manual_seed(0)
    net = _scrambled(lipschitz_cnn(2, 6, [3, 2], [10, 3], gamma), 6)
    assert net.lipschitz_bound() == gamma
    x = torch.randn(24, 2, 6, 6, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
    _check(net, gamma, x)

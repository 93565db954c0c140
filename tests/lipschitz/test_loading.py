"""The Lipschitz layers in the bound engine: loaded through torch.fx (and MaxMin through ONNX), bounds of
every method contain sampled outputs, CROWN is tighter than IBP, and MaxMin's shared ReLU keeps max and min
correlated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import verifier
from tests.helpers import assert_inside
from verifier.errors import ModelLoadError
from verifier.lipschitz.layers import MaxMin
from verifier.lipschitz.models import lipschitz_cnn, lipschitz_mlp

METHODS = ("ibp", "crown", "crown-ibp", "lbp", "alpha-crown")


def _points(x: torch.Tensor, eps: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, batch, d]: points of the L2 ball of radius eps around each row of x (some on the sphere)."""
    d = torch.randn((n, *x.shape), generator=gen)
    d = d / d.norm(dim=-1, keepdim=True)
    r = torch.rand((n, x.shape[0], 1), generator=gen) ** (1 / x.shape[-1])
    r[: n // 4] = 1.0
    return x + eps * r * d


def _widths(model, region, method) -> torch.Tensor:
    b = model.bounds(region, method=method)
    return b.upper - b.lower


KINDS = [("sandwich", "relu"), ("aol", "relu"), ("aol", "maxmin"), ("orthogonal", "maxmin")]


@pytest.mark.parametrize(("kind", "activation"), KINDS)
def test_builder_network_bounds_contain_samples(kind, activation):
    torch.manual_seed(0)
    net = lipschitz_mlp([6, 10, 10, 4], 2.0, kind, activation).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, generator=gen)
    model = verifier.load(net, x)
    assert torch.allclose(model(x), net(x), atol=1e-6)
    eps = 0.3
    region = verifier.L2Ball(x, eps)
    with torch.no_grad():
        y = net(_points(x, eps, 512, gen))
    for method in METHODS:
        b = model.bounds(region, method=method)
        assert_inside(y, b.lower, b.upper, f"{kind}/{activation} {method}")
    crown = _widths(model, region, "crown")
    assert (crown <= _widths(model, region, "ibp") + 1e-5).all()
    # no wider than the samples span would be unsound; checked per coordinate
    assert (crown >= y.amax(0) - y.amin(0) - 1e-5).all()


def _maxmin_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(5, 8), MaxMin(-1), nn.Linear(8, 6), MaxMin(-1), nn.Linear(6, 3))


def test_maxmin_bounds_contain_samples_and_crown_beats_ibp():
    net = _maxmin_net().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=gen)
    model = verifier.load(net, x)
    lo, hi = x - 0.2, x + 0.2
    region = verifier.Box(lo, hi)
    with torch.no_grad():
        y = net(lo + (hi - lo) * torch.rand((1024, *x.shape), generator=gen))
    for method in METHODS:
        b = model.bounds(region, method=method)
        assert_inside(y, b.lower, b.upper, f"MaxMin {method}")
    assert (_widths(model, region, "crown") <= _widths(model, region, "ibp") + 1e-5).all()


def test_maxmin_keeps_max_and_min_correlated():
    """``max(a, b) + min(a, b) = a + b``: through the one shared ReLU, CROWN bounds the sum exactly (the
    relu(a - b) terms cancel), and a channels-first image input works alike."""
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    model = verifier.load(nn.Sequential(MaxMin(dim=1)), x)  # kept whole inside a module
    lo, hi = x - 1.0, x + 1.0
    c = torch.ones(2, 1, 36)  # every max plus every min
    b = model.bounds(verifier.Box(lo, hi), method="crown", C=c)
    total = lambda t: t.flatten(1).sum(1)
    assert torch.allclose(b.lower[:, 0], total(lo), atol=1e-4)
    assert torch.allclose(b.upper[:, 0], total(hi), atol=1e-4)


def test_maxmin_exports_to_onnx_and_loads_back(tmp_path):
    pytest.importorskip("onnx")
    net = _maxmin_net().eval()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "maxmin.onnx"
    torch.onnx.export(net, (x,), str(path), opset_version=13, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})  # fmt: skip
    model = verifier.load(str(path))
    assert torch.allclose(model(x), net(x), atol=1e-5)
    region = verifier.LinfBall(x, 0.1)
    direct = verifier.load(net, x).bounds(region, method="crown")
    loaded = model.bounds(region, method="crown")
    assert torch.allclose(loaded.lower, direct.lower, atol=1e-4)  # the same shared-ReLU graph
    assert torch.allclose(loaded.upper, direct.upper, atol=1e-4)


def test_live_loading_is_refused_naming_the_node():
    """The layers' weights are computed from free parameters: a live graph would hold stale copies."""
    net = lipschitz_mlp([4, 6, 2], 1.0, "aol")
    with pytest.raises(ModelLoadError, match="body"):
        verifier.load(net, torch.randn(2, 4), live=True)


@pytest.mark.parametrize(("shape", "channels"), [((1, 8, 8), [2, 2]), ((2, 16, 16), [4])])
def test_sandwich_cnn_bounds_contain_samples(shape, channels):
    """SandwichConv2d loads as dense maps of its current convolutions: same outputs, and bounds that contain
    samples of an L2 ball."""
    torch.manual_seed(6)
    net = lipschitz_cnn(shape[0], shape[1], channels, [12, 3], 2.0).eval()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, *shape, generator=gen)
    model = verifier.load(net, x)
    assert torch.allclose(model(x), net(x), atol=1e-5)
    eps = 0.5
    with torch.no_grad():
        y = net(_points(x.flatten(1), eps, 256, gen).reshape(-1, *shape)).reshape(256, 2, -1)
    region = verifier.L2Ball(x, eps)
    for method in ("ibp", "crown"):
        b = model.bounds(region, method=method)
        assert_inside(y, b.lower, b.upper, f"cnn {shape} {method}")
    assert (_widths(model, region, "crown") <= _widths(model, region, "ibp") + 1e-5).all()


def test_sandwich_conv_too_large_to_materialise_is_refused_naming_the_node():
    net = lipschitz_cnn(3, 32, [8], [3], 1.0)
    with pytest.raises(ModelLoadError, match=r"MAX_DENSE_ENTRIES.*body_0"):
        verifier.load(net, torch.randn(1, 3, 32, 32))

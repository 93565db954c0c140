"""Live bounded views of a torch module (``load(..., live=True)``): operators read the module's own
parameters and BatchNorm statistics, so bounds differentiate with respect to them and follow the module."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import verifier
from verifier.errors import ModelLoadError
from verifier.ops.linear import BatchNorm


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4),
    )  # fmt: skip


def _data(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 7, 7, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _trained_statistics(net: nn.Module) -> nn.Module:
    net.train()
    with torch.no_grad():
        for seed in range(3):
            net(_data(16, seed)[0])
    return net


def test_operators_hold_the_modules_parameters():
    net = _trained_statistics(_net())
    bounded = verifier.load(net, _data()[0], live=True)
    held = {id(v) for n in bounded.graph.nodes if n.op is not None for v in vars(n.op).values()}
    assert all(id(p) in held for name, p in net.named_parameters() if "." in name and name[0] in "04")
    assert sum(isinstance(n.op, BatchNorm) for n in bounded.graph.nodes) == 2
    assert net.training  # loading traced in eval mode and restored the flags


def test_bounds_differentiate_with_respect_to_parameters():
    net = _trained_statistics(_net())
    x, y = _data()
    bounded = verifier.load(net, x, live=True)
    net.eval()
    lower = bounded.margins(verifier.LinfBall(x, 0.05), y, method="crown", grad=True)
    grads = torch.autograd.grad(lower.sum(), list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_view_follows_optimiser_steps_state_dicts_and_dtype():
    net = _trained_statistics(_net()).eval()
    x, y = _data()
    bounded = verifier.load(net, x, live=True)
    region = verifier.LinfBall(x, 0.02)
    before = bounded.margins(region, y, method="crown").clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    (-bounded.margins(region, y, method="crown-ibp", grad=True).sum()).backward()
    opt.step()
    torch.testing.assert_close(bounded(x), net(x))
    assert not torch.allclose(bounded.margins(region, y, method="crown"), before)
    other = _trained_statistics(_net(seed=5)).eval()
    net.load_state_dict(other.state_dict())  # weights and BatchNorm statistics
    torch.testing.assert_close(bounded(x), other(x))
    net.double()  # parameters keep their identity, BatchNorm statistics are read through the module
    torch.testing.assert_close(bounded(x.double()), other.double()(x.double()))
    lower = bounded.margins(verifier.LinfBall(x.double(), 0.02), y, method="crown")
    assert lower.dtype == torch.float64


def test_a_copy_is_not_live():
    net = _net().eval()
    x, _ = _data()
    bounded = verifier.load(net, x)
    with torch.no_grad():
        net[7].weight.mul_(2)
    assert not torch.allclose(bounded(x), net(x))


class _MatMulByParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.w.T)


def test_weights_computed_at_load_are_refused_naming_the_node():
    with pytest.raises(ModelLoadError, match="matmul.*computed from the module's parameters"):
        verifier.load(_MatMulByParameter(), torch.zeros(1, 5), live=True)
    verifier.load(_MatMulByParameter(), torch.zeros(1, 5))  # a copy is fine


def test_batch_statistics_match_torch_training_mode():
    net = _trained_statistics(_net()).train()
    reference = copy.deepcopy(net)
    x, y = _data(10, seed=7)
    bounded = verifier.load(net, x, live=True)
    out, view = bounded.with_batch_statistics(x)
    torch.testing.assert_close(out, reference(x))  # outputs, and the running statistics update
    for ours, theirs in zip(net.modules(), reference.modules()):
        if isinstance(ours, nn.modules.batchnorm._BatchNorm):
            torch.testing.assert_close(ours.running_mean, theirs.running_mean)
            torch.testing.assert_close(ours.running_var, theirs.running_var)
            assert ours.num_batches_tracked == theirs.num_batches_tracked
    # each BatchNorm map is folded into the layer before it: one affine operator per layer in the view
    kinds = [type(n.op).__name__ for n in view.graph.nodes[1:]]
    assert kinds == ["Conv", "ReLU", "Rearrange", "Linear", "ReLU", "Linear"], kinds
    # the view bounds the batch-statistics function that produced the outputs
    lower = view.margins(verifier.LinfBall(x, 0.0), y, method="crown")
    exact = out.gather(1, y[:, None]) - out
    exact = torch.stack([torch.cat([row[:k], row[k + 1 :]]) for row, k in zip(exact, y)])
    torch.testing.assert_close(lower, exact.detach(), atol=1e-5, rtol=1e-5)

"""Training-mode BatchNorm (``BatchNorm.with_batch_statistics``): the fused output and the batch's affine map
equal the statistics formula, in value and in every gradient (through the output and through the map's
scale and shift), and the running statistics follow torch's training-mode update."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from verifier.ops.linear import BatchNorm

MODULES = {  # (module, per-sample input shape)
    "1d": (lambda: nn.BatchNorm1d(3), (3,)),
    "1d sequence": (lambda: nn.BatchNorm1d(3), (3, 4)),
    "2d": (lambda: nn.BatchNorm2d(3), (3, 2, 3)),
    "3d": (lambda: nn.BatchNorm3d(2), (2, 2, 2, 2)),
    "2d no affine": (lambda: nn.BatchNorm2d(3, affine=False), (3, 2, 2)),
    "2d cumulative average": (lambda: nn.BatchNorm2d(3, momentum=None), (3, 2, 2)),
}


def _module(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A float64 module with random affine parameters and eps, and a batch of 5 inputs for it."""
    make, shape = MODULES[name]
    gen = torch.Generator().manual_seed(seed)
    module = make().double()
    module.eps = 1e-3
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module, 2 * torch.randn(5, *shape, generator=gen, dtype=torch.float64) + 1


def batch_statistics_formula(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(y, scale, shift) of the batch's statistics, written out: scale = gamma / sqrt(var + eps)."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dims, unbiased=False)
    scale = torch.rsqrt(var + module.eps)
    scale = scale if module.weight is None else scale * module.weight
    shift = -mean * scale if module.bias is None else module.bias - mean * scale
    shape = (-1,) + (1,) * (x.dim() - 2)
    scale, shift = scale.reshape(shape), shift.reshape(shape)
    return x * scale + shift, scale, shift


def _fused(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    y, op = BatchNorm(module, x.dim() - 1).with_batch_statistics(x)
    return y, op.scale, op.shift


@pytest.mark.parametrize("name", MODULES)
def test_output_map_and_gradients_equal_the_statistics_formula(name):
    module, x = _module(name)
    module.eval()  # batch statistics all the same, running ones left alone
    x.requires_grad_(True)
    inputs = [x, *module.parameters()]
    fused, formula = _fused(module, x), batch_statistics_formula(module, x)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in fused]
    for got, want in zip(fused, formula):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # losses that reach x and the parameters through the output, the map's scale or shift, or all three
    for used in ((0,), (1,), (2,), (0, 1, 2)):
        loss = (sum((weights[k] * t[k]).sum() for k in used) for t in (fused, formula))
        got, want = (torch.autograd.grad(f, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
                     for f in loss)  # fmt: skip
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *inputs: _fused(module, inputs[0]), inputs)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("training", [True, False])
def test_running_statistics_follow_torch(name, training):
    """In training mode the running statistics move as torch's own module moves them (momentum or the
    cumulative average, running_var from the unbiased variance); in eval mode they stay."""
    module, x = _module(name)
    reference = copy.deepcopy(module)
    module.train(training)
    for seed in range(3):
        x = _module(name, seed)[1]
        y = _fused(module, x)[0]
        torch.testing.assert_close(y, reference.train()(x))
    if training:
        for ours, theirs in zip(module.buffers(), reference.buffers()):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    else:
        fresh = _module(name)[0]
        for ours, theirs in zip(module.buffers(), fresh.buffers()):
            assert torch.equal(ours, theirs)


def test_running_variance_of_a_constant_channel_stays_nonnegative():
    """float32, a channel constant over the batch and others of tiny variance: the running variance (from
    the inverse standard deviation) matches torch's to the rounding of var + eps and is never negative."""
    gen = torch.Generator().manual_seed(0)
    module = nn.BatchNorm2d(4, eps=3e-5, momentum=1.0)  # (fl((0 + eps)^(-1/2)))^(-2) < eps: clamped at 0
    reference = copy.deepcopy(module)
    for _ in range(20):
        x = 1e-4 * torch.rand(8, 4, 3, 3, generator=gen) + torch.rand(1, 4, 1, 1, generator=gen)
        x[:, 0] = torch.rand((), generator=gen)
        _fused(module, x), reference(x)
        assert (module.running_var >= 0).all()
        torch.testing.assert_close(module.running_var, reference.running_var, rtol=0, atol=1e-6 * module.eps)

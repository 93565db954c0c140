"""Models beyond piecewise-linear networks, end to end: a transformer encoder block (attention with Softmax,
products of two graph tensors, LayerNorm) and a Lyapunov-style control model (Sin, Cos, products of
states). Each is built in torch, loaded through torch.fx and through ONNX; the graphs compute what torch
and onnxruntime compute, every method's bounds contain sampled outputs, and CROWN is tighter than IBP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graph_testing import OnnxRunner, assert_sound, box_points
from torch import nn

import verifier
from tests.helpers import DEEP_FLOAT32, worst_miss


class EncoderBlock(nn.Module):
    """Pre-norm self-attention (2 heads) and a ReLU feed-forward block on 4 tokens of width 8, then a
    linear read-out of 3 logits: the shape of the VNN-COMP vision transformers, small."""

    def __init__(self, tokens: int = 4, width: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(tokens * width, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        split = lambda z: z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((attention @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.ff(self.norm2(x))
        return self.head(x.flatten(1))


class Lyapunov(nn.Module):
    """A pendulum under a tanh controller, one Euler step, and the change of a quadratic-plus-cosine energy
    ``V(s) = s1^2 / 2 + s0 s1 / 4 + (1 - cos s0)``: Sin, Cos and products of states."""

    def __init__(self):
        super().__init__()
        self.controller = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    @staticmethod
    def energy(s0, s1):
        return s1 * s1 * 0.5 + s0 * s1 * 0.25 + (1 - torch.cos(s0))

    def forward(self, s):
        s0, s1 = s[:, 0:1], s[:, 1:2]
        u = self.controller(s)
        n0 = s0 + 0.1 * s1
        n1 = s1 + 0.1 * (-torch.sin(s0) + u * torch.cos(s0))  # a control entering through cos: a product
        return self.energy(n0, n1) - self.energy(s0, s1)


MODELS = {"encoder_block": (EncoderBlock, (4, 8), 0.05), "lyapunov": (Lyapunov, (2,), 0.2)}


@pytest.fixture(params=sorted(MODELS), scope="module")
def loaded(request, tmp_path_factory):
    """(module, per-sample shape, radius, {front end: model}, onnxruntime reference per opset)."""
    torch.manual_seed(11)
    kind, shape, radius = MODELS[request.param]
    module = kind().eval()
    example = torch.randn(1, *shape)
    models, runners = {"fx": verifier.load(module, example)}, {}
    for opset in (13, 17):  # LayerNorm as primitive operators, then as one LayerNormalization
        path = tmp_path_factory.mktemp(request.param) / f"opset{opset}.onnx"
        torch.onnx.export(module, example, str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
        models[f"onnx{opset}"], runners[f"onnx{opset}"] = verifier.load(path), OnnxRunner(path)
    return module, shape, radius, models, runners


def test_graphs_compute_what_torch_and_onnxruntime_compute(loaded):
    module, shape, _, models, runners = loaded
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(x)
    for name, model in models.items():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5, msg=name)
        if name in runners:
            np.testing.assert_allclose(runners[name](x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def _points_and_outputs(module, shape, radius, seed):
    centre = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    box = verifier.Box(centre - radius, centre + radius)
    points = box_points(box.lower, box.upper, 300, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ys = module(points.flatten(0, 1)).reshape(*points.shape[:2], -1)
    return box, ys


def test_ibp_and_crown_bound_sampled_outputs(loaded):
    module, shape, radius, models, _ = loaded
    box, ys = _points_and_outputs(module, shape, radius, 1)
    for name, model in models.items():
        for method in ("ibp", "crown"):
            lower, upper = model.bounds(box, method=method)
            assert worst_miss(ys, lower, upper, DEEP_FLOAT32) <= 0, f"{name} {method}"


@pytest.mark.slow
def test_every_method_bounds_sampled_outputs(loaded):
    module, shape, radius, models, runners = loaded
    box, _ = _points_and_outputs(module, shape, radius, 1)
    for name, model in models.items():
        reference = runners.get(name) or (lambda xs: module(xs).detach())
        assert_sound(model, box, reference, n=300)


def test_crown_is_far_tighter_than_ibp(loaded):
    """Intervals lose the correlations attention and energies are made of; linear bounds keep them."""
    _, shape, radius, models, _ = loaded
    centre = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    box = verifier.Box(centre - radius / 4, centre + radius / 4)
    for name, model in models.items():
        ibp, crown = model.bounds(box, method="ibp"), model.bounds(box, method="crown")
        assert (crown.lower >= ibp.lower - 1e-5).all() and (crown.upper <= ibp.upper + 1e-5).all(), name
        ratio = ((crown.upper - crown.lower).mean() / (ibp.upper - ibp.lower).mean()).item()
        assert ratio < 0.5, f"{name}: CROWN width is {ratio:.2f} of IBP's"

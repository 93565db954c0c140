"""The rounding-error pass against reality: onnxruntime's float32 evaluation of random small networks,
compared with the same network in float64 (the reference for exact arithmetic over the file's float32
weights), never differs by more than ``forward_error``'s bound, at random points and corners of the box."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import verifier
from tests.graph.graph_testing import Net, OnnxRunner
from verifier.engine.rounding import forward_error
from verifier.errors import InputError
from verifier.ops.rounding import FLOAT32, FLOAT64


def mlp(seed: int) -> Net:
    net = Net([1, 24], seed)
    h = net.op("Relu", net.gemm("x", 24, 64))
    h = net.op("Sigmoid", net.gemm(h, 64, 48))
    h = net.op("Tanh", net.gemm(h, 48, 16))
    h = net.op("LeakyRelu", net.gemm(h, 16, 16), alpha=0.1)
    return net, net.gemm(h, 16, 5)


def cancelling(seed: int) -> Net:
    """Wide dot products of mixed signs: sums much smaller than their terms, where rounding shows."""
    net = Net([1, 400], seed)
    h = net.op("Relu", net.op("Gemm", "x", net.rand(400, 32, scale=3.0), net.rand(32)))
    h = net.op("Div", net.op("Sub", h, net.const(0.3)), net.const(7.0))
    h = net.op("Abs", net.gemm(h, 32, 32))
    return net, net.op("Clip", net.gemm(h, 32, 4), net.const(-1.0), net.const(2.0))


def convolutional(seed: int) -> Net:
    net = Net([1, 3, 10, 10], seed)
    h = net.op("Relu", net.conv("x", 3, 8, pads=[1, 1, 1, 1]))
    h = net.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
    h = net.op("AveragePool", net.op("Relu", net.conv(h, 8, 8)), kernel_shape=[2, 2], strides=[1, 1])
    h = net.op("Add", h, net.op("Relu", net.op("Neg", h)))
    h = net.op("Flatten", net.op("ReduceMean", h, axes=[1], keepdims=1))
    return net, net.gemm(h, 4, 3)


def save(net_and_output, tmp_path) -> str:
    net, output = net_and_output
    path = str(tmp_path / "net.onnx")
    onnx.save(net.model(output), path)
    return path


def box_and_points(shape, seed: int, n: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random box (float32 ends) and ``n`` float32 points of it, a quarter of them corners."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, *shape, generator=gen)
    radius = torch.rand(1, *shape, generator=gen) * 2.0
    lo, hi = centre - radius, centre + radius
    t = torch.rand(n, *shape, generator=gen)
    t[: n // 4] = t[: n // 4].round()
    points = torch.minimum(torch.maximum(lo + t * (hi - lo), lo), hi)
    return lo, hi, points


@pytest.mark.parametrize("build", [mlp, cancelling, convolutional])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_evaluation_stays_within_the_bound(build, seed, tmp_path):
    path = save(build(seed), tmp_path)
    model = verifier.load(path)
    lo, hi, points = box_and_points(model.input_shape, seed)
    _, bound = forward_error(model.graph, lo, hi, FLOAT32)
    computed = OnnxRunner(path)(points).double()
    exact = model.to(dtype=torch.float64)(points.double())
    observed = (computed - exact).abs()
    assert torch.isfinite(bound).all()
    assert (observed <= bound).all(), f"worst observed / bound: {(observed / bound).max():.3g}"
    assert observed.max() > 0  # the comparison sees rounding at all


def test_float64_bound_is_far_smaller(tmp_path):
    model = verifier.load(save(cancelling(0), tmp_path))
    lo, hi, _ = box_and_points(model.input_shape, 0)
    e32 = forward_error(model.graph, lo, hi, FLOAT32)[1]
    e64 = forward_error(model.graph, lo, hi, FLOAT64)[1]
    assert (e64 < e32 * 1e-6).all()


def test_operator_without_rule_is_named(tmp_path):
    net = Net([1, 4], 0)
    path = save((net, net.op("Exp", net.gemm("x", 4, 3))), tmp_path)
    model = verifier.load(path)
    with pytest.raises(InputError, match=r"Exp \(node"):
        forward_error(model.graph, -torch.ones(1, 4), torch.ones(1, 4), FLOAT32)


def test_overflow_gives_no_bound(tmp_path):
    net = Net([1, 2], 0)
    path = save((net, net.op("Mul", net.gemm("x", 2, 2), net.const(np.float32(1e38)))), tmp_path)
    model = verifier.load(path)
    _, bound = forward_error(model.graph, -torch.ones(1, 2) * 100, torch.ones(1, 2) * 100, FLOAT32)
    assert torch.isinf(bound).all()

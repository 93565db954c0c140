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
from verifier.nn import ParamRamp
from verifier.ops.elementwise import Log, Power
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


def curved(seed: int) -> Net:
    """Exp, Log of a positive tensor, Sqrt, Pow 2 and 3, Reciprocal, Softplus."""
    net = Net([1, 12], seed)
    h = net.gemm("x", 12, 16)
    positive = net.op("Add", net.op("Exp", net.op("Mul", h, net.const(0.5))), net.const(0.1))
    parts = [
        net.op("Log", positive),
        net.op("Sqrt", positive),
        net.op("Pow", h, net.const(2.0)),
        net.op("Pow", positive, net.const(3.0)),
        net.op("Reciprocal", positive),
        net.op("Softplus", h),
    ]
    return net, net.gemm(net.op("Concat", *parts, axis=1), 96, 4)


def periodic(seed: int) -> Net:
    """Sin and Cos, and a product of the two (a Lyapunov-style term)."""
    net = Net([1, 8], seed)
    h = net.gemm("x", 8, 16)
    s, c = net.op("Sin", net.op("Mul", h, net.const(3.0))), net.op("Cos", h)
    return net, net.gemm(net.op("Concat", s, c, net.op("Mul", s, c), axis=1), 48, 3)


def products(seed: int) -> Net:
    """Products of two graph tensors: elementwise, broadcast, a quotient and a MatMul."""
    net = Net([1, 6], seed)
    a, b = net.gemm("x", 6, 12), net.gemm("x", 6, 12)
    p = net.op("Mul", a, b)
    scale = net.op("Add", net.op("Pow", net.gemm("x", 6, 1), net.const(2.0)), net.const(1.0))
    q = net.op("Div", p, scale)  # scale >= 1: a product with a reciprocal on a positive box
    m = net.op("Reshape", net.gemm(q, 12, 12), net.ints(1, 3, 4))
    n = net.op("Reshape", net.gemm(a, 12, 8), net.ints(1, 4, 2))
    return net, net.op("Flatten", net.op("MatMul", m, n))


def attention(seed: int) -> Net:
    """Softmax and LayerNorm as a PyTorch export before opset 17 spells them (one primitive per node):
    ``exp(x) / sum exp(x)`` and ``(x - mean) / sqrt(mean((x - mean)^2) + eps) * w + b``."""
    net = Net([1, 4, 8], seed)
    x = net.op("Add", net.op("Mul", "x", net.const(0.2)), net.const(np.linspace(-2.0, 2.0, 8)))  # var > 0
    centred = net.op("Sub", x, net.op("ReduceMean", x, axes=[-1], keepdims=1))
    var = net.op("ReduceMean", net.op("Pow", centred, net.const(2.0)), axes=[-1], keepdims=1)
    norm = net.op("Div", centred, net.op("Sqrt", net.op("Add", var, net.const(1e-5))))
    ln = net.op("Add", net.op("Mul", norm, net.rand(8)), net.rand(8))
    scores = net.op("MatMul", ln, net.rand(8, 4, scale=1.0))
    e = net.op("Exp", scores)
    attn = net.op("Div", e, net.op("ReduceSum", e, net.ints(-1), keepdims=1))
    return net, net.op("Flatten", net.op("MatMul", attn, net.rand(4, 3)))


def resized(seed: int) -> Net:
    net = Net([1, 2, 5, 5], seed)
    h = net.conv("x", 2, 3, pads=[1, 1, 1, 1])
    h = net.op("Resize", h, "", net.const([1.0, 1.0, 2.0, 2.0]), mode="linear")
    return net, net.op("Flatten", net.op("ReduceMean", net.op("Tanh", h), axes=[2], keepdims=1))


def gelu(seed: int) -> Net:
    """GELU, both forms (ONNX Gelu: opset 20, saved as such)."""
    net = Net([1, 6], seed)
    a = net.gemm("x", 6, 8)
    both = net.op("Concat", net.op("Gelu", a), net.op("Gelu", a, approximate="tanh"), axis=1)
    return net, net.gemm(both, 16, 4)


def nonsmooth(seed: int) -> Net:
    """An odd power across 0, Max / Min of graph tensors, ReduceMax, and steps."""
    net = Net([1, 6], seed)
    a, b = net.gemm("x", 6, 8), net.gemm("x", 6, 8)
    parts = [
        net.op("Pow", a, net.const(3.0)),
        net.op("Max", a, b),
        net.op("Min", a, net.const(0.1)),
        net.op("ReduceMax", b, axes=[1], keepdims=1),
        net.op("Floor", net.op("Mul", a, net.const(2.0))),
        net.op("Sign", b),
    ]
    return net, net.gemm(net.op("Concat", *parts, axis=1), 41, 4)


def save(net_and_output, tmp_path) -> str:
    net, output = net_and_output
    path = str(tmp_path / "net.onnx")
    opset = 20 if any(n.op_type == "Gelu" for n in net.nodes) else None
    onnx.save(net.model(output) if opset is None else net.model(output, opset=opset), path)
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


@pytest.mark.parametrize("build", [mlp, cancelling, convolutional, curved, periodic, products, attention,
                                   resized, gelu, nonsmooth])  # fmt: skip
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


def test_operator_without_rule_is_named():
    model = verifier.load(torch.nn.Sequential(torch.nn.Linear(4, 3), ParamRamp(3)), torch.zeros(1, 4))
    with pytest.raises(InputError, match=r"Ramp \(node"):
        forward_error(model.graph, -torch.ones(1, 4), torch.ones(1, 4), FLOAT32)


@pytest.mark.parametrize(
    ("op", "lo"),
    [(Log(), 1e-30), (Power(0.5), 0.0), (Power(-1.0), -1.0), (Power(-0.5), 0.0), (Power(1.5), 0.0)],
    ids=["log", "sqrt", "reciprocal", "rsqrt", "pow-1.5"],
)
def test_poles_and_domain_edges_give_no_bound(op, lo):
    """Where the input box widened by its error reaches the pole or leaves the domain, no bound (never a
    finite guess); the same box without error, or away from the edge, has a finite one."""
    box = (torch.full((1, 3), lo, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    error = torch.full((1, 3), 1e-7, dtype=torch.float64)
    assert torch.isinf(op.rounding_error([box], [error], FLOAT32)).all()
    away = (box[0] + 2.0, box[1] + 2.0)
    assert torch.isfinite(op.rounding_error([away], [error], FLOAT32)).all()
    if lo == 0.0 and op.exponent > 0:  # an exact input on the domain's edge: the implementation's error
        assert torch.isfinite(op.rounding_error([box], [0 * error], FLOAT32)).all()


def test_overflow_gives_no_bound(tmp_path):
    net = Net([1, 2], 0)
    path = save((net, net.op("Mul", net.gemm("x", 2, 2), net.const(np.float32(1e38)))), tmp_path)
    model = verifier.load(path)
    _, bound = forward_error(model.graph, -torch.ones(1, 2) * 100, torch.ones(1, 2) * 100, FLOAT32)
    assert torch.isinf(bound).all()

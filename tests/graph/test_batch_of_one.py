"""Models with a batch of one whose operators move, merge or remove the batch dimension (``x.transpose(0,
1)``, a Reshape of the batch into another dimension, ``W @ x`` over a batch of vectors) load unbatched: the
whole tensor, its leading 1 included, is the sample. Operators that keep a leading 1 (Conv, BatchNorm,
pooling) are still translated per sample. Checked against the module and onnxruntime; bounds contain
sampled outputs; refusals name the node."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from graph_testing import Net, OnnxRunner, assert_sound
from torch import nn

import verifier
from verifier import UnsupportedOperatorError


class TransposedBatch(nn.Module):
    """A CNN whose channels become the leading dimension, then a Linear and ``W @ x`` on the result."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3).eval()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 5)
        self.w = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))

    def forward(self, x):  # x: [1, 2, 4, 4]
        h = self.pool(F.relu(self.bn(self.conv(x))))  # [1, 3, 2, 2]
        h = F.relu(self.fc(h.flatten(2).transpose(0, 1)))  # [3, 1, 5]
        return (self.w @ h.flatten(1)).reshape(1, -1)  # [1, 10]


class VectorsOnTheRight(nn.Module):
    """``W @ x`` with x [1, n]: W [p, 1] mixes the batch of one into the product."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(3, 1, generator=torch.Generator().manual_seed(4))

    def forward(self, x):  # x: [1, 4]
        return F.relu(self.w @ x).sum(0, keepdim=True)  # [1, 4]


def _per_sample(module: nn.Module):
    """The module on each [1, ...] sample of a batch [K, 1, ...]: the function the loaded model bounds."""
    return lambda xs: torch.stack([module(x) for x in xs])


def _box(shape, batch: int, seed: int) -> verifier.Box:
    gen = torch.Generator().manual_seed(seed)
    centre, radius = torch.randn(batch, *shape, generator=gen), 0.3 * torch.rand(batch, *shape, generator=gen)
    return verifier.Box(centre - radius, centre + radius)


@pytest.mark.parametrize("build, shape", [(TransposedBatch, (1, 2, 4, 4)), (VectorsOnTheRight, (1, 4))])
def test_modules_moving_their_batch_load_unbatched(build, shape):
    torch.manual_seed(0)
    module = build().eval()
    model = verifier.load(module, torch.randn(shape))
    assert not model.has_batch_dim and model.input_shape == shape
    f = _per_sample(module)
    with torch.no_grad():
        x = torch.randn(3, *shape)
        torch.testing.assert_close(model(x), f(x), rtol=1e-5, atol=1e-6)
        assert_sound(model, _box(shape, batch=2, seed=1), f)


def test_operators_keeping_the_leading_one_stay_per_sample():
    """Conv, BatchNorm and MaxPool read channels after the batch: they are translated for one sample."""
    model = verifier.load(TransposedBatch().eval(), torch.randn(1, 2, 4, 4))
    shapes = {type(n.op).__name__: n.shape for n in model.graph.nodes if n.op is not None}
    assert shapes["Conv"] == (3, 4, 4) and shapes["MaxPool"] == (3, 2, 2) and shapes["LeftLinear"] == (2, 5)


def _onnx_batch_into_rows() -> onnx.ModelProto:
    """Conv, then a Reshape merging the batch into the rows ([1, 2, 3, 3] -> [2, 9]), MatMul, Transpose."""
    n = Net([1, 2, 4, 4])
    h = n.op("Relu", n.conv("x", 2, 2, k=2))  # [1, 2, 3, 3]
    h = n.op("Relu", n.op("MatMul", n.op("Reshape", h, n.ints(2, 9)), n.rand(9, 4)))  # [2, 4]
    return n.model(n.op("Reshape", n.op("Transpose", h, perm=[1, 0]), n.ints(1, 8)))


def test_an_onnx_reshape_of_the_batch_loads_unbatched(tmp_path):
    path = tmp_path / "batch_into_rows.onnx"
    onnx.save(_onnx_batch_into_rows(), path)
    model, runner = verifier.load(path), OnnxRunner(path, batched=False)
    assert not model.has_batch_dim and model.input_shape == (1, 2, 4, 4) and model.output_shape == (1, 8)
    x = torch.randn(3, 1, 2, 4, 4)
    torch.testing.assert_close(model(x), runner(x), rtol=1e-5, atol=1e-5)
    assert_sound(model, _box(model.input_shape, batch=2, seed=2), runner, n=50)


class ConvOverMovedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2)

    def forward(self, x):  # x: [1, 3, 4, 4] -> [3, 1, 4, 4]: a conv over a batch of three channels
        return self.conv(x.transpose(0, 1)).sum(0, keepdim=True)


class MaxOverInfinitePadding(nn.Module):
    def forward(self, x):  # x: [1, 2, 5]
        return F.max_pool1d(F.pad(x, (1, 0), value=float("-inf")), 2)


@pytest.mark.parametrize(
    "module, shape, node, reason",
    [
        (ConvOverMovedBatch(), (1, 3, 4, 4), "conv", "leading dimension"),
        (MaxOverInfinitePadding(), (1, 2, 5), "pad", "infinite value"),
    ],
)
def test_refusals_name_the_node_and_the_reason(module, shape, node, reason):
    with pytest.raises(UnsupportedOperatorError) as info:
        verifier.load(module, torch.randn(shape))
    reasons = {name: kind for kind, name in info.value.unsupported}
    assert node in reasons and reason in reasons[node], reasons

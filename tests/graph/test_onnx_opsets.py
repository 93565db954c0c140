"""ONNX files as torch exports them today: shape subgraphs with ConstantOfShape / Equal / Where are folded,
and opsets above 17 are lowered where onnx has the adapters (onnx2torch lacks converters for several newer
operator versions)."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from torch import nn

import verifier


class _Centred(nn.Module):
    """A mean over features broadcast back with expand: torch exports the expand's shape through a
    ConstantOfShape / Equal / Where subgraph of constants, and ReduceMean takes its axes as an input from
    opset 18 on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 6)

    def forward(self, x):
        h = torch.relu(self.linear(x))
        return h - h.mean(dim=1, keepdim=True).expand(-1, 6)


@pytest.mark.parametrize("opset", [17, 18])
def test_torch_exports_load_and_bound(tmp_path, opset):
    module, x = _Centred().eval(), torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"centred{opset}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x[:1], path, opset_version=opset, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = verifier.load(str(path))
    torch.testing.assert_close(model(x), module(x))
    b = model.bounds(verifier.LinfBall(x, 0.05), method="crown")
    pts = x + 0.05 * (2 * torch.rand(200, *x.shape, generator=torch.Generator().manual_seed(2)) - 1)
    y = module(pts.flatten(0, 1)).reshape(200, *x.shape)
    assert (y >= b.lower - 1e-5).all() and (y <= b.upper + 1e-5).all()


class _SplitCnn(nn.Module):
    """A small CNN with a split into uneven channel groups: torch exports Constant nodes and, from opset 18
    on, Split-18 (Constant-19 from 19), which onnx's version converter cannot lower."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.fc = nn.Linear(3 * 16, 3)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.conv(x)), [3, 2], dim=1)
        return self.fc((a * 0.5 + b.sum(1, keepdim=True)).flatten(1))


@pytest.mark.parametrize("opset", [18, 19, 20])
def test_torch_exports_with_constants_and_split_load(tmp_path, opset):
    module, x = _SplitCnn().eval(), torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"split{opset}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x[:1], path, opset_version=opset, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    kinds = {n.op_type for n in onnx.load(path).graph.node}
    assert {"Constant", "Split"} <= kinds
    model = verifier.load(str(path))
    torch.testing.assert_close(model(x), module(x))
    b = model.bounds(verifier.LinfBall(x, 0.05), method="crown")
    pts = x + 0.05 * (2 * torch.rand(100, *x.shape, generator=torch.Generator().manual_seed(2)) - 1)
    y = module(pts.flatten(0, 1)).reshape(100, 3, 3)
    assert (y >= b.lower - 1e-5).all() and (y <= b.upper + 1e-5).all()

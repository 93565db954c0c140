"""The engine's shortcut at the input (``Affine.box_form``, ``box_lower``) changes no bound, only how it is computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import verifier
from verifier.ops.base import Affine
from verifier.ops.conv import Conv


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_strided_cnn_bounds_equal_with_and_without_the_shortcut(method, monkeypatch):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 7, 7)
    model = verifier.load(net, x).to(dtype=torch.float64)
    region = verifier.LinfBall(x.double(), 0.05, clip=(0.0, 1.0))
    fast = model.bounds(region, method=method)
    monkeypatch.setattr(Conv, "box_form", Affine.box_form)  # concretise J^T a on the input instead
    slow = model.bounds(region, method=method)
    torch.testing.assert_close(fast.lower, slow.lower)
    torch.testing.assert_close(fast.upper, slow.upper)
    assert (fast.lower < fast.upper).all()

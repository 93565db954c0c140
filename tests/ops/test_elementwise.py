"""The convex / concave elementwise operators beyond the generic soundness test: what each spelling
converts to, and the errors for boxes outside a function's domain (raised by the engine naming the node)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import verifier
from verifier.errors import BoundComputationError, ModelLoadError
from verifier.ops.base import RelaxConfig
from verifier.ops.elementwise import Exp, Log, Power, Softplus


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _ops(fn) -> list:
    model = verifier.load(Fn(fn), torch.ones(1, 3))
    return [node.op for node in model.graph.nodes[1:]]


@pytest.mark.parametrize(
    "fn, op",
    [
        (torch.exp, Exp()),
        (lambda x: x.log(), Log()),
        (torch.sqrt, Power(0.5)),
        (lambda x: x.reciprocal(), Power(-1.0)),
        (lambda x: x**3, Power(3.0)),
        (lambda x: torch.pow(x, exponent=2), Power(2.0)),
        (F.softplus, Softplus()),
        (nn.Softplus(beta=0.5, threshold=4.0), Softplus(0.5, 4.0)),
    ],
)
def test_spellings_convert_to_their_operator(fn, op):
    assert _ops(fn) == [op]


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda x: torch.pow(2.0, x), "constant exponent"),
        (lambda x: torch.pow(x, x), "constant exponent"),
        (nn.Softplus(beta=-1.0), "beta"),
    ],
)
def test_unsupported_uses_are_refused_at_load(fn, message):
    with pytest.raises(ModelLoadError, match=message):
        _ops(fn)


@pytest.mark.parametrize(
    "fn, lower, what",
    [
        (torch.log, 0.0, r"Log\(\): input bounds \[0, 1\] leave the domain x > 0"),
        (torch.sqrt, -0.5, r"leave the domain x >= 0"),
        (lambda x: x**-0.5, 0.0, r"leave the domain x > 0"),
        (torch.reciprocal, -1.0, r"Power\(exponent=-1.0\): input bounds \[-1, 1\] contain 0"),
    ],
)
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_domain_errors_name_node_and_operator(fn, lower, what, method):
    model = verifier.load(Fn(fn), torch.ones(1, 3))
    node = model.graph.nodes[-1].name
    box = verifier.Box(torch.full((1, 3), lower), torch.ones(1, 3))
    with pytest.raises(BoundComputationError, match=f"node {node} .*{what}"):
        model.bounds(box, method=method)


@pytest.mark.parametrize("op", [Power(0.5), Power(1.5), Log(), Exp()])
def test_tangent_point_gradients_are_finite(op):
    """alpha-CROWN moves the tangent points by gradient: the vertical tangent of sqrt at 0 and point boxes
    (whose lines are constant) must not send NaN into them."""
    lo = torch.tensor([[0.0, 0.0, 1.0, 0.25]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    if isinstance(op, Log):
        lo, hi = lo + 1e-3, hi + 1e-3
    param = torch.tensor([[0.0, 0.5, 0.3, 1.0]], dtype=torch.float64, requires_grad=True)
    rel = op.relax(lo, hi, RelaxConfig(), param)
    (rel.a_lo + rel.b_lo + rel.a_up + rel.b_up).sum().backward()
    assert torch.isfinite(param.grad).all()

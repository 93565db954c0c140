"""Sin and Cos beyond the generic soundness test: spellings, exact IBP, the Curved rule within a half period,
and lines on boxes crossing inflection points that touch the function (tight) while bracketing it densely."""

from __future__ import annotations

import math

import pytest
import torch

from tests.ops.test_elementwise import _ops
from verifier.ops.base import RelaxConfig
from verifier.ops.periodic import Periodic

CFG = RelaxConfig()
SIN, COS = Periodic("sin"), Periodic("cos")


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    "fn, op", [(torch.sin, SIN), (lambda x: x.sin(), SIN), (torch.cos, COS), (lambda x: x.cos(), COS)]
)
def test_spellings_convert_to_their_operator(fn, op):
    assert _ops(fn) == [op]


@pytest.mark.parametrize(
    "op, lo, hi, expected",
    [
        (SIN, 0.0, math.pi, (0.0, 1.0)),
        (SIN, 0.1, 0.2, (math.sin(0.1), math.sin(0.2))),  # monotone: the ends
        (SIN, 2.0, 4.0, (math.sin(4.0), math.sin(2.0))),
        (SIN, 4.0, 5.0, (-1.0, math.sin(4.0))),  # holds the minimum 3 pi / 2
        (SIN, -20.0, -19.0, (math.sin(-20.0), math.sin(-19.0))),
        (COS, -math.pi, math.pi, (-1.0, 1.0)),
        (COS, 0.5, 1.0, (math.cos(1.0), math.cos(0.5))),
        (COS, 2 * math.pi - 0.1, 2 * math.pi + 0.2, (math.cos(0.2), 1.0)),
    ],
)
def test_ibp_is_exact(op, lo, hi, expected):
    low, high = op.ibp((_t(lo), _t(hi)))
    assert (low.item(), high.item()) == pytest.approx(expected, abs=1e-14)
    assert low.item() <= expected[0] and high.item() >= expected[1]


def test_a_half_period_gets_chord_and_midpoint_tangent():
    rel = SIN.relax(_t(0.0), _t(math.pi), CFG)  # concave: chord 0 below, tangent at pi / 2 (the line 1) above
    assert [rel.a_lo.item(), rel.b_lo.item(), rel.a_up.item(), rel.b_up.item()] == pytest.approx(
        [0.0, 0.0, 0.0, 1.0], abs=1e-14
    )


@pytest.mark.parametrize("op", [SIN, COS])
def test_lines_across_inflections_bracket_and_touch(op):
    gen = torch.Generator().manual_seed(3)
    centre = 40 * torch.rand(400, generator=gen, dtype=torch.float64) - 20
    radius = 4 * torch.rand(400, generator=gen, dtype=torch.float64) ** 2
    lo, hi = centre - radius, centre + radius
    rel = op.relax(lo, hi, CFG)
    x = lo + (hi - lo) * torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
    y = op.forward(x)
    below, above = y - (rel.a_lo * x + rel.b_lo), rel.a_up * x + rel.b_up - y
    assert below.min() >= 0 and above.min() >= 0
    crossing = ~op._curved(lo, hi)
    assert crossing.sum() > 100
    # each line touches f somewhere in the box (the extremes of f - s h are exact): no slack beyond rounding
    # and the sampling step
    assert below.min(0).values[crossing].max() < 1e-6 and above.min(0).values[crossing].max() < 1e-6


def test_a_box_over_a_period_gets_the_constant_lines():
    rel = COS.relax(_t(-1.0), _t(3 * math.pi), CFG)
    assert [rel.a_lo.item(), rel.b_lo.item(), rel.a_up.item(), rel.b_up.item()] == pytest.approx(
        [0.0, -1.0, 0.0, 1.0], abs=1e-12
    )

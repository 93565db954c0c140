"""ReLU and LeakyReLU lines on each kind of box, against the formulas of BOUNDS.md: a stable box gets its
piece (both lines, offset 0), a box crossing zero the chord through (l, f(l)) and (u, f(u)) and a line
through the origin whose slope is CROWN's adaptive choice, the "zero" choice or the given parameter."""

from __future__ import annotations

import pytest
import torch

from verifier.ops.activations import ReLU
from verifier.ops.base import RelaxConfig

# inactive, active, touching zero from below / above, a point at 0, crossing with u > -l, crossing with u < -l
LO = [-3.0, 0.5, -2.0, 0.0, 0.0, -1.0, -3.0]
HI = [-1.0, 2.0, 0.0, 1.5, 0.0, 3.0, 1.0]
CROSSING = [False, False, False, False, False, True, True]


def _expected(slope: float, chosen: list[float]):
    """(tangent slope, chord slope, chord offset) per box: the line through the origin on a crossing box
    takes ``chosen``; a stable box's lines are its piece."""
    tangent, chord_a, chord_b = [], [], []
    for l, u, crossing, c in zip(LO, HI, CROSSING, chosen):
        piece = slope if u <= 0 else 1.0
        a = (u - slope * l) / (u - l) if crossing else piece
        tangent.append(c if crossing else piece)
        chord_a.append(a)
        chord_b.append(slope * l - a * l if crossing else 0.0)
    return tangent, chord_a, chord_b


@pytest.mark.parametrize(
    "slope, lower",
    [(s, c) for s in (0.0, 0.1) for c in ("adaptive", "zero", "param")] + [(2.0, "zero"), (2.0, "param")],
)
def test_lines_are_the_pieces_or_the_chord_and_a_line_through_the_origin(slope, lower):
    lo, hi = torch.tensor([LO], dtype=torch.float64), torch.tensor([HI], dtype=torch.float64)
    small, large = min(slope, 1.0), max(slope, 1.0)
    param = torch.full_like(lo, (small + large) / 2) if lower == "param" else None
    rel = ReLU(slope).relax(lo, hi, RelaxConfig("zero" if lower == "zero" else "adaptive"), param)
    if lower == "param":
        chosen = [(small + large) / 2] * len(LO)
    else:
        chosen = [large if u > -l and lower == "adaptive" else small for l, u in zip(LO, HI)]
    tangent, chord_a, chord_b = (torch.tensor([t], dtype=torch.float64) for t in _expected(slope, chosen))
    # convex (slope <= 1): the chord lies above; concave: below
    zero = torch.zeros_like(tangent)
    lines = (tangent, zero, chord_a, chord_b) if slope <= 1 else (chord_a, chord_b, tangent, zero)
    for got, want in zip((rel.a_lo, rel.b_lo, rel.a_up, rel.b_up), lines):
        torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


def test_stable_lines_carry_no_gradient_and_crossing_ones_the_chords():
    """Bounds are differentiated through in certified training: on a stable box the lines are constants
    (gradient exactly 0, finite also at the point box), on a crossing one the chord's slope ``u / (u - l)``
    has derivatives ``-l / (u - l)^2`` in u and ``u / (u - l)^2`` in l."""
    lo = torch.tensor([LO], dtype=torch.float64, requires_grad=True)
    hi = torch.tensor([HI], dtype=torch.float64, requires_grad=True)
    rel = ReLU().relax(lo, hi, RelaxConfig())
    d_lo, d_hi = torch.autograd.grad(rel.a_up.sum(), (lo, hi))
    l, u, crossing = lo.detach(), hi.detach(), torch.tensor([CROSSING])
    want_lo = torch.where(crossing, u / (u - l) ** 2, 0.0)
    want_hi = torch.where(crossing, -l / (u - l) ** 2, 0.0)
    torch.testing.assert_close(d_lo, want_lo, rtol=1e-12, atol=0)
    torch.testing.assert_close(d_hi, want_hi, rtol=1e-12, atol=0)

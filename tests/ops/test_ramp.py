"""ParamRamp's relaxation is tight: exact on each linear piece, chords through both ends of the box on a
convex or concave box, lines through the kink inside the box otherwise, with CROWN's smaller-area choice.
(Soundness on boxes of every kind is the generic test's job: see ``cases.py``.)"""

from __future__ import annotations

import pytest
import torch

from verifier.ops.activations import Ramp
from verifier.ops.base import RelaxConfig

R = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # one breakpoint per feature
ADAPTIVE = RelaxConfig()


def _relax(eta: float, lo: list[list[float]], hi: list[list[float]], cfg: RelaxConfig = ADAPTIVE):
    op = Ramp(R, eta)
    lo, hi = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    return op, lo, hi, op.relax(lo, hi, cfg)


def _at(rel, x):
    """Lower and upper lines at x."""
    return rel.a_lo * x + rel.b_lo, rel.a_up * x + rel.b_up


@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_lines_are_the_piece_on_a_box_inside_one_piece(eta):
    # per feature (r = 0.5, 1, 2): below 0, on [0, r], above r, and boxes touching a kink at one end
    lo = [[-3.0, 0.0, 2.5], [-1.0, 0.2, 2.0], [-0.5, 0.0, 0.0]]
    hi = [[-1.0, 1.0, 4.0], [0.0, 0.4, 9.0], [-0.5, 1.0, 2.0]]
    op, lo, hi, rel = _relax(eta, lo, hi)
    slope = torch.tensor([[eta, 1.0, eta], [eta, 1.0, eta], [eta, 1.0, 1.0]], dtype=torch.float64)
    offset = torch.tensor(
        [[0.0, 0.0, 2 * (1 - eta)], [0.0, 0.0, 2 * (1 - eta)], [0.0] * 3], dtype=torch.float64
    )
    for a, b in ((rel.a_lo, rel.b_lo), (rel.a_up, rel.b_up)):
        torch.testing.assert_close(a, slope)
        torch.testing.assert_close(b, offset)
    assert not op.needs_bounds(lo, hi).any()


@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_chords_touch_f_at_both_ends_and_the_other_line_at_the_kink(eta):
    # feature 0 (r = 0.5): crossing 0 only; feature 1 (r = 1): crossing r only; feature 2 (r = 2): both
    op, lo, hi, rel = _relax(eta, [[-1.0, 0.5, -1.0]], [[0.4, 3.0, 3.0]])
    (lo_at_l, up_at_l), (lo_at_u, up_at_u) = _at(rel, lo), _at(rel, hi)
    f_l, f_u = op.forward(lo), op.forward(hi)
    # convex box: the upper line is the chord; concave box: the lower line is
    torch.testing.assert_close(
        torch.stack([up_at_l[0, 0], up_at_u[0, 0]]), torch.stack([f_l[0, 0], f_u[0, 0]])
    )
    torch.testing.assert_close(
        torch.stack([lo_at_l[0, 1], lo_at_u[0, 1]]), torch.stack([f_l[0, 1], f_u[0, 1]])
    )
    # the other lines pass through the kink inside the box: (0, 0) below, (r, r) above
    assert rel.b_lo[0, 0] == 0 and rel.b_lo[0, 2] == 0
    torch.testing.assert_close(_at(rel, R)[1][0, 1:], R[1:])
    assert op.needs_bounds(lo, hi).all()


def test_lines_through_a_kink_take_the_slope_with_the_smaller_area():
    """Of the two extreme slopes allowed through a kink, the chosen line has the smaller area between it and
    f: the larger value at the box's midpoint for a lower line, the smaller for an upper line."""
    eta = 0.1
    lo = [[-1.0, 0.5, -1.0], [-0.2, 0.8, -3.0]]
    hi = [[0.4, 3.0, 3.0], [0.4, 1.1, 2.5]]
    op, lo, hi, rel = _relax(eta, lo, hi)
    mid, f_l, f_u = (lo + hi) / 2, op.forward(lo), op.forward(hi)
    lower_slopes = (
        torch.full_like(lo, eta),
        f_u / hi,
    )  # through (0, 0): from eta to the slope reaching (u, f(u))
    upper_slopes = (
        torch.full_like(lo, eta),
        (R - f_l) / (R - lo),
    )  # through (r, r): up to the one from (l, f(l))
    best_lower = torch.maximum(*[a * mid for a in lower_slopes])
    best_upper = torch.minimum(*[R + a * (mid - R) for a in upper_slopes])
    lower_at_mid, upper_at_mid = _at(rel, mid)
    crosses_zero, crosses_r = (lo < 0) & (hi > 0), (lo < R) & (hi > R)
    torch.testing.assert_close(lower_at_mid[crosses_zero], best_lower[crosses_zero])
    torch.testing.assert_close(upper_at_mid[crosses_r], best_upper[crosses_r])


def test_flat_choice_takes_the_outer_slope_through_both_kinks():
    eta = 0.2
    rel = _relax(eta, [[-1.0, 0.5, -1.0]], [[0.4, 3.0, 3.0]], RelaxConfig("zero"))[-1]
    torch.testing.assert_close(rel.a_lo[0, [0, 2]], torch.full((2,), eta, dtype=torch.float64))
    torch.testing.assert_close(rel.a_up[0, 1:], torch.full((2,), eta, dtype=torch.float64))

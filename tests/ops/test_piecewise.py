"""Abs and Clip beyond the generic soundness test: every spelling converts, stable pieces are exact, and the
lines on boxes crossing a kink are the stated ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.ops.test_elementwise import _ops
from verifier.errors import ModelLoadError
from verifier.ops.base import RelaxConfig
from verifier.ops.piecewise import Abs, Clip

CFG = RelaxConfig()


@pytest.mark.parametrize(
    "fn, op",
    [
        (torch.abs, Abs()),
        (lambda x: x.abs(), Abs()),
        (lambda x: torch.clamp(x, -1, 2), Clip(-1.0, 2.0)),
        (lambda x: x.clamp(min=0.5), Clip(0.5)),
        (lambda x: x.clip(max=0.3), Clip(high=0.3)),
        (lambda x: torch.clip(x, torch.tensor(0.0), 1.0), Clip(0.0, 1.0)),
        (F.hardtanh, Clip(-1.0, 1.0)),
        (lambda x: F.hardtanh(x, -2.0, 3.0), Clip(-2.0, 3.0)),
        (nn.Hardtanh(-0.5, 0.5), Clip(-0.5, 0.5)),
        (nn.ReLU6(), Clip(0.0, 6.0)),
        (F.relu6, Clip(0.0, 6.0)),
    ],
)
def test_spellings_convert_to_their_operator(fn, op):
    assert _ops(fn) == [op]


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda x: torch.clamp(x, x), "constant min / max"),
        (lambda x: torch.clamp(x, 1.0, 1.0), "not below max"),
        (lambda x: torch.clamp(x, torch.tensor([0.0, 1.0, 2.0])), "not one constant"),
    ],
)
def test_unsupported_clamps_are_refused_at_load(fn, message):
    with pytest.raises(ModelLoadError, match=message):
        _ops(fn)


def _lines(op, lo, hi, param=None):
    lo, hi = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    rel = op.relax(lo, hi, CFG, param)
    return [t.tolist() for t in (rel.a_lo, rel.b_lo, rel.a_up, rel.b_up)]


def test_abs_is_exact_on_each_side_and_the_chord_and_slope_on_a_crossing_box():
    assert _lines(Abs(), [-3.0, 0.0], [-1.0, 2.0]) == [[-1.0, 1.0], [0.0, 0.0], [-1.0, 1.0], [0.0, 0.0]]
    # [-1, 3]: chord through (-1, 1) and (3, 3), slope 1/2, value 3/2 at 0; lower slope 1 (u > -l)
    assert _lines(Abs(), [-1.0, -3.0], [3.0, 1.0]) == [[1.0, -1.0], [0.0, 0.0], [0.5, -0.5], [1.5, 1.5]]
    assert _lines(Abs(), [-1.0], [3.0], torch.tensor([0.25]))[0] == [0.25]
    lo, hi = Abs().ibp((torch.tensor([-1.0, 2.0, -5.0]), torch.tensor([3.0, 4.0, -2.0])))
    assert lo.tolist() == [0.0, 2.0, 2.0] and hi.tolist() == [3.0, 4.0, 5.0]


@pytest.mark.parametrize("op", [Clip(-0.5, 1.5), Clip(low=-0.5), Clip(high=1.5)])
def test_clip_is_exact_on_every_piece(op):
    lo, hi = [-3.0, -0.4, 1.6], [-0.6, 1.4, 4.0]  # below, between and above the ends
    a_lo, b_lo, a_up, b_up = _lines(op, lo, hi)
    assert a_lo == a_up and b_lo == b_up
    x = torch.tensor([lo, hi], dtype=torch.float64)
    assert torch.equal(torch.tensor(a_lo) * x + torch.tensor(b_lo), op.forward(x))


def test_clip_lines_on_boxes_crossing_its_ends():
    # clamp(x, -1, 1) on [-1.5, 1]: only the convex kink at -1 is inside: the chord through (-1.5, -1) and
    # (1, 1) above, and a line through (-1, -1) below (slope 1: most of the box lies above the kink)
    assert [row[0] for row in _lines(Clip(-1.0, 1.0), [-1.5], [1.0])] == pytest.approx([1.0, 0.0, 0.8, 0.2])
    # clamp(x, max=0) on [-1, 3] is -relu(-x) moved: chord below, the flat piece's line above (slope 0)
    assert [row[0] for row in _lines(Clip(high=0.0), [-1.0], [3.0])] == pytest.approx([0.25, -0.75, 0.0, 0.0])

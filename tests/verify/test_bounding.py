"""Disjunct exclusion with the safety margin, and the check of bounds against concrete values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verifier
from verifier.spec.property import Case, Disjunct, Property
from verifier.verify.bounding import REL_TOL, Bounder, UnsoundBoundError, row_tolerance
from verifier.verify.deadline import Deadline
from verifier.verify.spec_batch import spec_batch


class FixedBounds:
    """Identity network on 2 inputs whose bound call returns preset lower bounds of ``C y``."""

    input_shape = (2,)

    def __init__(self, lower):
        self.lower = torch.tensor([lower], dtype=torch.float32)

    def __call__(self, x):
        return x

    def bounds(self, region, method, C, upper=True, stop=None):
        return verifier.Bounds(self.lower, None)


# Box [1, 2] x [1, 2]; unsafe if y0 <= 0 (disjunct 0) or (y1 <= 0 and y0 >= 0.5) (disjunct 1).
PROP = Property(
    2,
    2,
    (
        Case(
            np.array([1.0, 1.0]),
            np.array([2.0, 2.0]),
            (
                Disjunct(np.array([[1.0, 0.0]]), np.array([0.0])),
                Disjunct(np.array([[0.0, 1.0], [-1.0, 0.0]]), np.array([0.0, -0.5])),
            ),
        ),
    ),
)


def bounder(lower, witnesses=None):
    return Bounder(FixedBounds(lower), spec_batch(PROP), witnesses)


def test_a_disjunct_is_excluded_by_any_of_its_rows():
    b = bounder([1e-3, -1.0, -9.0])  # rows y0, y1, -y0: y0 >= 1e-3 excludes disjunct 0 only
    assert not b.run("ibp", Deadline(10))
    np.testing.assert_array_equal(b.excluded, [[True, False]])
    b.model.lower = torch.tensor([[-5.0, 0.5, -9.0]])  # y1 >= 0.5 now excludes disjunct 1 as well
    assert b.run("crown", Deadline(10))  # what earlier methods excluded stays excluded


def test_bounds_within_the_safety_margin_do_not_exclude():
    tol = row_tolerance(spec_batch(PROP), np.array([1.5]))[0, 0]
    assert tol == pytest.approx(REL_TOL * (1 + 1.5))
    b = bounder([tol / 2, -1.0, -9.0])
    assert not b.run("ibp", Deadline(10)) and not b.excluded.any()


def test_bounds_above_a_sampled_value_are_unsound():
    with pytest.raises(UnsoundBoundError, match="spec row 0"):
        bounder([1.6, -1.0, -9.0]).run("ibp", Deadline(10))  # y0 = 1.5 at the centre


def test_witness_points_catch_what_the_centre_does_not():
    assert bounder([1.2, -1.0, -9.0]).run("ibp", Deadline(10)) is False  # fine at the centre (1.5)
    corner = np.array([[1.0, 1.0]], dtype=np.float32)  # y0 = 1.0 < 1.2
    with pytest.raises(UnsoundBoundError):
        bounder([1.2, -1.0, -9.0], corner).run("ibp", Deadline(10))

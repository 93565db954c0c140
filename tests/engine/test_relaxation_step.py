"""The CROWN step through relaxed lines (``apply_relaxation``, ``apply_joint_relaxation``) against the plain
sign select it restructures: ``a >= 0`` takes the lower line, ``a < 0`` the upper one. Values must agree bit for
bit on the coefficients (one of the two products is exactly zero), up to summation order on the constants, and
gradients must agree with respect to the coefficients and the lines (the upper line's at ``a == 0``)."""

from __future__ import annotations

import pytest
import torch

from verifier.engine.state import apply_joint_relaxation, apply_relaxation
from verifier.ops.base import JointRelaxation, Relaxation


def _plain(a, a_lo, b_lo, a_up, b_up):
    """The sign select, written out: [S, B, n] coefficients and [S, B] constants."""
    lower = a > 0  # at a == 0 both lines give 0; the gradient takes the upper line's slope there
    new = torch.where(lower, a * a_lo, a * a_up).flatten(2)
    const = torch.where(lower, a * b_lo, a * b_up).flatten(2).sum(-1)
    return new, const


# how the lines are laid out against coefficients [S, B, 2, 5]: shared by the rows, one set per row, or
# with a size-1 dimension that broadcasts (their gradients are then sums over the copies)
LAYOUTS = {"shared": (4, 2, 5), "per_row": (3, 4, 2, 5), "broadcast": (4, 2, 1)}


def _case(dtype, layout: str = "shared"):
    gen = torch.Generator().manual_seed(7 + list(LAYOUTS).index(layout))
    a = torch.randn(3, 4, 2, 5, generator=gen, dtype=dtype)
    a[0, 0, 0] = 0.0  # zero coefficients: the tie of the two lines
    lines = [torch.randn(*LAYOUTS[layout], generator=gen, dtype=dtype) for _ in range(4)]
    return [t.requires_grad_() for t in (a, *lines)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_relaxation_step_is_the_sign_select_with_its_gradient(dtype, layout):
    a, a_lo, b_lo, a_up, b_up = inputs = _case(dtype, layout)
    new, const = apply_relaxation(a, Relaxation(a_lo, b_lo, a_up, b_up), 10)
    ref_new, ref_const = _plain(*inputs)
    assert torch.equal(new, ref_new)
    torch.testing.assert_close(const, ref_const, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    gen = torch.Generator().manual_seed(9)
    w_new, w_const = (
        torch.randn(new.shape, generator=gen, dtype=dtype),
        torch.randn(const.shape, generator=gen, dtype=dtype),
    )
    grads = torch.autograd.grad((new * w_new).sum() + (const * w_const).sum(), inputs)
    ref = torch.autograd.grad((ref_new * w_new).sum() + (ref_const * w_const).sum(), inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_relaxation_step_without_gradients_gives_the_same_values(layout):
    # verification runs without gradients, past the autograd Function (whose bookkeeping cost ~10%)
    inputs = _case(torch.float32, layout)
    rel = Relaxation(*inputs[1:])
    with_grad = apply_relaxation(inputs[0], rel, 10)
    assert all(t.requires_grad for t in with_grad)
    with torch.no_grad():
        without = apply_relaxation(inputs[0], rel, 10)
    assert not any(t.requires_grad for t in without)
    assert all(torch.equal(x, y) for x, y in zip(with_grad, without))


@pytest.mark.parametrize("wanted", [(0,), (1, 3), (2, 4)])
def test_relaxation_step_gives_the_gradients_asked_for(wanted):
    """Only some inputs carry a gradient (coefficients alone in verification's refinement, lines alone
    when the coefficients are constant): those get the sign select's."""
    inputs = [t.detach().requires_grad_(i in wanted) for i, t in enumerate(_case(torch.float64))]
    a, a_lo, b_lo, a_up, b_up = inputs
    new, const = apply_relaxation(a, Relaxation(a_lo, b_lo, a_up, b_up), 10)
    ref_new, ref_const = _plain(*inputs)
    asked = [inputs[i] for i in wanted]
    grads = torch.autograd.grad(new.sum() + 2 * const.sum(), asked)
    ref = torch.autograd.grad(ref_new.sum() + 2 * ref_const.sum(), asked)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=0)


def test_joint_relaxation_step_is_the_sign_select_of_each_input():
    a, a_lo, b_lo, a_up, b_up = inputs = _case(torch.float64)
    op = type("Same", (), {"unbroadcast": staticmethod(lambda i, t: t)})()
    rel = JointRelaxation((a_lo, 2 * a_lo), b_lo, (a_up, 3 * a_up), b_up)
    (first, second), const = apply_joint_relaxation(a, rel, op)
    ref_first, ref_const = _plain(*inputs)
    ref_second, _ = _plain(a, 2 * a_lo, b_lo, 3 * a_up, b_up)
    assert torch.equal(first.reshape(ref_first.shape), ref_first)
    assert torch.equal(second.reshape(ref_second.shape), ref_second)
    torch.testing.assert_close(const, ref_const, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(first.sum() + second.sum() + const.sum(), inputs)
    ref = torch.autograd.grad(ref_first.sum() + ref_second.sum() + ref_const.sum(), inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=0)


@pytest.mark.parametrize("offsets_require_grad", [False, True])
def test_zero_offsets_give_the_sign_select_and_its_gradient(offsets_require_grad):
    """A constant offset that is 0 everywhere (ReLU's lines through the origin) is skipped: the constant is
    still exactly the sign select's and so are the gradients; a zero offset that carries a gradient keeps it
    (``a+`` for the lower line, ``a-`` for the upper)."""
    a, a_lo, _, a_up, _ = _case(torch.float64)
    b_lo, b_up = (torch.zeros_like(a_lo, requires_grad=offsets_require_grad) for _ in range(2))
    inputs = [a, a_lo, a_up] + ([b_lo, b_up] if offsets_require_grad else [])
    new, const = apply_relaxation(a, Relaxation(a_lo, b_lo, a_up, b_up), 10)
    ref_new, ref_const = _plain(a, a_lo, b_lo, a_up, b_up)
    assert torch.equal(new, ref_new) and torch.equal(const, torch.zeros_like(ref_const))
    gen = torch.Generator().manual_seed(10)
    w_new, w_const = (torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (new, const))
    grads = torch.autograd.grad((new * w_new).sum() + (const * w_const).sum(), inputs)
    ref = torch.autograd.grad((ref_new * w_new).sum() + (ref_const * w_const).sum(), inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=0)

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


def _case(dtype, per_row: bool):
    gen = torch.Generator().manual_seed(7 if per_row else 8)
    s, b, shape = 3, 4, (2, 5)
    lead = (s, b) if per_row else (b,)
    a = torch.randn(s, b, *shape, generator=gen, dtype=dtype)
    a[0, 0, 0] = 0.0  # zero coefficients: the tie of the two lines
    lines = [torch.randn(*lead, *shape, generator=gen, dtype=dtype) for _ in range(4)]
    return [t.requires_grad_() for t in (a, *lines)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_row", [False, True])
def test_relaxation_step_is_the_sign_select_with_its_gradient(dtype, per_row):
    a, a_lo, b_lo, a_up, b_up = inputs = _case(dtype, per_row)
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


def test_joint_relaxation_step_is_the_sign_select_of_each_input():
    a, a_lo, b_lo, a_up, b_up = inputs = _case(torch.float64, False)
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
    a, a_lo, _, a_up, _ = _case(torch.float64, False)
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

"""Data movement (Rearrange): its interval image is computed exactly, end by end."""

import torch

from verifier.ops.shape import Rearrange


def test_ibp_moves_the_ends_themselves():
    # centre and radius would round: (lo + hi) / 2 - (hi - lo) / 2 is not lo in float32 for these ends
    lo = torch.tensor([[1e-8, -3.0, 0.1, 7.0, -1e8, 0.3]])
    hi = torch.tensor([[1.0, 5e-9, 0.7, 7.0, 2.0, 1e8]])
    op = Rearrange((6,), (2, 3))
    out_lo, out_hi = op.ibp((lo, hi))
    assert torch.equal(out_lo, lo.reshape(1, 2, 3)) and torch.equal(out_hi, hi.reshape(1, 2, 3))
    assert out_lo.data_ptr() == lo.data_ptr()  # a pure reshape is a view: no pass over the data


def test_infinite_end_stays_in_its_own_positions():
    # concat of a bounded input and one with an infinite lower end, plus a constant fill: the finite
    # input's positions and the constants keep their exact bounds (no inf - inf or inf * 0 reaching them)
    op = Rearrange((2, 2), (5,), torch.tensor([0, 1, -1, 2, 3]), torch.tensor([0.0, 0.0, 4.5, 0.0, 0.0]))
    a = (torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 2.5]]))
    b = (torch.tensor([[-torch.inf, 0.0]]), torch.tensor([[3.0, 1.0]]))
    lo, hi = op.ibp(a, b)
    assert torch.equal(lo, torch.tensor([[1.0, 2.0, 4.5, -torch.inf, 0.0]]))
    assert torch.equal(hi, torch.tensor([[1.5, 2.5, 4.5, 3.0, 1.0]]))

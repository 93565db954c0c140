"""The cuts' coefficients on the positions they use (``engine.cuts.Part``)."""

from __future__ import annotations

import torch

from verifier.engine.cuts import Part


def test_a_part_puts_the_multipliers_terms_where_the_whole_matrix_does():
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(40, 7, generator=g) * (torch.rand(40, 7, generator=g) < 0.1)
    dense[[5, 17, 30]] = 0.0  # rows no cut uses
    dense[11, 2] = 0.5  # at least one nonzero
    part = Part.of(dense.to_sparse())
    assert part.rows.tolist() == dense.abs().sum(1).nonzero().flatten().tolist()
    mu = torch.rand(2, 3, 7, generator=g)
    whole = torch.einsum("nc,sbc->sbn", dense, mu)
    placed = torch.zeros(2, 3, 40).index_add(2, part.rows, part.weights(mu))
    torch.testing.assert_close(placed, whole)

"""Concretisation over a box: the exact minimum of a linear function, with and without gradients."""

import itertools

import torch

from verifier.spec.regions import Box


def test_box_minimum_is_the_smallest_corner_value():
    gen = torch.Generator().manual_seed(5)
    lo = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(2, 3, generator=gen, dtype=torch.float64)
    a = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    c = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    box = Box(lo, hi)
    for _ in range(2):  # the centre and radius kept with the box give the same answer again
        got = box.concretize(a, c)
        for s, b in itertools.product(range(4), range(2)):
            corners = [torch.where(torch.tensor(m, dtype=torch.bool), hi[b], lo[b]) for m in
                       itertools.product([0, 1], repeat=3)]  # fmt: skip
            best = min(float(a[s, b] @ x) for x in corners) + float(c[s, b])
            assert abs(float(got[s, b]) - best) < 1e-12


def test_gradients_reach_the_ends_at_every_use():
    # ends that carry gradients are not cached: each concretisation's graph is its own, so two separate
    # backward passes (as an optimiser's steps make) both work and both reach the ends
    lo = torch.tensor([[0.0, -1.0]], requires_grad=True)
    hi = torch.tensor([[1.0, 2.0]], requires_grad=True)
    box = Box(lo, hi)
    a = torch.tensor([[[1.0, -2.0]]])
    for _ in range(2):
        lo.grad = hi.grad = None
        box.concretize(a, torch.zeros(1, 1)).sum().backward()
        # min is a_1 lo_1 + a_2 hi_2: d/d lo = (1, 0), d/d hi = (0, -2)
        assert torch.equal(lo.grad, torch.tensor([[1.0, 0.0]])) and torch.equal(
            hi.grad, torch.tensor([[0.0, -2.0]])
        )

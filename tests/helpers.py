"""Shared test utilities: boxes of every kind, samples inside them, and the containment check."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

BOX_KINDS = ("mixed", "negative", "positive", "degenerate", "around_zero", "wide")


def make_box(kind: str, shape: tuple[int, ...], batch: int, dtype: torch.dtype, gen: torch.Generator):
    """A batch of boxes [batch, *shape] of one kind."""
    r = lambda: torch.rand((batch, *shape), generator=gen, dtype=dtype)
    n = lambda: torch.randn((batch, *shape), generator=gen, dtype=dtype)
    if kind == "mixed":
        centre, radius = 2 * n(), 2 * r()
    elif kind == "negative":
        hi = -r() - 0.01
        return hi - 3 * r(), hi
    elif kind == "positive":
        lo = r() + 0.01
        return lo, lo + 3 * r()
    elif kind == "degenerate":
        centre, radius = 2 * n(), torch.zeros((batch, *shape), dtype=dtype)
    elif kind == "around_zero":
        centre, radius = 1e-3 * n(), 1e-2 * r()
    elif kind == "wide":
        centre, radius = 5 * n(), 10 * r()
    else:
        raise ValueError(kind)
    return centre - radius, centre + radius


def samples(lo: Tensor, hi: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """[n_total, batch, *shape]: uniform points, plus corners (all of them for small boxes)."""
    width = hi - lo
    points = [lo + width * torch.rand((n, *lo.shape), generator=gen, dtype=lo.dtype), lo[None], hi[None]]
    numel = lo[0].numel()
    if numel <= 8:
        for bits in itertools.product((0.0, 1.0), repeat=numel):
            pick = torch.tensor(bits, dtype=lo.dtype).reshape(lo.shape[1:])
            points.append((lo + width * pick)[None])
    else:
        pick = torch.randint(0, 2, (64, *lo.shape), generator=gen).to(lo.dtype)
        points.append(lo + width * pick)
    return torch.cat(points)


def tolerance(y: Tensor) -> Tensor:
    """Rounding allowance: relative to the magnitude involved, at the precision of y."""
    scale = 1e-5 if y.dtype == torch.float32 else 1e-11
    return scale * (1 + y.abs())


def assert_inside(y: Tensor, lower: Tensor, upper: Tensor, what: str) -> None:
    """Every sampled output y [n, batch, ...] lies in [lower, upper] up to rounding."""
    below = (lower - y - tolerance(y)).max().item()
    above = (y - upper - tolerance(y)).max().item()
    assert below <= 0 and above <= 0, f"{what}: outside the bounds by {max(below, above):.3g}"

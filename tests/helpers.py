"""Shared test utilities: boxes of every kind, samples inside them, the containment check with the suite's
one rounding allowance, seeds for parametrised cases, and a deadline that expires by count, not by time."""

from __future__ import annotations

import itertools
import math
import zlib

import torch
from torch import Tensor

from verifier.verify.deadline import Deadline

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


def joint_samples(boxes: list[tuple[Tensor, Tensor]], n: int, gen: torch.Generator) -> list[Tensor]:
    """``samples`` of the product of several boxes (one per operand), drawn jointly so that corners of the
    product are among them: [n_total, batch, *shape_i] per box."""
    lo = torch.cat([b[0].flatten(1) for b in boxes], 1)
    hi = torch.cat([b[1].flatten(1) for b in boxes], 1)
    points, out, start = samples(lo, hi, n, gen), [], 0
    for b in boxes:
        size = b[0][0].numel()
        out.append(points[:, :, start : start + size].reshape(points.shape[0], *b[0].shape))
        start += size
    return out


# Rounding allowance relative to 1 + |y|: a few roundings of the working precision for one operator or a
# small network; float32 models several layers deep, whose bounds are computed in float32 as well and
# checked against another implementation's outputs (onnxruntime), get DEEP_FLOAT32.
ROUNDING = {torch.float32: 1e-5, torch.float64: 1e-11}
DEEP_FLOAT32 = 1e-4


def tolerance(y: Tensor, scale: float | None = None) -> Tensor:
    """Rounding allowance for values y: ``scale`` (by default the one of y's precision) times 1 + |y|."""
    return (ROUNDING[y.dtype] if scale is None else scale) * (1 + y.abs())


def worst_miss(y: Tensor, lower: Tensor, upper: Tensor, scale: float | None = None) -> float:
    """How far beyond the allowance the outputs y [n, batch, ...] leave [lower, upper] (<= 0: inside)."""
    tol = tolerance(y, scale)
    return torch.maximum(lower - y - tol, y - upper - tol).max().item()


def assert_inside(y: Tensor, lower: Tensor, upper: Tensor, what: str) -> None:
    """Every sampled output y [n, batch, ...] lies in [lower, upper] up to rounding."""
    miss = worst_miss(y, lower, upper)
    assert miss <= 0, f"{what}: outside the bounds by {miss:.3g}"


def case_seed(*parts) -> int:
    """A fixed seed for one parametrised case, from its parameters' text: unlike ``hash``, which Python
    salts per process, it is the same on every run, so a failure comes back when the test is rerun."""
    return zlib.crc32(repr(parts).encode())


class CountdownDeadline(Deadline):
    """Unlimited until its ``expires_on``-th look at the clock, expired from then on: tests how a stage
    reacts to its deadline without measuring time. ``polls`` counts the looks."""

    def __init__(self, expires_on: int):
        super().__init__(None)
        self.expires_on, self.polls = expires_on, 0

    def remaining(self) -> float:
        self.polls += 1
        return math.inf if self.polls < self.expires_on else 0.0

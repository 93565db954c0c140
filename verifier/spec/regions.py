"""Perturbation sets: the input regions bounds are computed over.

Each region is batched: its tensors have shape [B, *input_shape], one region per row (an input, or a
sub-domain of branch and bound). Besides an enclosing box (for IBP), a region concretises linear
functions: ``concretize(A, c)`` returns ``min over x in X of <A, x> + c`` for coefficients ``A`` of shape
[S, B, *input_shape] and ``c`` of shape [S, B]: a lower bound of every spec row over every region.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from verifier.errors import InputError


def _finite(name: str, t: Tensor) -> Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or inf")
    return t


def _radius(eps, like: Tensor) -> Tensor:
    eps = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if not torch.isfinite(eps).all() or (eps < 0).any():
        raise InputError(f"eps must be finite and >= 0, got {eps.tolist() if eps.numel() < 8 else eps}")
    if eps.dim() == 1 and eps.numel() == like.shape[0]:  # one radius per batch row
        return eps.reshape((-1,) + (1,) * (like.dim() - 1))
    try:
        if torch.broadcast_shapes(eps.shape, like.shape) == like.shape:
            return eps
    except RuntimeError:
        pass
    raise InputError(
        f"eps of shape {tuple(eps.shape)} fits neither one radius per row nor x {tuple(like.shape)}"
    )


class Region:
    """Base class: an input set with an enclosing box and linear concretisation."""

    def box(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def concretize(self, a: Tensor, c: Tensor) -> Tensor:
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> Region:
        raise NotImplementedError

    def select(self, index: Tensor) -> Region:
        """The regions of the batch rows ``index`` (rows may repeat)."""
        raise NotImplementedError

    def centre_radius(self) -> tuple[Tensor, Tensor]:
        """The enclosing box's centre and radius, flat per batch row: [B, n] each."""
        return _centre_radius(*self.box())

    @property
    def is_box(self) -> bool:
        """Whether the region equals its enclosing box (IBP is then exact on coordinate-wise maps)."""
        return False

    @property
    def batch(self) -> int:
        return self.box()[0].shape[0]


@dataclass(frozen=True)
class Box(Region):
    """``lower <= x <= upper`` elementwise."""

    lower: Tensor
    upper: Tensor

    def __post_init__(self):
        lo, hi = _finite("lower", self.lower), _finite("upper", self.upper)
        if lo.shape != hi.shape:
            raise InputError(f"lower {tuple(lo.shape)} and upper {tuple(hi.shape)} differ in shape")
        if (lo > hi).any():
            raise InputError("lower > upper somewhere in the box")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    def box(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper

    @property
    def is_box(self) -> bool:
        return True

    def concretize(self, a: Tensor, c: Tensor) -> Tensor:
        """``<A, centre> - <|A|, radius>``: the minimum of a linear function over a box (dot products that
        reduce while they multiply: no product laid out per coefficient)."""
        centre, radius = self.centre_radius()
        a = a.flatten(2)
        return c + torch.linalg.vecdot(a, centre) - torch.linalg.vecdot(a.abs(), radius)

    def centre_radius(self) -> tuple[Tensor, Tensor]:
        """Kept with the box (an optimiser concretises over it at every step, a chunked pass once per
        chunk), unless the ends carry gradients, which each use's graph must then own."""
        if self.lower.requires_grad or self.upper.requires_grad:
            return _centre_radius(self.lower, self.upper)
        return self._kept_centre_radius

    @cached_property
    def _kept_centre_radius(self) -> tuple[Tensor, Tensor]:
        return _centre_radius(self.lower, self.upper)

    def to(self, device=None, dtype=None) -> Box:
        return Box(self.lower.to(device, dtype), self.upper.to(device, dtype))

    def select(self, index: Tensor) -> Box:
        return Box(self.lower[index], self.upper[index])


def _centre_radius(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    return ((upper + lower) / 2).flatten(1), ((upper - lower) / 2).flatten(1)


def LinfBall(x: Tensor, eps, clip: tuple[float, float] | None = None) -> Box:
    """``||x' - x||_inf <= eps``, intersected with ``clip = (min, max)`` when given: that is a box."""
    x = _finite("x", x)
    eps = _radius(eps, x)
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(min=clip[0], max=clip[1]), hi.clamp(min=clip[0], max=clip[1])
    return Box(lo, hi)


@dataclass(frozen=True)
class L2Ball(Region):
    """``||x' - x||_2 <= eps`` per batch row, intersected with the box ``clip`` when given."""

    x: Tensor
    eps: Tensor | float
    clip: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "x", _finite("x", self.x))
        object.__setattr__(self, "eps", _radius(self.eps, self.x))
        if self.eps.numel() not in (1, self.x.shape[0]):
            raise InputError("an L2 ball takes one radius, or one per batch row")

    def box(self) -> tuple[Tensor, Tensor]:
        lo, hi = self.x - self.eps, self.x + self.eps
        if self.clip is not None:
            lo, hi = lo.clamp(*self.clip), hi.clamp(*self.clip)
        return lo, hi

    def concretize(self, a: Tensor, c: Tensor) -> Tensor:
        """``<A, x> - eps ||A||_2`` (Cauchy-Schwarz); with clipping, also the box bound, keeping the larger."""
        eps = self.eps.flatten() if self.eps.dim() else self.eps
        flat = a.flatten(2)
        ball = c + (flat * self.x.flatten(1)).sum(-1) - eps * flat.norm(dim=-1)
        if self.clip is None:
            return ball
        return torch.maximum(ball, Box(*self.box()).concretize(a, c))

    def select(self, index: Tensor) -> L2Ball:
        eps = self.eps.flatten()[index] if self.eps.numel() > 1 else self.eps
        return L2Ball(self.x[index], eps, self.clip)

    def to(self, device=None, dtype=None) -> L2Ball:
        eps = self.eps.to(device, dtype) if isinstance(self.eps, Tensor) else self.eps
        return L2Ball(self.x.to(device, dtype), eps, self.clip)

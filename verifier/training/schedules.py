"""Schedules of training hyper-parameters as functions of the optimiser step.

Each schedule is a small frozen dataclass (picklable, so checkpoints can store it) called as
``sched(step) -> float``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmoothRamp:
    """Epsilon schedule of Shi et al. 2021: zero, then a power ramp joined smoothly to a linear one.

    With the ramp fraction ``f = (step - warmup) / ramp`` and ``m = mid``, ``p = exponent``:

        eps(step) = 0                                     step < warmup
                  = c (f / m)^p                           0 <= f < m
                  = target - (target - c) (1 - f) / (1 - m)   m <= f < 1
                  = target                                f >= 1

    ``c = target / (1 + p (1 - m) / m)`` makes value and slope continuous at ``f = m``: both pieces equal
    ``c`` there and their slopes ``p c / m`` and ``(target - c) / (1 - m)`` agree. With ``p = 1`` the
    whole ramp is one straight line. ``ramp = 0`` jumps to ``target`` at ``warmup``.

    Args:
        target: the final epsilon (>= 0).
        warmup: steps with epsilon 0 (>= 0).
        ramp: steps from 0 to ``target`` (>= 0).
        mid: ramp fraction where the power piece hands over to the linear one, in (0, 1).
        exponent: power of the first piece (>= 1, so the ramp starts no steeper than it continues).
    """

    target: float
    warmup: int
    ramp: int
    mid: float = 0.25
    exponent: float = 4.0

    def __post_init__(self):
        if not self.target >= 0:
            raise ValueError(f"SmoothRamp: target must be >= 0, got {self.target}")
        if not (self.warmup >= 0 and self.ramp >= 0):
            raise ValueError(f"SmoothRamp: warmup and ramp must be >= 0, got {self.warmup} and {self.ramp}")
        if not 0 < self.mid < 1:
            raise ValueError(f"SmoothRamp: mid must lie in (0, 1), got {self.mid}")
        if not self.exponent >= 1:
            raise ValueError(f"SmoothRamp: exponent must be >= 1, got {self.exponent}")

    @property
    def knee(self) -> float:
        """The value ``c`` at ``f = mid``."""
        return self.target / (1 + self.exponent * (1 - self.mid) / self.mid)

    def __call__(self, step: float) -> float:
        if step < self.warmup:
            return 0.0
        if step >= self.warmup + self.ramp:
            return float(self.target)
        f = (step - self.warmup) / self.ramp
        if f < self.mid:
            return self.knee * (f / self.mid) ** self.exponent
        return self.target - (self.target - self.knee) * (1 - f) / (1 - self.mid)


@dataclass(frozen=True)
class LinearRamp:
    """``start`` before step ``begin``, linear to ``end`` over ``length`` steps, ``end`` from then on.

        value(step) = start + (end - start) * clamp((step - begin) / length, 0, 1)

    (``length = 0`` jumps at ``begin``.) Used for CROWN-IBP's natural-loss weight kappa (e.g. 1 -> 0.5)
    and its CROWN-IBP/IBP mixing weight beta (1 -> 0).
    """

    start: float
    end: float
    begin: int
    length: int

    def __post_init__(self):
        if not (self.begin >= 0 and self.length >= 0):
            raise ValueError(f"LinearRamp: begin and length must be >= 0, got {self.begin} and {self.length}")

    def __call__(self, step: float) -> float:
        if step < self.begin:
            return float(self.start)
        if step >= self.begin + self.length:
            return float(self.end)
        return self.start + (self.end - self.start) * (step - self.begin) / self.length

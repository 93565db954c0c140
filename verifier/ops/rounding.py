"""Floating-point rounding of a forward pass: the model of arithmetic the operators' ``rounding_error``
rules assume, and the helpers they share.

Model (IEEE 754 binary formats, round to nearest, unit roundoff ``u``): each operation ``a op b`` returns
``(a op b)(1 + delta) + eta`` with ``|delta| <= u`` and ``|eta| <= tiny`` (``tiny``: the smallest normal
number, which covers gradual underflow and flush-to-zero of results alike). Then a sum of ``m`` terms,
products or not, in any order, with or without fused multiply-add, has (Higham, *Accuracy and Stability
of Numerical Algorithms*, section 3.1)

    |fl(sum_i t_i) - sum_i t_i| <= gamma_m * sum_i |t_i| + m * tiny,    gamma_m = m u / (1 - m u).

A rule receives, per input, the real-arithmetic interval ``[lo, hi]`` of that input over the region and
``e >= 0`` with ``|computed - exact| <= e`` elementwise, and returns ``e_out`` with the same meaning for its
output: the computed output (its float operation on the computed inputs) differs from the exact output
(its real function of the exact inputs) by at most ``e_out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class NoRoundingRule(NotImplementedError):
    """An operator whose floating-point evaluation has no error bound here."""


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: ``unit`` roundoff ``u``, smallest normal ``tiny``, ``largest`` finite."""

    name: str
    unit: float
    tiny: float
    largest: float

    def gamma(self, m: int) -> float:
        """``gamma_m = m u / (1 - m u)``; ``inf`` when ``m u >= 1`` (no bound)."""
        mu = m * self.unit
        return mu / (1.0 - mu) if mu < 1.0 else float("inf")


FLOAT32 = FloatFormat("float32", 2.0**-24, 2.0**-126, float(torch.finfo(torch.float32).max))
FLOAT64 = FloatFormat("float64", 2.0**-53, 2.0**-1022, float(torch.finfo(torch.float64).max))
FORMATS = {f.name: f for f in (FLOAT32, FLOAT64)}


def magnitude(bounds: tuple[Tensor, Tensor], error: Tensor) -> Tensor:
    """A bound on ``|computed|``: ``max(|lo|, |hi|) + e`` (the computed value lies in ``[lo - e, hi + e]``)."""
    lo, hi = bounds
    return torch.maximum(lo.abs(), hi.abs()) + error


# Assumed accuracy of the runtime's transcendental functions (exp, log, sin, cos, pow, sqrt, sigmoid, tanh,
# erf, softplus), in units u of the size each rule states: measured on onnxruntime's CPU kernels at a few
# million points (README, float queries), at most 5.5 u; an assumption, not a proof
IMPLEMENTATION_ULPS = 16.0


def lipschitz_error(slope: Tensor | float, error: Tensor, size: Tensor | float, ulps: float,
                    fmt: FloatFormat) -> Tensor:  # fmt: skip
    """``e_out = L e + k u size + tiny`` for an elementwise function ``f`` with ``|f'| <= L`` on the box
    widened by ``e``, whose implementation returns ``f(x)`` within ``k`` units ``u`` of ``size`` (a bound
    on ``|f|`` over that box, or a larger absolute scale): ``|f_impl(x^) - f(x)| <= |f_impl(x^) - f(x^)|
    + |f(x^) - f(x)|`` (the mean value theorem on the second term). An exact input (``e = 0``) propagates
    nothing even where ``L`` is infinite; a NaN (a slope or size taken outside the domain) gives ``inf``."""
    propagated = torch.where(torch.as_tensor(error) > 0, slope * error, 0.0)
    out = propagated + ulps * fmt.unit * size + fmt.tiny
    return torch.where(out.isnan(), torch.inf, out)

"""L2 certificates from Lipschitz bounds.

For a specification row c with ``|<c, f(x') - f(x)>| <= L_c ||x' - x||_2`` (``estimate.py``, one constant
per distinct row), every x' in the ball ``||x' - x||_2 <= eps`` has
``<c, f(x)> - L_c eps <= <c, f(x')> <= <c, f(x)> + L_c eps``: the bounds of method ``"lipschitz"``. The
certified radius of a classification is ``min_{j != y} (f_y(x) - f_j(x)) / L_yj`` with ``L_yj`` the constant
of the margin row ``e_y - e_j`` (at most ``sqrt(2) L``): no x' closer than that changes the top class.
Centre values are computed in float64; results are rounded outwards when cast back to the model's dtype.
Sound on the whole ball: a ``clip`` of the ball only shrinks the set, so the same bounds hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from verifier.errors import InputError
from verifier.graph.graph import Graph
from verifier.lipschitz.estimate import UPPER_METHODS, tightest_bound
from verifier.lipschitz.operator_norm import float64_graph
from verifier.spec.regions import L2Ball, Region

# "lipschitz": f(c) +- L_C r; "crown+lipschitz": per row the tighter of that and CROWN's bound
LIPSCHITZ_METHODS = ("lipschitz", "crown+lipschitz")
ESTIMATORS = ("tightest", *UPPER_METHODS)


def row_constants(graph: Graph, rows: Tensor, estimator: str = "tightest") -> Tensor:
    """``L_r`` for every row of ``rows`` [R, n_out] (float64 [R]); each distinct row is estimated once."""
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown Lipschitz estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    unique, inverse = torch.unique(rows.to(torch.float64), dim=0, return_inverse=True)
    bound = tightest_bound if estimator == "tightest" else UPPER_METHODS[estimator]
    return bound(graph, unique)[inverse]


def lipschitz_bounds(
    graph: Graph, region: Region, spec: Tensor, estimator: str = "tightest"
) -> tuple[Tensor, Tensor]:
    """``<spec_s, f(x)> -+ L_s eps`` over the L2 ball: lower and upper [S, B] in the spec's dtype.
    ``spec`` [S, B, *output_shape]."""
    if not isinstance(region, L2Ball):
        raise InputError(f"Lipschitz bounds need an L2Ball region, not {type(region).__name__}")
    s, b = spec.shape[:2]
    rows = spec.reshape(s * b, -1)
    lip = row_constants(graph, rows, estimator).reshape(s, b)
    with torch.no_grad():
        centre = float64_graph(graph).forward(region.x.to(torch.float64)).reshape(b, -1)
    values = (spec.reshape(s, b, -1).to(torch.float64) * centre).sum(-1)
    eps = region.eps.to(torch.float64).reshape(-1)  # one radius, or one per row of the batch
    if eps.numel() not in (1, b):
        raise InputError("Lipschitz bounds take one L2 radius per batch row")
    return outward(values - lip * eps, spec.dtype, -1), outward(values + lip * eps, spec.dtype, 1)


def outward(t: Tensor, dtype: torch.dtype, direction: int) -> Tensor:
    """``t`` cast to ``dtype``, moved one step down (``direction`` -1) or up where the cast rounded inwards."""
    cast = t.to(dtype)
    inward = cast > t if direction < 0 else cast < t
    toward = torch.full_like(cast, direction * torch.inf)
    return torch.where(inward, torch.nextafter(cast, toward), cast)


def combined_bounds(
    lip: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor | None]
) -> tuple[Tensor, Tensor | None]:
    """Per row the tighter of two sound bounds of the same values (their intersection)."""
    lower = torch.maximum(lip[0], other[0])
    return lower, None if other[1] is None else torch.minimum(lip[1], other[1])


def certified_radius(graph: Graph, x: Tensor, labels: Tensor, estimator: str = "tightest",
                     rows_of: Callable[[Tensor, int, Tensor], Tensor] | None = None) -> Tensor:  # fmt: skip
    """``r [B]``: for every x' with ``||x' - x||_2 < r``, ``f_y(x') > f_j(x')`` for all j != y; 0 where x is
    not classified as y. ``r = min_j max(0, f_y(x) - f_j(x)) / L_yj``. ``rows_of(labels, n, like)`` gives
    the margin rows [B, n - 1, n] (``api.margin_rows``)."""
    n = int(torch.Size(graph.output_shape).numel())
    c = rows_of(labels, n, x.to(torch.float64))  # [B, n - 1, n]
    lip = row_constants(graph, c.reshape(-1, n), estimator).reshape(c.shape[:2])
    with torch.no_grad():
        out = float64_graph(graph).forward(x.to(torch.float64)).reshape(len(x), n)
    margins = (c * out.unsqueeze(1)).sum(-1)
    ratio = torch.where(margins > 0, margins / lip, torch.zeros_like(margins))  # margin > 0, L = 0: inf
    return ratio.min(1).values

"""The accumulated rounding error of the network's own floating-point forward pass.

The bound passes bound the network's function in real arithmetic. A runtime evaluating it in a float
format computes something else: every operation rounds. ``forward_error`` bounds the difference, node by
node, with each operator's ``rounding_error`` rule (``verifier.ops.rounding`` states the arithmetic model):
for every input ``x`` of the box, given as a float of the format (so exactly, ``e_0 = 0``),

    |f_computed(x) - f(x)| <= e_out    elementwise.

The rules need each node's real interval: IBP over the box, intersected with the engine's intermediate
bounds (CROWN by default: IBP's magnitudes grow with depth, and the rounding bound with them), all in
float64. Their own rounding (about 1e-16 relative) only enters through magnitudes multiplied by
``gamma``, far inside the final ``SAFETY`` factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine.bounds import intermediate_bounds
from verifier.engine.state import BoundConfig, BoundState, tighten
from verifier.errors import InputError
from verifier.graph.graph import Graph
from verifier.ops.rounding import FloatFormat, NoRoundingRule, magnitude
from verifier.spec.regions import Box

# covers the float64 arithmetic of this pass itself (relative 1e-13 at the depths we handle)
SAFETY = 1.0 + 1e-6


def forward_error(graph: Graph, lo: Tensor, hi: Tensor, fmt: FloatFormat,
                  method: str | None = "crown") -> tuple[tuple[Tensor, Tensor], Tensor]:  # fmt: skip
    """The output's real interval over the box ``[lo, hi]`` ([B, *input_shape]) and ``e_out`` ([B,
    *output_shape]) with ``|computed - exact| <= e_out``; ``e_out`` is ``inf`` where a computed value may
    leave the format's finite range (overflow: no bound). Node intervals are IBP, intersected with the
    intermediate bounds of the engine's ``method`` (None: IBP only). Raises ``InputError`` naming every
    operator without a rounding rule, with its node."""
    graph = graph.to(dtype=torch.float64)
    lo, hi = lo.double(), hi.double()
    known = _engine_bounds(graph, lo, hi, method) if method else {}
    bounds = {0: (lo, hi)}
    errors = {0: torch.zeros_like(bounds[0][0])}
    missing: list[str] = []
    for k, node in enumerate(graph.nodes[1 : graph.output + 1], start=1):
        ins, errs = [bounds[i] for i in node.inputs], [errors[i] for i in node.inputs]
        bounds[k] = node.op.ibp(*ins)
        if k in known:
            bounds[k] = tighten(bounds[k], known[k])
        try:
            errors[k] = _overflow_checked(bounds[k], node.op.rounding_error(ins, errs, fmt) * SAFETY, fmt)
        except NoRoundingRule:
            missing.append(f"{type(node.op).__name__} (node {node.name})")
            errors[k] = torch.zeros_like(bounds[k][0])
        for i in set(node.inputs):
            if graph.last_use[i] <= k:
                del bounds[i], errors[i]
    if missing:
        raise InputError(f"no floating-point rounding rule ({fmt.name} semantics) for: {', '.join(missing)}")
    return bounds[graph.output], errors[graph.output]


def _engine_bounds(graph: Graph, lo: Tensor, hi: Tensor, method: str) -> dict:
    """Every node's sound real interval over the box from the intermediate-bound walk of ``method``."""
    state = BoundState(graph, Box(lo, hi), BoundConfig(method=method))
    with torch.no_grad():
        intermediate_bounds(state)
    return dict(state.bounds)


def _overflow_checked(bounds: tuple[Tensor, Tensor], error: Tensor, fmt: FloatFormat) -> Tensor:
    """``error``, made ``inf`` where ``|computed|`` may exceed the largest finite number of the format (the
    runtime may then return inf or NaN, which no error bound describes)."""
    return torch.where(magnitude(bounds, error) < fmt.largest, error, torch.inf)

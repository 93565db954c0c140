"""The scheduler: one forward walk over the graph computing the intermediate bounds each method needs,
then the bound of the specification at the output.

| method    | intermediate bounds (inputs of nonlinear nodes)   | output            |
|-----------|----------------------------------------------------|-------------------|
| ibp       | IBP                                                | IBP               |
| crown-ibp | IBP                                                | CROWN backward    |
| lbp       | LBP, intersected with IBP                          | LBP               |
| crown-lbp | LBP, intersected with IBP                          | CROWN backward    |
| crown     | CROWN backward per layer, intersected with IBP     | CROWN backward    |
| alpha-crown | as crown                                         | CROWN backward with optimised ReLU lower slopes |

IBP of every node is always computed from the best bounds of its inputs: it is cheap and it decides which
neurons need a CROWN pass at all."""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine import alpha, crown, lbp
from verifier.engine.state import METHODS, BoundConfig, BoundState, tighten
from verifier.errors import InputError, VerifierError
from verifier.graph.graph import Graph
from verifier.ops.base import Affine, Nonlinear
from verifier.spec.regions import Box, Region


def compute_bounds(graph: Graph, region: Region, cfg: BoundConfig, spec: Tensor, upper: bool = True):
    """Bounds of ``<spec_s, f(x)>`` over the region: lower [S, B] and upper [S, B] (None unless ``upper``).

    ``spec`` has shape [S, B, *output_shape]."""
    if cfg.method not in METHODS:
        raise InputError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    state = BoundState(graph, region, cfg)
    linear = _intermediate_bounds(state)
    if cfg.method == "ibp":
        lower, upper_b = _interval_spec(state.bounds[graph.output], spec)
    elif cfg.method == "lbp":
        lower, upper_b = _linear_spec(state, linear, spec)
    else:
        rows = torch.cat([spec, -spec]) if upper else spec
        if cfg.method == "alpha-crown":
            result = alpha.optimised_lower(state, rows)
        else:
            result = crown.backward(state, graph.output, rows)
        s = spec.shape[0]
        lower, upper_b = result[:s], (-result[s:] if upper else None)
    _check_finite(lower, upper_b)
    return lower, upper_b


def _intermediate_bounds(state: BoundState) -> lbp.LinearBounds | None:
    """Walk the graph once; fill ``state.bounds``; return the output's linear bounds for LBP methods."""
    graph, method = state.graph, state.cfg.method
    state.bounds[0] = state.region.box()
    needed = graph.needs_bounds()
    if isinstance(state.region, Box):  # IBP is already exact there: nothing for CROWN to tighten
        needed_crown = needed - _exact_by_ibp(graph)
    else:
        needed_crown = needed
    use_lbp = method in ("lbp", "crown-lbp")
    linear = {0: lbp.input_bounds(state)} if use_lbp else {}
    for k, node in enumerate(graph.nodes[1:], start=1):
        bounds = node.op.ibp(*[state.bounds[i] for i in node.inputs])
        if use_lbp:
            linear[k] = lbp.step(state, k, [linear[i] for i in node.inputs])
            for i in set(node.inputs):
                if graph.last_use[i] <= k:
                    del linear[i]
            if k in needed:
                bounds = tighten(bounds, lbp.concretize(state, linear[k]))
        state.bounds[k] = bounds
        if method in ("crown", "alpha-crown") and k in needed_crown:
            crown.refine(state, k, _unstable(state, k))
    return linear.get(graph.output)


def _exact_by_ibp(graph: Graph) -> set[int]:
    """Nodes whose IBP bounds over a box are exact: reached from the input through coordinate-wise
    injective maps (a box stays a box) and at most one other affine map (each output coordinate of an
    affine map of a box attains its interval bound)."""
    mixing = {0: 0}
    for k, node in enumerate(graph.nodes[1:], start=1):
        src = node.inputs[0]
        if not isinstance(node.op, Affine) or len(node.inputs) != 1 or src not in mixing:
            continue
        coordinatewise = node.op.maps_boxes_to_boxes(graph.nodes[src].shape, node.shape)
        count = mixing[src] + (0 if coordinatewise else 1)
        if count <= 1:
            mixing[k] = count
    return set(mixing)


def _unstable(state: BoundState, k: int) -> Tensor:
    """Neurons of node k whose bounds matter to some nonlinear consumer."""
    lo, hi = state.bounds[k]
    mask = torch.zeros_like(lo, dtype=torch.bool)
    for node in state.graph.nodes:
        if isinstance(node.op, Nonlinear) and node.inputs[0] == k:
            mask |= node.op.needs_bounds(lo, hi)
    return mask


def _interval_spec(bounds, spec: Tensor) -> tuple[Tensor, Tensor]:
    """``min <c, y>`` over a box: positive coefficients take the lower end."""
    lo, hi = (t.unsqueeze(0).flatten(2) for t in bounds)
    a = spec.flatten(2)
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    return (pos * lo + neg * hi).sum(-1), (pos * hi + neg * lo).sum(-1)


def _linear_spec(state: BoundState, b: lbp.LinearBounds, spec: Tensor) -> tuple[Tensor, Tensor]:
    """Compose the spec with the output's linear bounds, then concretise over the region."""
    a = spec.flatten(2)  # [S, B, m]
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    lo_x, up_x = b.lower.flatten(2), b.upper.flatten(2)  # [n, B, m]
    lo_c, up_c = b.lower_const.flatten(1), b.upper_const.flatten(1)  # [B, m]

    def lower(p, q):  # lower bound of p.y + q.y with p >= 0 >= q
        coeffs = torch.einsum("sbm,nbm->sbn", p, lo_x) + torch.einsum("sbm,nbm->sbn", q, up_x)
        const = (p * lo_c).sum(-1) + (q * up_c).sum(-1)
        return state.region.concretize(coeffs.reshape(*coeffs.shape[:2], *state.graph.input_shape), const)

    return lower(pos, neg), -lower(-neg, -pos)


def _check_finite(lower: Tensor, upper: Tensor | None) -> None:
    for name, t in (("lower", lower), ("upper", upper)):
        if t is not None and torch.isnan(t).any():
            raise VerifierError(
                f"numerical failure: NaN in the {name} bound (overflow in the model's range?)"
            )

"""The scheduler: one forward walk over the graph computing the intermediate bounds a plan needs, then the
bound of the specification at the output (plans: ``state.PLANS``).

| intermediate | how the inputs of nonlinear nodes are bounded                                       |
|--------------|--------------------------------------------------------------------------------------|
| ibp          | IBP                                                                                  |
| lbp          | LBP, intersected with IBP                                                            |
| crown        | a CROWN backward pass per node (its unstable neurons only), intersected with IBP     |
| alpha        | as crown, with optimised slopes (``alpha.py``), jointly with the output              |

| output | how the specification is bounded                                                   |
|--------|-------------------------------------------------------------------------------------|
| ibp    | interval arithmetic on the output's IBP bounds                                      |
| lbp    | the spec composed with the output's LBP linear bounds                               |
| crown  | one CROWN backward pass                                                              |
| alpha  | CROWN with optimised slopes (and split multipliers), best iterate kept; with alpha  |
|        | intermediates too when their gradient fits ``cfg.max_alpha_bytes`` (else CROWN's)  |

IBP of every node is always computed from the best bounds of its inputs: it is cheap and it decides which
neurons need a CROWN pass at all. A wide node reached through affine maps from a much narrower one (the
n (n - 1) differences of a softmax's n scores) takes CROWN's linear bounds of the narrow node instead,
carried through the maps (``_through_chain``): a pass per neuron of the wide node would cost far more."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from verifier.engine import alpha, crown, lbp
from verifier.engine.params import Params
from verifier.engine.state import METHODS, BoundConfig, BoundState, tighten
from verifier.errors import BoundComputationError, InputError, VerifierError
from verifier.graph.graph import Graph
from verifier.ops.base import Affine
from verifier.spec.regions import Region


def compute_bounds(graph: Graph, region: Region, cfg: BoundConfig, spec: Tensor, upper: bool = True,
                   stop: Callable[[], bool] | None = None):  # fmt: skip
    """Bounds of ``<spec_s, f(x)>`` over the region: lower [S, B] and upper [S, B] (None unless ``upper``).

    ``spec`` has shape [S, B, *output_shape]. ``stop()`` True ends an alpha optimisation early."""
    if cfg.method not in METHODS:
        raise InputError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    state = BoundState(graph, region, cfg)
    s = spec.shape[0]
    rows = torch.cat([spec, -spec]) if upper else spec
    if cfg.output == "alpha":
        enough = None if stop is None else lambda best: stop()
        if cfg.intermediate == "alpha" and alpha.full_fits(graph, state.batch, cfg):
            refresh = lambda params: intermediate_bounds(state, params)
            result = alpha.optimise(state, rows, refresh=refresh, enough=enough)
        else:
            intermediate_bounds(state)
            result = alpha.optimise(state, rows, enough=enough)
    else:
        linear = intermediate_bounds(state)
        if cfg.output == "ibp":
            lower, upper_b = interval_spec(state, spec)
            return _checked(state, lower, upper_b if upper else None)
        if cfg.output == "lbp":
            lower, upper_b = _linear_spec(state, linear, spec)
            return _checked(state, lower, upper_b if upper else None)
        result = crown.backward(state, graph.output, rows)
    return _checked(state, result[:s], -result[s:] if upper else None)


def intermediate_bounds(state: BoundState, params: Params | None = None) -> lbp.LinearBounds | None:
    """Walk the graph once; fill ``state.bounds``; return the output's linear bounds for LBP plans.

    With ``params`` (the alpha plan), CROWN passes take their slopes from it; bounds are intersected with
    ``state.best`` (earlier sound iterates) when present."""
    graph, how = state.graph, state.cfg.intermediate
    state.set_bounds(0, state.region.box())
    needed = graph.needs_bounds()
    needed_crown = needed - _exact_by_ibp(graph) if state.region.is_box else needed
    use_lbp = how == "lbp"
    linear = {0: lbp.input_bounds(state)} if use_lbp else {}
    for k, node in enumerate(graph.nodes[1:], start=1):
        try:
            bounds = node.op.ibp(*[state.bounds[i] for i in node.inputs])
            if use_lbp:
                linear[k] = lbp.step(state, k, [linear[i] for i in node.inputs])
                for i in set(node.inputs):
                    if graph.last_use[i] <= k:
                        del linear[i]
                if k in needed:
                    bounds = tighten(bounds, lbp.concretize(state, linear[k]))
        except VerifierError:
            raise
        except Exception as exc:
            raise BoundComputationError(
                f"bound pass failed at node {node.name} ({type(node.op).__name__}): {exc}"
            ) from exc
        if k in state.best:
            bounds = tighten(bounds, state.best[k])
        state.set_bounds(k, bounds)
        if how in ("crown", "alpha") and k in needed_crown:
            chain = _narrow_chain(graph, k) if state.region.is_box else None
            if chain is not None:
                state.set_bounds(k, tighten(state.bounds[k], _through_chain(state, chain, params)))
            else:
                if k not in state.selections:  # fixed once: later iterates keep the same rows (and slopes)
                    state.selections[k] = crown.select_rows(state, k, _unstable(state, k))
                crown.refine(state, k, state.selections[k], params)
        _check_node(state, k)
    return linear.get(graph.output)


def refresh_after(state: BoundState, first: int) -> None:
    """Tighten, by CROWN, the bounds of every node after node ``first`` whose relaxations read them (after a
    split of ``first``: its clamped bounds make later layers' CROWN bounds tighter). Each node's old bounds
    stay a sound reference: the new ones are intersected with them."""
    for k in sorted(state.graph.needs_bounds()):
        if k > first:
            crown.refine(state, k, crown.select_rows(state, k, _unstable(state, k)))
            _check_node(state, k)


# a node of at least WIDE neurons is bounded through the narrowest node of its affine chain when that has
# NARROWING times fewer: a CROWN pass per neuron of the wide node costs more than the tightness it buys
NARROWING, WIDE = 4, 4096


def _narrow_chain(graph: Graph, k: int) -> list[int] | None:
    """``[m, ..., k]``: node k reached from node m through affine operators of one input each, m the one of
    fewest neurons on that path; None unless k is WIDE and m has NARROWING times fewer neurons (the
    differences of a softmax: n (n - 1) values of n scores)."""
    size = lambda j: int(torch.Size(graph.nodes[j].shape).numel())
    path, j = [k], k
    while j != 0 and isinstance(graph.nodes[j].op, Affine) and len(graph.nodes[j].inputs) == 1:
        j = graph.nodes[j].inputs[0]
        path.append(j)
    narrowest = min(range(len(path)), key=lambda i: (size(path[i]), i))
    if size(k) < WIDE or size(path[narrowest]) * NARROWING > size(k):
        return None
    return path[narrowest::-1]


def _through_chain(state: BoundState, chain: list[int], params: Params | None) -> tuple[Tensor, Tensor]:
    """Bounds [B, *shape] of the last node of ``chain`` from CROWN's linear bounds on the first (rows for
    both sides of each of its neurons: far fewer than the last node's), carried through the affine steps
    between by LBP's rule, then minimised over the box. Sound: every step keeps ``L x + l <= z <= U x + u``
    on the box. The box minimum of a linear function is a sum over input coordinates, so the coefficients
    are carried in chunks of coordinates and never laid out in full."""
    graph, first, last = state.graph, chain[0], chain[-1]
    shape, batch = graph.nodes[first].shape, state.batch
    numel = int(torch.Size(shape).numel())
    a, c = _linear_forms(state, first, params, ("chain", last))
    lay = lambda t: t.reshape(numel, batch, -1).permute(2, 1, 0).reshape(-1, batch, *shape)  # rows per x_r
    lower, upper = lay(a[:numel]), lay(-a[numel:])  # [n_in, B, *shape]
    consts = (c[:numel].T.reshape(batch, *shape), -c[numel:].T.reshape(batch, *shape))
    lo_x, hi_x = state.region.box()
    centre, radius = ((hi_x + lo_x) / 2).flatten(1).T, ((hi_x - lo_x) / 2).flatten(1).T  # [n_in, B]
    out_numel = int(torch.Size(graph.nodes[last].shape).numel())
    step = max(1, state.cfg.max_elements // (batch * out_numel))
    for begin in range(0, lower.shape[0], step):
        part = slice(begin, begin + step)
        b = _carry(graph, chain, lbp.LinearBounds(lower[part], consts[0], upper[part], consts[1]))
        view = (-1, batch) + (1,) * len(graph.nodes[last].shape)
        c_r, r_r = centre[part].reshape(view), radius[part].reshape(view)
        low, high = (b.lower * c_r - b.lower.abs() * r_r).sum(0), (b.upper * c_r + b.upper.abs() * r_r).sum(0)
        if begin == 0:  # the constants are carried once, with the first chunk
            lo, hi = b.lower_const + low, b.upper_const + high
            consts = (torch.zeros_like(consts[0]), torch.zeros_like(consts[1]))
        else:
            lo, hi = lo + low, hi + high
    return lo, hi


def _linear_forms(state: BoundState, k: int, params: Params | None, tag) -> tuple[Tensor, Tensor]:
    """CROWN's linear lower bounds ``(A, c)`` of ``z_k`` (rows 0..n-1) and of ``-z_k`` (rows n..2n-1) for every
    neuron of node k: A [2n, B, *input_shape], c [2n, B]; in chunks of rows as ``crown.refine``."""
    shape, batch = state.graph.nodes[k].shape, state.batch
    numel = int(torch.Size(shape).numel())
    like = state.bounds[k][0]
    eye = torch.eye(numel, dtype=like.dtype, device=like.device).reshape(numel, 1, *shape)
    rows = torch.cat([eye, -eye]).expand(2 * numel, batch, *shape)
    widest = max(int(torch.Size(n.shape).numel()) for n in state.graph.nodes[: k + 1])
    chunk = max(crown.MIN_ROWS // batch, state.cfg.max_elements // (batch * widest), 1)
    forms = [
        crown.linear_form(state, k, rows[i : i + chunk], params, (*tag, i))
        for i in range(0, 2 * numel, chunk)
    ]
    return torch.cat([f[0] for f in forms]), torch.cat([f[1] for f in forms])


def _carry(graph: Graph, chain: list[int], b: lbp.LinearBounds) -> lbp.LinearBounds:
    """Linear bounds of ``chain[0]`` carried to ``chain[-1]`` through the affine steps between."""
    for j in chain[1:]:
        node = graph.nodes[j]
        b = lbp.affine(node.op, node.shape, [b])
    return b


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
    for j in state.graph.nonlinear_consumers(k):
        mask |= state.graph.nodes[j].op.needs_bounds(lo, hi)
    return mask


def interval_spec(state: BoundState, spec: Tensor) -> tuple[Tensor, Tensor]:
    """IBP bounds [S, B] of ``<spec_s, f(x)>`` from the intervals in ``state``. When the output is an affine
    operator of one input, the spec goes through it exactly first (``C W`` bounded as one map over W's
    input interval: never looser than bounding W's outputs and then C, and much tighter for margins)."""
    graph = state.graph
    node = graph.nodes[graph.output]
    if not (isinstance(node.op, Affine) and len(node.inputs) == 1):
        return _interval_spec(state.bounds[graph.output], spec)
    src = graph.nodes[node.inputs[0]]
    s, b = spec.shape[:2]
    a = node.op.transpose(0, spec.flatten(0, 1), src.shape).reshape(s, b, *src.shape)
    lower, upper = _interval_spec(state.bounds[node.inputs[0]], a)
    offset = node.op.offset()
    if offset is None:
        return lower, upper
    const = (spec * offset).flatten(2).sum(-1)
    return lower + const, upper + const


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


def _check_node(state: BoundState, k: int) -> None:
    lo, hi = state.bounds[k]
    # a sum is NaN when some entry is (or when infinities of both signs meet): a cheap test first
    suspect = torch.isnan(lo.sum() + hi.sum())
    if suspect and (torch.isnan(lo).any() or torch.isnan(hi).any()):
        node = state.graph.nodes[k]
        raise BoundComputationError(
            f"numerical failure: NaN in the bounds of node {node.name} ({type(node.op).__name__}); "
            "overflow in the model's range?"
        )


def _checked(state: BoundState, lower: Tensor, upper: Tensor | None):
    for name, t in (("lower", lower), ("upper", upper)):
        if t is not None and torch.isnan(t).any():
            raise BoundComputationError(
                f"numerical failure: NaN in the {name} bound of the output "
                f"(node {state.graph.nodes[state.graph.output].name}); overflow in the model's range?"
            )
    return lower, upper

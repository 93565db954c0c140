"""ReLU splitting for branch and bound: which neuron to split, and the two children of each domain.

A domain is one batch entry of a ``BoundState`` (its region, intermediate bounds and split constraints)
with its ``Params`` (output slopes and split multipliers). Splitting neuron i of node k gives an inactive
child (``z_k,i <= 0``) and an active one (``z_k,i >= 0``); together they cover the parent, and each child's
bounds are the parent's intersected with its constraint, so a child is never looser than its parent and
its relaxation of that neuron is exact.

Choice (BaBSR-style intercept score): in the output's backward pass a neuron whose coefficient ``a`` on the
ReLU output is negative uses the upper line, which costs ``-a * b_up`` of the lower bound (``b_up`` its
intercept, ``-l u / (u - l)`` for ReLU; likewise ``a * b_lo`` for a positive one); splitting removes that
cost, so the neuron with the largest cost (summed over the rows that still matter) is split first. Neurons
whose lines cost nothing are ranked below every costly one by their width, so every unstable neuron is
eventually split: branch and bound on ReLU networks is complete.

Filtered smart branching (De Palma et al. 2021) refines that choice: the few best-scored neurons are
candidates, ``children_lower`` bounds both children of each candidate cheaply, and the caller keeps the
candidate whose two children gain most together. The rule only picks which neuron to split; any choice gives
children that cover the parent."""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine import crown
from verifier.engine.params import Params, of_output
from verifier.engine.state import BoundState


def split_scores(state: BoundState, coeffs: dict[int, Tensor], weights: Tensor) -> dict[int, Tensor]:
    """Score [B, *shape_k] of every splittable neuron of every node k feeding a recorded nonlinear node
    (-inf where not splittable: stable, already split, or not the input of a ReLU-like or S-shaped node).

    ``coeffs[j]``: [S, B, *shape_j] coefficients on the output of nonlinear node j (``crown.backward``'s
    ``record``); ``weights`` [S, B] >= 0 selects the rows that still matter."""
    scores = {}
    for j, a in coeffs.items():
        node = state.graph.nodes[j]
        if not splittable(node.op):
            continue
        k = node.inputs[0]
        lo, hi = state.bounds[k]
        free = node.op.needs_bounds(lo, hi) & (lo < 0) & (hi > 0)
        if k in state.splits:
            free &= state.splits[k] == 0
        rel = state.relaxation(j)
        w = weights.reshape(*weights.shape, *([1] * (a.dim() - 2)))
        if node.op.linear_on_each_side_of_zero:
            # what the lines' intercepts take off the lower bound; both children's lines pass through 0
            cost = -((a.clamp(min=0) * rel.b_lo + a.clamp(max=0) * rel.b_up) * w).sum(0)
            width = torch.minimum(-lo, hi).clamp(min=0)
            score = torch.where(cost > 0, 2 + cost / (1 + cost), width / (1 + width))  # costly ones first
        else:
            # curved on each side: the split does not remove the gap between the lines, it narrows it;
            # rank by the weighted gap at the box's ends (where the lines are furthest from each other)
            gap = torch.maximum((rel.a_up - rel.a_lo) * lo + rel.b_up - rel.b_lo,
                                (rel.a_up - rel.a_lo) * hi + rel.b_up - rel.b_lo)  # fmt: skip
            score = (a.abs() * w).sum(0) * gap.clamp(min=0)
        scores[k] = torch.where(free, score, torch.full_like(score, -torch.inf))
    return scores


def splittable(op) -> bool:
    """Whether a split of the operator's input at zero helps its relaxation (ReLU-like or S-shaped)."""
    return op.linear_on_each_side_of_zero or op.curved_on_each_side_of_zero


def choose(scores: dict[int, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per domain the best neuron: node index [B] (long), flat position [B], and whether any neuron was
    splittable [B] bool."""
    nodes, pos, ok = top_candidates(scores, 1)
    return nodes[:, 0], pos[:, 0], ok[:, 0]


def first_node_first(scores: dict[int, Tensor]) -> dict[int, Tensor]:
    """The scores with every splittable neuron of the first scored node (the one nearest the input) ranked
    above every neuron of later nodes, each node's order kept. Split first, those neurons tighten every
    later node's bounds once the children's bounds are refreshed (``bounds.refresh_after``): where a deep
    network's last layers are loose only because its first ones are, that gain dwarfs what a split of a
    late neuron buys (the output-side scores cannot see it)."""
    finite = torch.cat([s[torch.isfinite(s)] for s in scores.values()])
    if not finite.numel():
        return scores
    first = min(scores)
    return {**scores, first: scores[first] + (float(finite.max() - finite.min()) + 1.0)}


def top_candidates(scores: dict[int, Tensor], count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per domain the ``count`` neurons of highest score, best first: node index [B, K] (long), flat
    position [B, K], and whether the candidate is splittable [B, K] bool (False past a domain's number of
    splittable neurons; K = min(count, neurons))."""
    keys = sorted(scores)
    flat = torch.cat([scores[k].flatten(1) for k in keys], 1)  # [B, total]
    best, where = flat.topk(min(count, flat.shape[1]), dim=1)
    sizes = torch.tensor([scores[k][0].numel() for k in keys], device=flat.device)
    ends = sizes.cumsum(0)
    which = torch.searchsorted(ends, where, right=True)
    pos = where - (ends - sizes)[which]
    nodes = torch.tensor(keys, device=flat.device)[which]
    return nodes, pos, torch.isfinite(best)


def children_lower(state: BoundState, params: Params, rows: Tensor, nodes: Tensor, pos: Tensor) -> Tensor:
    """Lower bounds [S, 2B] of ``<rows_s, f(x)>`` on the two children of every domain that ``split`` would
    make for neuron ``pos[b]`` of node ``nodes[b]`` (columns 2b inactive, 2b+1 active), by one CROWN pass
    with the parent's slopes and multipliers held fixed and its intermediate bounds reused (only the split
    neuron's bounds change, to its side). ``rows``: [S, B, *out].

    Sound on each child (fixed parameters within their projections and bounds clamped to the child's side
    are a valid beta-CROWN bound there), though looser than optimising them: a cheap estimate of what the
    split gains, for choosing among candidates."""
    child, child_params = split(state, params, nodes, pos)
    child_params.freeze()
    return crown.backward(
        child, state.graph.output, rows.repeat_interleave(2, 1), child_params, ("out",), True
    )


def split(state: BoundState, params: Params, nodes: Tensor, pos: Tensor) -> tuple[BoundState, Params]:
    """Children of every domain: rows 2b (inactive side) and 2b+1 (active side) of the result split
    neuron ``pos[b]`` of node ``nodes[b]``; parameters are the parent's (warm start)."""
    batch = nodes.shape[0]
    index = torch.arange(batch, device=nodes.device).repeat_interleave(2)
    child = state.select(index)
    sign = torch.tensor([-1, 1], dtype=torch.int8, device=nodes.device).repeat(batch)
    for k in nodes.unique().tolist():
        rows = (nodes[index] == k).nonzero().flatten()
        lo = child.bounds[k][0]
        s = child.splits.get(k)
        s = torch.zeros(lo.shape, dtype=torch.int8, device=lo.device) if s is None else s.clone()
        flat = s.reshape(s.shape[0], -1)
        flat[rows, pos[index][rows]] = sign[rows]
        child.splits[k] = s
        child.set_bounds(k, child.bounds[k])
    return child, params.select(index, keep=of_output)

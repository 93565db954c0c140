"""Tighter intermediate bounds at the root, by branch and bound over the neurons before them.

On deep ReLU networks the output bound of the root is loose mostly because the bounds of the middle
layers are: each is the best linear relaxation can do over every unstable neuron before it. Every domain of
the search inherits those bounds, so a search on the output alone has to split its way through all of them.
abcrown refines them at the root with a MILP solver; here the engine's own beta-CROWN branch and bound
does it. Bounding node k, each unstable neuron i gives two objectives, ``z_k,i`` (its lower bound) and
``-z_k,i`` (its upper), and each objective gets its own search over splits of the neurons of the nodes
before k, all in one batch of domains (``_Leaves``), each objective's lowest leaves split first.

A leaf's bound is sound on its domain, and the leaves of an objective cover the region (the children of a
split cover their parent), so the smallest bound over an objective's leaves is a sound bound of it. A ReLU
relaxation only needs a bound up to zero: a leaf whose bound reaches 0 is closed, and an objective with no
open leaf proves its neuron stable (bound 0). An objective's search also stops once its bound comes within
``GAP`` of the value reached at points of the region (no bound can pass that). The bounds are intersected
with the ones the node had.

Measured on mnist_fc 256x4 prop_0_0.05: alpha-CROWN's root bound is -2.21; after 10 s of refining, the
second layer's unstable neurons went from 86 to 53, the third's from 6 to 0, the fourth's from 67 to 4, and
alpha-CROWN from those bounds gave +0.89 (+0.95 after 25 s): verified at the root. Bounds attained by
gradient descent inside the box had put the headroom at +0.95."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier.engine import alpha, branching
from verifier.engine.bounds import refresh_after
from verifier.engine.params import Params, nonnegative
from verifier.engine.state import BoundConfig, BoundState, tighten
from verifier.graph.graph import Graph

# passes over the nodes, each with twice the time of the one before (``refine``)
ROUNDS = 3
# share of the gap between an objective's first bound and the value found at points that its search may
# leave: on mnist_fc 256x4 prop_0_0.05, closing it all took the root bound to 0.95, 90% of it to 0.89
GAP = 0.05
# what a refined bound gives away against float32 rounding, relative to the node's largest bound (1 +
# max |bound|): on mnist_fc 256x4 the bounds of leaves with every neuron fixed came within 3e-6 of values
# reached at points (size 20), 1e-7 relative, as rounding does; the slack leaves 100x that
ROUNDING = 1e-5


@dataclass(frozen=True)
class RefineConfig:
    """``max_objectives``: a node with more unstable neurons than half this is not refined (its searches
    would each get too little time); ``max_batch``: parents split per iteration; ``steps`` / ``lr``: the
    leaves' optimisation of slopes and split multipliers (warm-started from the parent's);
    ``max_bytes``: memory the open leaves may hold (beyond it a node's search ends); ``reach_steps`` /
    ``reach_starts``: the descent that finds the values each objective reaches at points (``_reached``);
    ``check_seconds``: how often a node's search writes its bounds back and asks whether they are enough;
    ``stall``: the least share of the distance to verified that a round must gain for the next to run
    (``refine``). On oval21 cifar_deep img1052 (720 s) the second round raised the root from -0.0828 to
    -0.0792 in 163 s and the third to -0.0785 in 327 s, which the search after it then lacked; on mnist_fc
    256x6 prop_12_0.05 and prop_13_0.05 (300 s) the second round gained 91% and 99.5% of the gap. The
    descent's values are found once per neuron and kept for the later rounds: on cifar_deep img9931,
    100 steps from 4 starts took 54 s for the 4 nodes (one thread), most of the first round's time, and 30
    steps from 4 starts 15 s, reaching within 0.5% of the same gap per node."""

    max_objectives: int = 1024
    max_batch: int = 512
    steps: int = 6
    lr: float = 0.05
    max_bytes: int = 2**30
    check_seconds: float = 5.0
    stall: float = 0.1
    reach_steps: int = 30
    reach_starts: int = 4


@dataclass
class _Leaves:
    """Open domains of the objectives' searches, N of them: ``obj`` [N] (which objective), ``lower`` [N]
    (its bound on the domain), ``splits`` per node [N, *shape], ``params`` (batch dimension N) and the
    neuron each would split next, ``node`` / ``pos`` [N] (``node`` -1: nothing left to split)."""

    obj: Tensor
    lower: Tensor
    splits: dict[int, Tensor]
    params: Params
    node: Tensor
    pos: Tensor

    def nbytes(self) -> int:
        tensors = [self.obj, self.lower, *self.splits.values(), *self.params.tensors.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def take(self, index: Tensor) -> _Leaves:
        return _Leaves(self.obj[index], self.lower[index], {j: s[index] for j, s in self.splits.items()},
                       self.params.select(index), self.node[index], self.pos[index])  # fmt: skip

    @staticmethod
    def cat(a: _Leaves, b: _Leaves) -> _Leaves:
        return _Leaves(torch.cat([a.obj, b.obj]), torch.cat([a.lower, b.lower]),
                       {j: torch.cat([s, b.splits[j]]) for j, s in a.splits.items()},
                       Params.concat([a.params, b.params]), torch.cat([a.node, b.node]),
                       torch.cat([a.pos, b.pos]))  # fmt: skip


def refine(state: BoundState, until: float, config: RefineConfig = RefineConfig(),
           margin: Callable[[], float] | None = None) -> int:  # fmt: skip
    """Tighten, in place, the bounds of the ``targets`` of ``state`` (one domain, every node bounded), first
    to last, until ``time.monotonic()`` reaches ``until``; the nodes after a refined one are then refreshed
    by CROWN. The nodes are refined in ``ROUNDS`` passes, each with twice the time of the one before, each
    from the bounds the last one left. ``margin()``, if given, is the root's worst margin from the bounds so
    far (asked after each node, and every ``check_seconds`` within one): refining stops once it is positive
    (verified), or after a round from the second on that raised its best value by less than ``stall`` of
    its distance to 0 (stalled). (The first round is not judged: a node's refined bounds often reach the
    output only once the nodes after it are refined too.) Returns the leaves bounded."""
    if state.batch != 1:
        raise ValueError("refine takes the state of one domain")
    nodes = targets(state.graph)
    visited, begin = 0, time.monotonic()
    best, ends = -torch.inf, []  # the best margin so far; its value at the end of each round
    reached: dict[int, Tensor] = {}  # per node, what each objective reaches at points (``_reach``)

    def enough() -> bool:
        nonlocal best
        if margin is None:
            return False
        best = max(best, margin())
        return best > 0

    for r in range(ROUNDS):  # doubling budgets: an easy root stops after a short first round
        end = begin + (until - begin) * (2 ** (r + 1) - 1) / (2**ROUNDS - 1)
        for i, (k, before) in enumerate(nodes):
            now = time.monotonic()
            if now >= end:
                break
            share = now + (end - now) / (len(nodes) - i)  # what is left, shared among the nodes left
            bounded, done = _refine_node(state, k, before, share, config, enough, reached)
            visited += bounded
            if done:
                return visited
            with torch.no_grad():
                refresh_after(state, k)
            if enough():
                return visited
        ends.append(best)
        if margin is not None and len(ends) > 1 and ends[-1] - ends[-2] < config.stall * -ends[-2]:
            break
    return visited


def targets(graph: Graph) -> list[tuple[int, list[int]]]:
    """The nodes ``refine`` tightens, first to last, each with the nodes whose neurons its searches split:
    bounded nodes read only by ReLU-like neurons (linear on each side of zero: a bound past 0 buys them
    nothing, so an objective is closed there; an S-shaped node's relaxation tightens with every bound,
    which these searches do not chase), after at least one node read by splittable neurons (ReLU-like or
    S-shaped)."""
    consumers = lambda k: [graph.nodes[j].op for j in graph.nonlinear_consumers(k)]
    split = [k for k in sorted(graph.needs_bounds()) if any(branching.splittable(op) for op in consumers(k))]
    return [
        (k, split[:n]) for n, k in enumerate(split)
        if n > 0 and all(op.linear_on_each_side_of_zero for op in consumers(k))
    ]  # fmt: skip


def _refine_node(root: BoundState, k: int, before: list[int], until: float, config: RefineConfig,
                 enough: Callable[[], bool], reached: dict[int, Tensor]) -> tuple[int, bool]:  # fmt: skip
    """Refine node k's bounds in ``root`` until ``until``; returns the leaves bounded and whether
    ``enough()`` (asked every ``config.check_seconds``, the bounds so far written back) said so.
    ``reached``: the values objectives reached at points (``_reach``), kept between calls."""
    lo, hi = (t.flatten() for t in root.bounds[k])
    unstable = ((lo < 0) & (hi > 0)).nonzero().flatten()
    count = 2 * len(unstable)
    if count == 0 or count > config.max_objectives:
        return 0, False
    pos = unstable.repeat(2)
    sign = torch.cat([torch.ones(len(unstable)), -torch.ones(len(unstable))]).to(lo)
    rows = lo.new_zeros(count, lo.numel())
    rows[torch.arange(count), pos] = sign
    rows = rows.reshape(1, count, *root.graph.nodes[k].shape)
    cfg = BoundConfig(method="alpha-crown", alpha_steps=config.steps, alpha_lr=config.lr)

    def bound(leaves: _Leaves) -> None:
        """Bound ``leaves`` (their ``lower`` only rises) and choose their next splits."""
        n = len(leaves.obj)
        state = BoundState(root.graph, root.region.select(torch.zeros(n, dtype=torch.long)), cfg)
        for j in (j for j in root.bounds if j < k):  # the root's, clamped to the leaf's splits
            if j in leaves.splits and leaves.splits[j].any():
                state.splits[j] = leaves.splits[j]
            state.set_bounds(j, tuple(t.expand(n, *t.shape[1:]) for t in root.bounds[j]))
        record: dict[int, Tensor] = {}
        with torch.no_grad():
            lower = alpha.optimise(state, rows[:, leaves.obj], params=leaves.params, record=record, start=k,
                                   enough=lambda best: bool((best >= 0).all()))  # fmt: skip
        lower = lower[0].masked_fill(state.infeasible(), torch.inf)
        leaves.lower = torch.maximum(leaves.lower, lower)
        scores = branching.split_scores(state, record, torch.ones(1, n))
        node, pos_, ok = branching.choose(scores)
        leaves.node, leaves.pos = node.masked_fill(~ok, -1), pos_

    start = torch.where(sign > 0, lo[pos], -hi[pos])
    # float32 rounding of a bound of values of size ``scale`` (a few ulps a layer) is far below this
    slack = ROUNDING * (1 + float(torch.maximum(lo.abs(), hi.abs()).max()))
    # a search ends once its bound is within GAP of what no bound can beat: the least value found at
    # points of the region (or 0, past which nothing is gained)
    least = _reach(reached, root, k, pos, sign, config).clamp(max=0)
    goal = least - GAP * (least - start)
    empty = lambda j: torch.zeros(count, *root.bounds[j][0].shape[1:], dtype=torch.int8)
    leaves = _Leaves(torch.arange(count), start, {j: empty(j) for j in before}, _fresh(before, count, root),
                     torch.zeros(count, dtype=torch.long), torch.zeros(count, dtype=torch.long))  # fmt: skip
    bound(leaves)

    def write_back() -> None:
        """Node k's bounds from every objective's lowest open leaf less the slack (0 once none is open)."""
        best = torch.zeros(count).scatter_reduce(0, leaves.obj, (leaves.lower - slack).clamp(max=0), "amin")
        new_lo, new_hi = lo.clone(), hi.clone()
        half = len(unstable)
        new_lo[unstable] = torch.maximum(lo[unstable], best[:half])
        new_hi[unstable] = torch.minimum(hi[unstable], -best[half:])
        shape = root.bounds[k][0].shape
        tightened = tighten(root.bounds[k], (new_lo.reshape(shape), new_hi.reshape(shape)))
        root.best[k] = tightened if k not in root.best else tighten(root.best[k], tightened)
        root.set_bounds(k, root.best[k])

    visited, checked = count, time.monotonic()
    while True:
        leaves = leaves.take(leaves.lower <= slack)  # a leaf above 0 no longer bounds the relaxation
        splittable = leaves.node >= 0
        if not splittable.any() or time.monotonic() >= until or leaves.nbytes() > config.max_bytes:
            break
        if time.monotonic() - checked > config.check_seconds:  # the bounds so far may be enough already
            write_back()
            with torch.no_grad():
                refresh_after(root, k)
            if enough():
                return visited, True
            checked = time.monotonic()
        bound_now = torch.full((count,), torch.inf).scatter_reduce(0, leaves.obj, leaves.lower, "amin")
        open_ = bound_now < goal  # objectives whose search can still gain something worth having
        parents = _worst(leaves, splittable & open_[leaves.obj], config.max_batch)
        if not len(parents):
            break
        keep = torch.ones(len(leaves.obj), dtype=torch.bool)
        keep[parents] = False
        children = _split(leaves.take(parents), root, before)
        bound(children)
        visited += len(children.obj)
        leaves = _Leaves.cat(leaves.take(keep), children)
    write_back()
    return visited, False


def _fresh(before: list[int], count: int, root: BoundState) -> Params:
    """Zero split multipliers for every node a leaf may split (each leaf carries the same keys)."""
    params = Params()
    for j in before:
        params.tensors[("beta", j)] = torch.zeros(1, count, *root.bounds[j][0].shape[1:]).requires_grad_(True)
        params.projections[("beta", j)] = nonnegative
    return params


def _worst(leaves: _Leaves, splittable: Tensor, limit: int) -> Tensor:
    """Indices of up to ``limit`` splittable leaves: each objective's lowest first, then its next ones."""
    index = splittable.nonzero().flatten()
    order = index[torch.argsort(leaves.lower[index])]
    obj = leaves.obj[order]
    # rank of each leaf within its objective (by bound): stable sort by objective keeps bound order
    by_obj = torch.argsort(obj, stable=True)
    sorted_obj = obj[by_obj]
    first = torch.ones_like(sorted_obj, dtype=torch.bool)
    first[1:] = sorted_obj[1:] != sorted_obj[:-1]
    starts = torch.cummax(torch.where(first, torch.arange(len(obj)), 0), 0).values
    rank = torch.empty_like(by_obj)
    rank[by_obj] = torch.arange(len(obj)) - starts
    chosen = order[torch.argsort(rank, stable=True)][:limit]
    return chosen


def _split(parents: _Leaves, root: BoundState, before: list[int]) -> _Leaves:
    """Two children per parent (its chosen neuron inactive, then active), warm-started from it."""
    n = len(parents.obj)
    index = torch.arange(n).repeat_interleave(2)
    sign = torch.tensor([-1, 1], dtype=torch.int8).repeat(n)
    children = parents.take(index)
    for j in before:
        rows = (children.node == j).nonzero().flatten()
        if len(rows):
            flat = children.splits[j].reshape(2 * n, -1).clone()
            flat[rows, children.pos[rows]] = sign[rows]
            children.splits[j] = flat.reshape(children.splits[j].shape)
    return children


def _reach(reached: dict[int, Tensor], root: BoundState, k: int, pos: Tensor, sign: Tensor,
           config: RefineConfig) -> Tensor:  # fmt: skip
    """``_reached`` for the objectives ``sign * z_k[pos]``, computed only for those that ``reached[k]`` ([2,
    n_k]: the lower side's values, then the upper's; NaN where not yet found) lacks, and stored there:
    values at points do not depend on the bounds that refining changes."""
    known = reached.setdefault(k, root.bounds[k][0].new_full((2, root.bounds[k][0][0].numel()), torch.nan))
    side = (sign < 0).long()
    missing = known[side, pos].isnan()
    if missing.any():
        known[side[missing], pos[missing]] = _reached(root, k, pos[missing], sign[missing],
                                                      config.reach_steps, config.reach_starts)  # fmt: skip
    return known[side, pos]


def _reached(root: BoundState, k: int, pos: Tensor, sign: Tensor, steps: int, starts: int) -> Tensor:
    """Per objective, the least value of ``sign * z_k[pos]`` found at points of the region (projected
    signed-gradient descent from the box's centre and from ``starts - 1`` random points, seeded): no sound
    bound can be above it."""
    prefix = dataclasses.replace(root.graph, output=k)
    lo, hi = (t.repeat(starts * len(pos), *([1] * (t.dim() - 1))) for t in root.region.box())
    pos, sign = pos.repeat(starts), sign.repeat(starts)
    generator = torch.Generator(device=lo.device).manual_seed(0)
    x = lo + (hi - lo) * torch.rand(lo.shape, generator=generator, device=lo.device)
    x[: len(pos) // starts] = (lo + hi)[: len(pos) // starts] / 2
    best = torch.full((len(pos),), torch.inf)
    for step in range(steps + 1):
        x.requires_grad_(True)
        with torch.enable_grad():
            value = sign * prefix.forward(x).flatten(1).gather(1, pos[:, None])[:, 0]
            grad = torch.autograd.grad(value.sum(), x)[0] if step < steps else None
        best = torch.minimum(best, value.detach())
        if grad is None:
            break
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - (hi - lo) * (0.1 * (1 - step / steps)) * grad.sign(), lo), hi)
    return best.reshape(starts, -1).amin(0)

"""ReLU splitting with beta-CROWN: a domain is the case's input box with some neurons fixed to one side.

Domain keys (``N`` domains): ``case`` and ``lower`` (as for every brancher), per bounded node k
``split:k`` (int8: +1 ``z_k >= 0``, -1 ``z_k <= 0``, 0 free), per free parameter ``param:...`` (output
slopes and split multipliers, domain dimension first; both stored as ``stored`` says), and the neuron
chosen for the next split, ``branch_node`` / ``branch_pos``. A domain's bounds of node k are its case's
root bounds clamped by its split constraints, rebuilt when it is bounded (the brancher keeps the roots');
with ``refresh``, whose CROWN passes tighten them per domain, they are carried as ``lo:k`` / ``hi:k``.
(Carried always, they were about 40% of the queue's memory: 55 of 130 KB per domain on oval21
cifar_deep, 8 of 18 on mnist_fc 256x4.)

Soundness: the two children of a domain fix one neuron to each side, so they cover it; a child's bounds
are its parent's intersected with its constraint (plus CROWN refreshes of later nodes intersected with
the parent's), and any parameter value within its projection gives a sound bound (``engine.alpha``), so
every child bound is sound on the child. A domain whose constraints contradict each other is empty and
gets an infinite bound. Neurons are chosen by ``engine.branching``.

Order of splits: by the output-side score of ``engine.branching``, except on a cascade (``cascades``: deep
ReLU networks whose last layer's bounds are loose because the first layers' are), where the first layer's
neurons go first and each child's later bounds are refreshed, so that a split near the input tightens
every layer after it.

A domain is the part of the case's box where its split constraints hold, so a point of the box need not
be a point of the domain: ``points`` offers none (the driver checks no bounds at points), and
counterexamples come from its attack on the case's box (``boxes``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

import verifier
from verifier.engine import alpha, branching, crown, lp
from verifier.engine.bounds import intermediate_bounds, refresh_after
from verifier.engine.cuts import Cuts
from verifier.engine.params import Params, multiplier, nonnegative, of_output
from verifier.engine.state import BoundConfig, BoundState
from verifier.ops.base import Nonlinear
from verifier.verify.bab import disjuncts, mip_cuts, refine
from verifier.verify.bab.queue import Domains, concat, take
from verifier.verify.bab.stored import Stored
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline

BRANCHING = ("fsb", "babsr")
# the share of unstable neurons in the deepest ReLU layer from which the search splits shallow-first
# (``cascades``). mnist_fc roots after alpha-CROWN: the 256x6 net's last layer 256/256 unstable at eps 0.05
# (prop_3: bound -18.6, unsat in 53 s shallow-first, nowhere near by output scores), 256x4 prop_0_0.05
# 67/256 (output scores do better there)
CASCADE = 0.9
# the share of the time left that refined roots wait for a cut job still running: on oval21 cifar_deep
# img1052 (720 s, two threads) HiGHS had not answered when refining ended, and waiting for the job's own
# limit left the search 175 s where it needs about 180 without cuts
CUT_WAIT = 0.1


@dataclass(frozen=True)
class ReluSplitConfig:
    """``steps``: optimisation steps of slopes and multipliers per child, at rate ``lr`` (from the parent's
    values, which the default rate of a cold start, 0.25, knocks away: on mnist_fc 256x4 prop_0_0.05 the
    global bound after 60 s was -0.76 at 0.25, -0.49 at 0.1, -0.37 at 0.05, -0.83 at 0.02, from -1.59 at
    the roots); ``root_steps``: of the full
    alpha-CROWN at the root; ``max_batch``: parents per iteration; ``refresh``: recompute the CROWN bounds
    of the nodes after a split one (tighter children, each several backward passes dearer);
    ``branching``: ``"fsb"`` (filtered smart branching: the ``candidates`` best neurons by the BaBSR-style
    score, of which the one whose worse child bounds best in a cheap CROWN pass) or ``"babsr"`` (the best
    by that score alone); ``shallow``: split the neurons of the first layer before any other (ranked among
    themselves by that score), with ``refresh`` on; None decides at the roots (``cascades``);
    ``refine_share``: of the time left, what a single root still open after alpha-CROWN may spend
    tightening its intermediate bounds by ``refine`` (with ``refine``'s settings) before a second search,
    when a first one has not ended within ``probe_share`` of the time (``instance``; most searches that
    end at all end soon: refining first made the easy ones 10-90x slower). Refining stops early once the
    root is verified, so a large share costs little where it succeeds: on mnist_fc 256x6 prop_1_0.03,
    11_0.05, 13_0.05 and 14_0.05 (300 s) a quarter of the time left the roots open (-0.84 on prop_1
    after it) and the searches timed out; 0.85 verified them in 113-237 s. Where refining does not close
    the root, it gives the search back what is left once a round stalls (``refine.RefineConfig.stall``):
    on oval21 cifar_deep img1052 (720 s) it had run until about 620 s, leaving the root at -0.0785 against
    -0.0792 at 292 s, and the search after it ended at -0.0033; stopped at 292 s, the search reached
    -0.0006 with the open domains falling (both time out). ``cuts`` (off: no instance has yet been
    decided by them that was not lost to the core their job takes): from the first search on a single
    root left open by alpha-CROWN, HiGHS looks for cutting planes at the root of its MILP (``mip_cuts``,
    in a child process that takes one of the search's torch threads while it runs, for at most
    ``cut_share`` of the time left), of which those ``cut_proofs`` proves join every domain's bound
    (``engine.cuts``) once the refining root takes them (HiGHS's pool holds invalid cuts; once refining
    ends, the root waits ``CUT_WAIT`` of the time left at most for them). On oval21 cifar_deep img9931
    (720 s, one thread) 752 proven of HiGHS's 924 cuts took the search after refining to -0.0016, against
    -0.0161 without cuts (``stats.bab_bound``); as the competition runs it (one process, two threads, one
    of them the job's while it runs), img9931 was unsat in 661 s once and ended at -0.0007 once, while
    img1052, unsat without cuts, timed out (at -0.0012 and -0.0020; waiting for a job that never
    answered, before ``CUT_WAIT``: with it, unsat in 677 s, against 474 s without cuts). HiGHS's root on oval21 cifar_wide
    img3458 took 418 s of a free core (its analytic centre 134 s of it), more than 0.6 of the 680 s left
    after the first search: the job starts with that search, and gets 0.75."""

    steps: int = 8
    lr: float = 0.05  # Adam's rate for the children's slopes and multipliers (warm-started: small steps)
    root_steps: int = 20
    max_batch: int = 256
    refresh: bool = False
    shallow: bool | None = None
    branching: str = "babsr"  # fsb: fewer domains on small nets, but no more mnist_fc solved in A/B (issue 6)
    candidates: int = 4
    probe_share: float = 0.05
    refine_share: float = 0.85
    refine: refine.RefineConfig = field(default_factory=refine.RefineConfig)
    cuts: bool = False  # proven cuts only (cut_proofs); off: the HiGHS job costs a core, no verdict yet
    cut_share: float = 0.75

    def __post_init__(self):
        if self.branching not in BRANCHING:
            raise ValueError(f"unknown branching {self.branching!r}; choose one of {', '.join(BRANCHING)}")


def cascades(state: BoundState) -> bool:
    """Whether the roots' bounds look like a cascade: a network with several layers of ReLU-like neurons
    whose deepest such layer is at least ``CASCADE`` unstable (over every root), its bounds loose because
    the earlier layers' are. Splitting the first layer first, with refreshed bounds, is then the way in."""
    graph = state.graph
    relu = [
        k for k in sorted(graph.needs_bounds())
        if any(graph.nodes[j].op.linear_on_each_side_of_zero for j in graph.nonlinear_consumers(k))
    ]  # fmt: skip
    if len(relu) < 2:
        return False
    lo, hi = state.bounds[relu[-1]]
    return float(((lo < 0) & (hi > 0)).double().mean()) >= CASCADE


class ReluSplit:
    """The ``Brancher`` of ReLU splitting (see the module docstring) for the cases of ``bounder``."""

    name = "bab-relu"
    by_disjunct = True  # each disjunct's domains bound its own rows only (``disjuncts.by_disjunct``)

    def __init__(self, bounder: Bounder, config: ReluSplitConfig = ReluSplitConfig()):
        self.bounder, self.config = bounder, config
        self.graph = bounder.model.graph
        self.cfg = BoundConfig(method="alpha-crown", alpha_steps=config.steps, alpha_lr=config.lr)
        self.nodes = sorted(self.graph.needs_bounds())
        self.max_parents = config.max_batch  # the driver's rate rule still applies below it
        self._root_bounds: dict[int, tuple[Tensor, Tensor]] = {}  # per node k, [cases, *shape_k] (roots)
        self._stored = Stored(self.graph, {})  # how domains are stored (``_pack``), from the roots
        self.shallow = config.shallow  # None until the roots decide
        self.refined = 0  # leaves the roots' refinement of intermediate bounds bounded (``refine``)
        self.root_cuts = mip_cuts.RootCuts()  # the single root's cutting planes (``cuts``, off by default)

    @property
    def cuts(self) -> Cuts | None:
        return self.root_cuts.cuts

    @property
    def refresh(self) -> bool:
        return self.config.refresh or bool(self.shallow)

    @staticmethod
    def applies(model) -> bool:
        """Whether the model has neurons that a split at zero makes exact (ReLU-like) or convex and concave
        on each side (S-shaped)."""
        return any(isinstance(n.op, Nonlinear) and branching.splittable(n.op) for n in model.graph.nodes)

    def can_refine(self, cases: np.ndarray) -> bool:
        """Whether ``roots(cases, refined=True)`` may refine: one root, a share of time to spend, and
        nodes to refine (``refine.targets``)."""
        return self.config.refine_share > 0 and len(cases) == 1 and bool(refine.targets(self.graph))

    def roots(self, cases: np.ndarray, deadline: Deadline | None = None, refined: bool = False) -> Domains:
        """One domain per case: full alpha-CROWN on its box, keeping bounds and output parameters. The
        optimisation ends early, with the bounds so far, once ``deadline`` has passed. With ``refined`` (and
        ``can_refine``), a root still open then spends ``refine_share`` of the time left tightening its
        intermediate bounds (``refine.refine``), and is optimised again from them."""
        self.shallow = self.config.shallow  # decided anew for the search these roots start
        case = torch.as_tensor(cases, dtype=torch.int64)
        state = BoundState(
            self.graph, self._box(case), BoundConfig(method="alpha-crown", alpha_steps=self.config.root_steps)
        )
        params = Params()
        domains = {"case": case, "lower": torch.as_tensor(self.bounder.lower[cases])}
        rows, closed = self._rows(domains), self._closes(domains)

        def enough(best: Tensor) -> bool:
            return closed(best) or (deadline is not None and deadline.expired())

        full = alpha.full_fits(self.graph, len(cases), state.cfg)

        def optimise() -> Tensor:
            with torch.no_grad():
                if full:
                    return alpha.optimise(state, rows, refresh=lambda p: intermediate_bounds(state, p),
                                          params=params, enough=enough)  # fmt: skip
                # too large to optimise every intermediate bound: CROWN's, and the output's slopes
                if not state.bounds:
                    intermediate_bounds(state)
                return alpha.optimise(state, rows, params=params, enough=enough)

        lower = optimise()
        if self.can_refine(cases) and deadline is not None and not closed(lower):
            # HiGHS's root takes minutes on the oval21 CNNs: it starts with the first search, not after it
            self._start_cuts(state, case, rows, lower, deadline)
        if refined and self.can_refine(cases) and deadline is not None and not closed(lower):
            until = time.monotonic() + self.config.refine_share * max(deadline.remaining(), 0.0)
            cuts = self.root_cuts

            def margin() -> float:
                """The root's worst margin with the output's slopes optimised again on the bounds so far (with
                the cuts, once they are in): the root's slopes were chosen for its old bounds."""
                cuts.take(state, params, lower)
                with torch.no_grad():
                    return self._margin(domains)(alpha.optimise(state, rows, params=params, enough=closed))

            try:
                self.refined += refine.refine(state, until, self.config.refine, margin)
                lower = torch.maximum(lower, optimise())
                if cuts.running and not closed(lower):  # the search waits a tenth of what is left at most
                    cuts.take(state, params, lower, min(cuts.remaining(), CUT_WAIT * deadline.remaining()))
                    lower = torch.maximum(lower, optimise())
            finally:
                cuts.close()
        keep = Params()
        keep.tensors = {k: v for k, v in params.tensors.items() if of_output(k)}
        keep.projections = {k: params.projections[k] for k in keep.tensors}
        rows = rows.shape[0]
        for k in self.nodes:  # every domain carries the same keys (the queue concatenates them)
            keep.tensors[("beta", k)] = torch.zeros(rows, len(cases), *self.graph.nodes[k].shape)
            keep.projections[("beta", k)] = self._projection(("beta", k))
        domains["lower"] = torch.maximum(domains["lower"], lower.T.double())
        if self.shallow is None:  # once per search: every domain must carry the same keys
            self.shallow = cascades(state)
        self._keep_root_bounds(case, state)
        domains.update(self._pack(state, keep))
        self._choose(domains, state, keep)
        return domains

    def _start_cuts(self, state: BoundState, case: Tensor, rows: Tensor, lower: Tensor,
                    deadline: Deadline) -> None:  # fmt: skip
        """Where ``cuts`` is on, HiGHS's root separation for the single root (``RootCuts.start``) on its lowest
        row (``rows`` [R, 1, n_out], bounds ``lower`` [R, 1]) at that row's threshold (``d`` plus the
        verdict's tolerance)."""
        if not self.config.cuts:
            return
        r, c = int(lower[:, 0].argmin()), int(case[0])
        objective = rows[r, 0].detach().reshape(-1).double().numpy()
        threshold = float(self.bounder.spec.d[c, r] + self.bounder.decide_tol[c, r])
        seconds = self.config.cut_share * max(deadline.remaining(), 0.0)
        self.root_cuts.start(self.graph, state, objective, threshold, seconds)

    def boxes(self, domains: Domains) -> tuple[Tensor, Tensor]:
        c = domains["case"].numpy()
        return torch.as_tensor(self.bounder.box_lo[c]), torch.as_tensor(self.bounder.box_hi[c])

    def points(self, domains: Domains) -> Tensor:
        """No points (``(N, 0, n_in)``): the split constraints are not known to hold anywhere in particular."""
        return torch.zeros(domains["case"].shape[0], 0, self.bounder.box_lo.shape[1])

    def split(self, parents: Domains) -> Domains:
        """Two children per parent, the inactive side first; a parent with no neuron left to split (its
        relaxation is exact, its bound limited only by how far the multipliers got) comes back once, as
        it is, so that its optimisation goes on."""
        stuck = parents["branch_node"] < 0
        movable = take(parents, ~stuck)
        state, params = self._unpack(movable)
        nodes, pos = movable["branch_node"], movable["branch_pos"]
        child, child_params = branching.split(state, params, nodes, pos)
        if self.refresh and len(nodes):
            with torch.no_grad():
                refresh_after(child, int(nodes.min()))
        index = torch.arange(len(nodes)).repeat_interleave(2)
        children = {key: movable[key][index] for key in ("case", "lower", disjuncts.ROWS) if key in movable}
        children.update(self._pack(child, child_params))
        if not stuck.any():
            return children
        return concat([children, {key: parents[key][stuck] for key in children}])

    def bound(self, domains: Domains) -> Tensor:
        """``(N, S)`` lower bounds by CROWN with optimised slopes and split multipliers, warm-started
        from the parent (and by linear programming once no neuron is left to split: ``engine.lp``);
        stores the updated parameters and the next neuron to split."""
        state, params = self._unpack(domains)
        rows = self._rows(domains)
        record: dict[int, Tensor] = {}
        with torch.no_grad():
            lower = alpha.optimise(state, rows, params=params, record=record, enough=self._closes(domains))
        self._choose(domains, state, params, record)
        exact = (domains["branch_node"] < 0).nonzero().flatten()
        if len(exact):  # nothing left to split: the exact minimum is a linear program
            with torch.no_grad():
                lower[:, exact] = torch.maximum(
                    lower[:, exact], lp.exact_lower(state.select(exact), rows[:, exact])
                )
        lower = self._spread(domains, lower)
        lower[state.infeasible()] = torch.inf  # an empty domain: nothing to verify
        domains.update(self._pack(state, params))
        return lower

    # ------------------------------------------------------------------------------------------ helpers

    def _box(self, case: Tensor) -> verifier.Box:
        b, c = self.bounder, case.numpy()
        shape = (-1,) + b.input_shape
        return verifier.Box(b.tensor(b.box_lo[c]).reshape(shape), b.tensor(b.box_hi[c]).reshape(shape))

    def narrow(self, domains: Domains) -> Domains:
        """Cut the output slopes and multipliers (one per spec row) to the domains' ``ROWS``, and choose
        the next split for those rows alone."""
        rows = domains[disjuncts.ROWS]
        for key, t in domains.items():
            if key.startswith("param:"):
                index = rows.reshape(*rows.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
                domains[key] = t.gather(1, index)
        self._choose(domains, *self._unpack(domains))
        return domains

    def _rows(self, domains: Domains) -> Tensor:
        """[R, N, n_out]: the spec rows each domain bounds (its ``ROWS``, else all of its case's)."""
        C = torch.as_tensor(self.bounder.spec.C[domains["case"].numpy()])
        if disjuncts.ROWS in domains:
            C = C.gather(1, domains[disjuncts.ROWS][..., None].expand(-1, -1, C.shape[-1]))
        return self.bounder.tensor(C.numpy()).transpose(0, 1)

    def _spread(self, domains: Domains, lower: Tensor) -> Tensor:
        """[N, S] float64 from bounds [R, N] of the domains' ``_rows`` (-inf on rows not bounded)."""
        lower = lower.T.double()
        if disjuncts.ROWS not in domains:
            return lower
        full = torch.full((lower.shape[0], self.bounder.spec.d.shape[1]), -torch.inf, dtype=torch.float64)
        return full.scatter(1, domains[disjuncts.ROWS], lower)

    def _closes(self, domains: Domains) -> Callable[[Tensor], bool]:
        """``enough`` for ``alpha.optimise`` on ``domains``: whether bounds [R, N] of their ``_rows`` close
        every one of them (with the bounds they carry, as ``driver.settle`` will combine them)."""
        margin = self._margin(domains)
        return lambda best: margin(best) > 0

    def _margin(self, domains: Domains) -> Callable[[Tensor], float]:
        """The worst score (``disjuncts.scores``) of ``domains`` with bounds [R, N] of their ``_rows``: positive
        once every one is closed."""

        def margin(best: Tensor) -> float:
            lower = torch.maximum(domains["lower"], self._spread(domains, best))
            rows = domains.get(disjuncts.ROWS)
            return float(disjuncts.scores(self.bounder, domains["case"], lower, rows).min())

        return margin

    def _weights(self, domains: Domains) -> Tensor:
        """[R, N]: 1 on the bounded rows not yet above ``d`` plus the margin (the ones splitting must help)."""
        b, c = self.bounder, domains["case"].numpy()
        gap = torch.as_tensor(domains["lower"].numpy() - b.spec.d[c] - b.decide_tol[c])
        wanted = (gap <= 0) & torch.as_tensor(b.spec.member[c].any(-1))
        if disjuncts.ROWS in domains:
            wanted = wanted.gather(1, domains[disjuncts.ROWS])
        return wanted.to(torch.float32).T

    def _choose(self, domains: Domains, state: BoundState, params: Params,
                record: dict[int, Tensor] | None = None) -> None:  # fmt: skip
        """Store each domain's next neuron to split (``branch_node`` / ``branch_pos``, -1 if none is
        left), scored by the output pass's coefficients with ``params`` (``record``, when that pass has
        been made already)."""
        if record is None:
            record = {}
            with torch.no_grad():
                crown.backward(state, self.graph.output, self._rows(domains), params, ("out",), True, record)
        scores = branching.split_scores(state, record, self._weights(domains))
        if self.shallow:
            scores = branching.first_node_first(scores)
        count = self.config.candidates if self.config.branching == "fsb" else 1
        nodes, pos, ok = branching.top_candidates(scores, count)
        pick = self._smart_pick(domains, state, params, nodes, pos, ok)
        nodes, pos, ok = (t.gather(1, pick[:, None])[:, 0] for t in (nodes, pos, ok))
        domains["branch_node"] = torch.where(ok, nodes, -1)
        domains["branch_pos"] = torch.where(ok, pos, -1)

    def _smart_pick(self, domains: Domains, state: BoundState, params: Params, nodes: Tensor, pos: Tensor,
                    ok: Tensor) -> Tensor:  # fmt: skip
        """Per domain the column [N] of the candidate (``nodes``/``pos``/``ok`` [N, K], best-scored first)
        whose two children have the highest summed score (``disjuncts.scores``, estimated by
        ``branching.children_lower``); column 0 unless another candidate is strictly better. A verified
        child counts as score 0: how far beyond does not matter. (The sum, not the worse child alone: a
        split that closes one side outright was measured to need fewer domains than one that moves both
        sides a little.)"""
        if nodes.shape[1] <= 1:
            return torch.zeros(nodes.shape[0], dtype=torch.long)
        rows = self._rows(domains)
        value = torch.full(ok.shape, -torch.inf, dtype=torch.float64)
        for c in range(nodes.shape[1]):
            live = ok[:, c].nonzero().flatten()
            if not len(live):
                continue
            with torch.no_grad():
                child = branching.children_lower(state.select(live), params.select(live), rows[:, live],
                                                 nodes[live, c], pos[live, c])  # fmt: skip
            index = live.repeat_interleave(2)
            pairs = {key: domains[key][index] for key in ("case", disjuncts.ROWS) if key in domains}
            lower = self._spread(pairs, child)
            score = disjuncts.scores(self.bounder, pairs["case"], lower, pairs.get(disjuncts.ROWS))
            score = score.clamp(max=0).reshape(-1, 2)
            value[live, c] = score.sum(1)
        best, pick = value.max(1)
        return torch.where(best > value[:, 0], pick, 0)

    def _keep_root_bounds(self, case: Tensor, state: BoundState) -> None:
        """Store the roots' bounds of every node, by case (NaN for cases without a root yet)."""
        cases = self.bounder.box_lo.shape[0]
        for k in self.nodes:
            lo, hi = state.bounds[k]
            if k not in self._root_bounds:
                self._root_bounds[k] = tuple(t.new_full((cases, *t.shape[1:]), torch.nan) for t in (lo, hi))
            for kept, new in zip(self._root_bounds[k], (lo, hi)):
                kept[case] = new.detach()
        self._stored = Stored(self.graph, self._root_bounds)

    def _pack(self, state: BoundState, params: Params) -> Domains:
        """The domains' state as queue entries (``stored``: fewer positions, fewer bytes)."""
        out, stored = {}, self._stored
        for k in self.nodes:
            lo, hi = state.bounds[k]
            if self.refresh:
                out[f"lo:{k}"], out[f"hi:{k}"] = lo, hi
            split = state.splits.get(k)
            split = torch.zeros(lo.shape, dtype=torch.int8) if split is None else split
            out[f"split:{k}"] = stored.compact(k, split)
        for key, t in params.tensors.items():
            out["param:" + "/".join(map(str, key))] = stored.pack(key, t)
        return out

    def _unpack(self, domains: Domains) -> tuple[BoundState, Params]:
        case = domains["case"]
        state = BoundState(self.graph, self._box(case), self.cfg, cuts=self.cuts)
        for k in self.nodes:
            if domains[f"split:{k}"].any():
                state.splits[k] = self._stored.expand(k, domains[f"split:{k}"])
            if self.refresh:
                state.bounds[k] = (domains[f"lo:{k}"], domains[f"hi:{k}"])
            else:  # the root's, clamped by the splits (as ``branching.split`` made them)
                lo, hi = self._root_bounds[k]
                state.set_bounds(k, (lo[case], hi[case]))
        params = Params()
        dtype = state.region.box()[0].dtype
        for name, t in domains.items():
            if name.startswith("param:"):
                kind, *rest = name[len("param:") :].split("/")
                key = (kind, *(int(r) if r.lstrip("-").isdigit() else r for r in rest))
                params.tensors[key] = self._stored.unpack(key, t, dtype).requires_grad_(True)
                params.projections[key] = self._projection(key)
        params.project_()  # values rounded in storage may have left their sound set
        return state, params

    def _projection(self, key):
        if multiplier(key):
            return nonnegative
        return self.graph.nodes[key[-1]].op.project

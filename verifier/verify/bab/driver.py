"""Branch and bound: the generic loop over sub-domains of the cases of a property.

Every domain belongs to one case (key ``case``, ``(N,)``) and carries ``lower`` (``(N, S)``, float64):
lower bounds of ``(C f(x))_s`` over the domain, for the case's spec rows. Each iteration pops open
domains (of lowest bound, and of lowest model margin seen: ``BabConfig.sat_share``), lets a ``Brancher``
split them, bounds all children in one batched engine call and keeps a child only while its score
(``disjuncts.scores``) is not positive: a positive score says every disjunct of the case has a row whose
bound exceeds its threshold ``d_s`` by the safety margin ``tol_s`` of ``bounding`` (its ``decide_tol``: for
a float query, widened by the rounding of the network's evaluation), and the child is verified. A child
keeps ``max(parent, child)`` bound per row -- the parent's bound holds on every subset of the parent -- so
scores never decrease along a branch. The children of a domain cover it, so when no open domain is left
every case is verified (``unsat``).

A brancher whose cost grows with the rows it bounds (``Brancher.by_disjunct``) gets, after the roots, one
domain per open disjunct of each root (``disjuncts.by_disjunct``): each is closed by its own rows, so the
splits one disjunct needs do not multiply the domains of another, and each domain bounds only its rows.

Bounds are checked against the model's values at points of every child (``check_against_samples``), and
those points, plus PGD runs in the popped domains of lowest margin, are counterexample candidates; only
a point that ``OnnxChecker`` confirms on the ONNX file gives ``sat``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from verifier.errors import BoundComputationError
from verifier.spec.property import Property
from verifier.verify.attack import Attack
from verifier.verify.bab.disjuncts import JOINT, ROWS, by_disjunct, check_joint, scores
from verifier.verify.bab.queue import BOUND, DomainQueue, Domains, concat, domain_count, take
from verifier.verify.bounding import Bounder, check_against_samples
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.onnx_check import Counterexample, OnnxChecker
from verifier.verify.spec_batch import disjunct_min

MARGIN = "margin"  # per domain: the lowest spec margin of the model at the brancher's points


class Brancher(Protocol):
    """A branching rule: how domains are split and how their children are bounded.

    ``split`` returns children (every key of ``Domains``, ``lower`` copied from the parent, ``BOUND`` may be
    stale) that together cover each parent; ``bound`` returns ``(N, S)`` float64 lower bounds of
    ``(C f(x))_s`` over each domain (and may store what it learnt for the next split in the domains'
    dict, e.g. branching scores); ``points`` returns ``(N, K, n_in)`` points *of* each domain (``K`` may
    be 0), where bounds are checked against the model and counterexamples looked for; ``boxes`` returns
    float32 ``(N, n_in)`` input boxes containing each domain, searched by PGD.
    """

    name: str
    max_parents: int | None  # parents per iteration, or None for the driver's memory rule (``batch_size``)
    by_disjunct: bool  # whether the driver gives each disjunct its own domains (``narrow``)

    def split(self, parents: Domains) -> Domains: ...

    def bound(self, children: Domains) -> Tensor: ...

    def points(self, domains: Domains) -> Tensor: ...

    def boxes(self, domains: Domains) -> tuple[Tensor, Tensor]: ...

    def narrow(self, domains: Domains) -> Domains:
        """Domains restricted to their ``ROWS`` (only called when ``by_disjunct``): whatever the brancher
        keeps per row is cut to those rows; ``bound`` then needs to bound only them (``(N, S)`` out, any
        value in the other columns is ignored)."""
        ...


@dataclass(frozen=True)
class BabConfig:
    """Budget and batch sizes of branch and bound.

    ``max_domains``: children bounded before giving up (``unknown``). ``max_queue_bytes``: memory the
    queue of open domains may hold before the search gives up (``unknown``), by default an eighth of the
    machine's physical memory (``queue_budget``): ReLU-split searches on the oval21 CNNs grew until the
    system killed them (one held 16 GB after 11 minutes), and the process holds more than its queue (a
    merge of the queue's parts copies it, and freed memory is not all returned). ``max_elements``: cap on the
    elements of one coefficient tensor of a batched bound call (see ``batch_size``); the batch is also
    kept to about ``iteration_seconds`` of work (measured), since the deadline is polled between
    iterations. A ``sat_share`` of each batch are the domains of lowest observed margin, the rest those
    of lowest bound. Every ``attack_every`` iterations PGD runs in the ``attack_domains`` popped domains
    of lowest margin, while attack rounds have taken at most ``attack_share`` of the search's time (the
    first round always runs; later ones find fewer counterexamples the longer a search lasts, while each
    costs as much: on mnist_fc 256x4 prop_3_0.05 they were 2.5 s of a 5.4 s search). A search shared
    between workers (``shards``) runs its first ``local_seconds`` in its own process, and starts the
    workers only if it is still open then: each pays seconds of imports, more than a short search takes.
    """

    max_domains: int = 20_000_000
    max_queue_bytes: int | None = None
    max_elements: int = 2**22
    max_batch: int = 4096
    iteration_seconds: float = 0.5
    sat_share: float = 0.5
    attack_every: int = 8
    attack_domains: int = 64
    attack_share: float = 0.25
    progress: bool = False
    progress_seconds: float = 5.0
    local_seconds: float = 2.0


@dataclass(frozen=True)
class BabResult:
    """``verdict``: ``unsat``, ``sat`` (with a checked counterexample), ``unknown`` or ``timeout``;
    ``stopped``: why an ``unknown`` search gave up; ``bound``: where an ``unknown`` or ``timeout`` search
    stood, the lowest score of its open domains (how far the least verified one is from verified: ``unsat``
    once every score is above 0)."""

    verdict: str
    counterexample: Counterexample | None
    domains: int
    iterations: int
    stopped: str = ""
    bound: float | None = None


@dataclass
class Problem:
    """What the loop needs besides the brancher: spec, tolerances and model (``bounder``), the ONNX
    checker and the property for counterexamples, and the instance's attack (for rounds in domains)."""

    bounder: Bounder
    checker: OnnxChecker
    prop: Property
    attacker: Attack


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def queue_budget(config: BabConfig) -> int:
    """``config.max_queue_bytes``, or an eighth of the physical memory (a suite run of several searches at
    a time gives each a share of a quarter of it: ``batch.instance_config``). Measured on oval21
    cifar_deep, the process held 11 GB for a queue of 3.7 to 4.9 GB."""
    return physical_memory() // 8 if config.max_queue_bytes is None else config.max_queue_bytes


def batch_size(n_rows: int, widest: int, config: BabConfig) -> int:
    """Parents popped per iteration. Bounding their ``2 x parents`` children holds coefficient tensors of
    about ``children x max(n_rows, widest) x widest`` elements (spec rows at the output, one row per
    neuron of the widest layer for intermediate bounds); keep that under ``config.max_elements``."""
    per_parent = 2 * max(n_rows, widest) * widest
    return int(min(config.max_batch, max(1, config.max_elements // per_parent)))


def run(brancher: Brancher, roots: Domains, problem: Problem, config: BabConfig, deadline: Deadline):
    """Branch and bound from ``roots`` (domains with ``case`` and ``lower``, bounded once more here) until
    every domain is verified (``unsat``), a checked counterexample is found (``sat``),
    ``config.max_domains`` children were bounded (``unknown``) or the deadline passes (``timeout``,
    within about ``config.iteration_seconds``). ``shards.run`` is the same loop over several workers."""
    search = Search.start(brancher, roots, problem, config, deadline)
    run_until(search, problem)
    return search.result


def run_until(search: Search, problem: Problem, until: Deadline | None = None) -> None:
    """Bound ``search``'s batches in this process until it has a result (at the latest at its deadline:
    ``timeout``) or ``until`` has passed."""
    while search.result is None and (until is None or not until.expired()):
        parents, attack = search.next_batch()
        search.record(bound_batch(search.brancher, parents, problem, search.config, search.deadline, attack))


@dataclass
class Outcome:
    """What bounding a batch of ``parents`` domains gives: its open children (``BOUND <= 0``), how many
    children were bounded, a checked counterexample if one was found, the seconds it took and those of
    them its attack round took."""

    parents: int
    children: Domains
    bounded: int
    found: Counterexample | None
    seconds: float
    attack_seconds: float = 0.0


def bound_batch(brancher: Brancher, parents: Domains, problem: Problem, config: BabConfig,
                deadline: Deadline, attack: bool) -> Outcome:  # fmt: skip
    """One batch of work: PGD in the parents nearest to a counterexample (when ``attack``), then split,
    bound and check the children; the open ones are returned (to be pushed)."""
    start = time.monotonic()
    if attack:
        nearest = torch.argsort(parents[MARGIN])[: config.attack_domains]
        try:
            found = _attack(brancher, take(parents, nearest), problem, deadline)
        except DeadlineReached:  # the search's deadline (maybe a probe's): the search loop ends it
            found = None
        attacked = time.monotonic() - start
        if found is not None:
            none = take(parents, torch.zeros(0, dtype=torch.long))
            return Outcome(domain_count(parents), none, 0, found, attacked, attacked)
    else:
        attacked = 0.0
    children = expand(brancher, parents, problem)
    found = check_points(brancher, children, problem)
    open_ = take(children, children[BOUND] <= 0)
    seconds = time.monotonic() - start
    return Outcome(domain_count(parents), open_, domain_count(children), found, seconds, attacked)


@dataclass
class Search:
    """The state of one search, as the process holding the queue sees it: the open domains, the counts,
    the batch size rule, and ``result`` once the search is over.

    Batches hold ``size`` parents at most (``batch_size`` or the brancher's cap) and about
    ``config.iteration_seconds`` of work at the rate the last batch was bounded at (parents per second,
    its attack round left out: a batch after one would otherwise shrink), so that the deadline, polled
    between batches, is overrun by about one batch. ``attack_seconds``: the attack rounds' total, against
    the search's time since ``began`` (``BabConfig.attack_share``).
    """

    brancher: Brancher
    config: BabConfig
    deadline: Deadline
    queue: DomainQueue
    size: int
    result: BabResult | None = None
    visited: int = 0
    iteration: int = 0
    rate: float = 0.0
    shown: float = 0.0
    began: float = 0.0
    attack_seconds: float = 0.0

    @classmethod
    def start(cls, brancher: Brancher, roots: Domains, problem: Problem, config: BabConfig,
              deadline: Deadline) -> Search:  # fmt: skip
        """Bound and check the roots and queue the open ones (one per open disjunct for
        ``by_disjunct``); the search may be over at once (``result``)."""
        queue = DomainQueue()
        widest = max(int(np.prod(node.shape)) for node in problem.bounder.model.graph.nodes)
        size = brancher.max_parents or batch_size(problem.bounder.spec.d.shape[1], widest, config)
        now = time.monotonic()
        search = cls(brancher, config, deadline, queue, size, rate=64 / config.iteration_seconds, shown=now,
                     began=now)  # fmt: skip
        if deadline.expired():
            search.result = BabResult("timeout", None, 0, 0)
            return search
        roots = settle(brancher, dict(roots), problem)
        found = check_points(brancher, roots, problem)
        if found is not None:
            search.result = BabResult("sat", found, 0, 0)
            return search
        if brancher.by_disjunct:
            roots = by_disjunct(take(roots, roots[BOUND] <= 0), problem.bounder, brancher.narrow)
        queue.push(take(roots, roots[BOUND] <= 0))
        search.settle(busy=False)
        return search

    def next_batch(self, share: int | None = None) -> tuple[Domains, bool]:
        """The next parents (at most ``share`` of them if given) and whether an attack round is due."""
        seconds = min(self.config.iteration_seconds, self.deadline.remaining() / 2)
        count = max(1, min(self.size, int(self.rate * seconds), share or self.size))
        spent = time.monotonic() - self.began
        attack = (self.iteration % self.config.attack_every == 0
                  and self.attack_seconds <= self.config.attack_share * spent)  # fmt: skip
        self.iteration += 1
        return _pop(self.queue, count, self.config.sat_share), attack

    def record(self, outcome: Outcome, busy: bool = False) -> None:
        """Push a batch's open children and count its work; ``busy``: batches are still being bounded
        elsewhere (the search is not over when the queue is empty)."""
        self.queue.push(outcome.children)
        self.visited += outcome.bounded
        self.attack_seconds += outcome.attack_seconds
        self.rate = outcome.parents / max(outcome.seconds - outcome.attack_seconds, 1e-6)
        if outcome.found is not None:
            self.result = BabResult("sat", outcome.found, self.visited, self.iteration)
            return
        if self.config.progress and time.monotonic() - self.shown > self.config.progress_seconds:
            self.shown = time.monotonic()
            print(f"bab {self.brancher.name}: {len(self.queue)} domains open, global lower bound "
                  f"{self.queue.global_bound():.4g}, lowest margin seen {self.queue.global_bound(MARGIN):.4g}, "
                  f"{self.visited} bounded, {self.deadline.elapsed():.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        self.settle(busy)

    def settle(self, busy: bool) -> None:
        """Set ``result`` when the search is over: the queue is empty and nothing is being bounded
        (``unsat``), the deadline has passed, or the domain or memory budget is spent (``unknown``). While
        batches are out (``busy``), their domains are in no queue: the result gets no ``bound``."""

        def bound() -> float | None:
            lowest = None if busy else self.queue.global_bound()
            return lowest if lowest is not None and math.isfinite(lowest) else None

        if self.deadline.expired():
            self.result = BabResult("timeout", None, self.visited, self.iteration, bound=bound())
        elif self.visited >= self.config.max_domains:
            stopped = f"{self.visited} domains bounded (the budget: {self.config.max_domains})"
            self.result = BabResult("unknown", None, self.visited, self.iteration, stopped, bound())
        elif (held := self.queue.nbytes()) > (budget := queue_budget(self.config)):
            stopped = (f"{len(self.queue)} open domains hold {held / 2**30:.2f} GiB (the queue's budget: "
                       f"{budget / 2**30:.2f} GiB)")  # fmt: skip
            self.result = BabResult("unknown", None, self.visited, self.iteration, stopped, bound())
        elif not len(self.queue) and not busy:
            self.result = BabResult("unsat", None, self.visited, self.iteration)


def settle(brancher: Brancher, domains: Domains, problem: Problem) -> Domains:
    """Bound ``domains`` in one call; ``lower`` becomes the larger of the new bound and the one they
    carry (both sound on the domain), and ``BOUND`` their score. A NaN bound raises
    ``BoundComputationError``: it would score as neither open nor closed, and be dropped as verified."""
    bound = brancher.bound(domains)
    if torch.isnan(bound).any():
        n, s = (int(i) for i in torch.nonzero(torch.isnan(bound))[0])
        raise BoundComputationError(f"{brancher.name}: NaN bound of spec row {s} on domain {n}")
    domains["lower"] = torch.maximum(domains["lower"], bound)
    domains[BOUND] = scores(problem.bounder, domains["case"], domains["lower"], domains.get(ROWS),
                            domains.get(JOINT))  # fmt: skip
    return domains


def expand(brancher: Brancher, parents: Domains, problem: Problem) -> Domains:
    """Split ``parents`` and ``settle`` all children: a child starts from its parent's ``lower``."""
    return settle(brancher, brancher.split(parents), problem)


def _pop(queue: DomainQueue, count: int, sat_share: float) -> Domains:
    """``count`` domains: a ``sat_share`` of them of lowest ``MARGIN`` (nearest to a counterexample as far
    as the model's values show), the rest of lowest ``BOUND``. The order changes which domains are
    split first, never which ones must be split to verify everything."""
    by_margin = int(count * sat_share)
    first = queue.pop(count - by_margin)
    if by_margin == 0 or not len(queue):
        return first
    return concat([first, queue.pop(by_margin, key=MARGIN)])


def check_points(brancher: Brancher, domains: Domains, problem: Problem) -> Counterexample | None:
    """Evaluate the model at the brancher's points of every domain: check the domain's bounds against the
    values there, store the lowest spec margin seen per domain as ``MARGIN`` (``inf`` without points),
    and return a checked counterexample if one of the points is unsafe."""
    points = brancher.points(domains)  # (N, K, n_in)
    n, k = points.shape[:2]
    domains[MARGIN] = torch.full((n,), math.inf, dtype=torch.float64)
    if k == 0:
        return None
    x = points.reshape(n * k, -1).double().numpy()
    cases = domains["case"].numpy().repeat(k)
    rows, _ = problem.bounder.rows_at(x, cases)
    spec = problem.bounder.spec
    gap = domains["lower"].numpy().repeat(k, axis=0) - spec.d[cases]
    check_against_samples(gap, rows, spec, cases, problem.bounder.tol[cases], brancher.name, "domain")
    if JOINT in domains:
        check_joint(domains[JOINT].repeat_interleave(k, 0), rows, cases, problem.bounder, brancher.name)
    margin = disjunct_min(torch.as_tensor(rows), torch.as_tensor(spec.member[cases]),
                          torch.as_tensor(spec.valid[cases])).numpy()  # fmt: skip
    domains[MARGIN] = torch.as_tensor(margin).reshape(n, k).amin(dim=1)
    return _confirm(x, margin, cases, problem)


def _attack(brancher: Brancher, domains: Domains, problem: Problem, deadline: Deadline):
    """One attack round inside each distinct box of ``domains`` (intersected with its case's box rounded
    inwards, so iterates are points of the property); returns a checked counterexample or ``None``.
    Domains that share a box (every ReLU-split domain has its case's) share its attack: 64 copies of one
    box were 64 rounds of the same PGD, a quarter of the search's time on oval21 cifar_wide img3458."""
    lo, hi = (t.double().numpy() for t in brancher.boxes(domains))
    cases = domains["case"].numpy()
    _, first = np.unique(np.column_stack([cases, lo, hi]), axis=0, return_index=True)
    first = np.sort(first)  # the given order: lowest margin first
    return problem.attacker.attack_boxes(lo[first], hi[first], cases[first], deadline)


def _confirm(x: np.ndarray, margin: np.ndarray, cases: np.ndarray, problem: Problem):
    """Re-check on the ONNX file the ``check_top`` points of lowest margin among those ``<= 0``."""
    spec = problem.bounder.spec
    for i in np.argsort(margin, kind="stable")[: problem.attacker.config.check_top]:
        if margin[i] > 0:
            break
        point = np.clip(x[i], spec.lo[cases[i]], spec.hi[cases[i]])  # the centre may lie on the rounding
        found = problem.checker.check(problem.prop.cases, int(cases[i]), point)
        if found is not None:
            return found
    return None

"""The open sub-domains of branch and bound, held as batched tensors.

A batch of domains is a dict of tensors sharing a leading domain dimension ``N``: whatever a brancher
needs (input boxes, split states, ...) plus the key ``BOUND`` (``(N,)``), the scalar the queue orders by.
``BOUND`` is the domain's certified value (the driver's "score"): the domain is open while it is
``<= 0``, and the smallest ``BOUND`` over the queue is the global lower bound of the search.

``DomainQueue`` is a plain container (no module state, no references to models), so it pickles and can
later be split between processes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BOUND = "bound"
# parts of a queue before they are merged: on a synthetic ReLU-split queue growing to 41,000 domains over
# 160 pops of 256, pops and pushes took 36 ms each never merging, 43 merging all past 32 parts, 73 merging
# the newest two while the older held at most twice as many domains (a copy of the whole queue per pop: 300
# ms at 21,000)
MAX_PARTS = 128
Domains = dict[str, Tensor]


def domain_count(domains: Domains) -> int:
    """The ``N`` of a batch of domains."""
    return int(domains[BOUND].shape[0])


def take(domains: Domains, index: Tensor) -> Domains:
    """The domains selected by ``index`` (an index tensor or a boolean mask over ``N``)."""
    return {key: value[index] for key, value in domains.items()}


def concat(batches: list[Domains]) -> Domains:
    """One batch from several with the same keys."""
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


class DomainQueue:
    """Open domains; ``pop`` returns the ones of lowest ``BOUND`` first (the ones holding the global
    lower bound down), or of lowest value of another per-domain key.

    Pushed batches stay as they are (parts), each with the indices of its rows still open; a pop copies
    only the popped rows and marks them gone, not the whole queue (~350 MB for 20,000 mnist_fc 256x4
    ReLU-split domains). A part is compacted once less than half of it is open, and all are merged into one
    past ``MAX_PARTS`` (a pop loops over the parts). The open domains in part order are in the order of
    their pushes, so ties go as they would in one concatenated batch."""

    def __init__(self):
        self._parts: list[Domains] = []
        self._open: list[Tensor] = []  # per part, the ascending indices of its open rows

    def __len__(self) -> int:
        return sum(int(rows.shape[0]) for rows in self._open)

    def nbytes(self) -> int:
        """The bytes the queue holds: every part's tensors (rows already popped from a part count until it
        is compacted, as they stay in memory until then)."""
        return sum(t.nbytes for part in self._parts for t in part.values()) + sum(
            rows.nbytes for rows in self._open
        )

    def push(self, domains: Domains) -> None:
        """Add a batch (it must hold ``BOUND``; empty batches are ignored)."""
        if BOUND not in domains:
            raise KeyError(f"a batch of domains needs the key {BOUND!r}")
        if not domain_count(domains):
            return
        self._parts.append(domains)
        self._open.append(torch.arange(domain_count(domains)))
        if len(self._parts) > MAX_PARTS:
            merged = concat([take(part, rows) for part, rows in zip(self._parts, self._open)])
            self._parts, self._open = [merged], [torch.arange(domain_count(merged))]

    def pop(self, count: int, key: str = BOUND) -> Domains:
        """Remove and return the ``min(count, len)`` domains of lowest ``key`` (a ``(N,)`` entry of every
        pushed batch; ``BOUND`` by default), lowest first."""
        if not self._parts:
            raise IndexError("pop from an empty DomainQueue")
        values = torch.cat([part[key][rows] for part, rows in zip(self._parts, self._open)])
        first = torch.topk(values, min(count, values.shape[0]), largest=False, sorted=True).indices
        sizes = torch.tensor([rows.shape[0] for rows in self._open])
        ends = sizes.cumsum(0)
        which = torch.searchsorted(ends, first, right=True)
        local = first - (ends - sizes)[which]
        batches, places = [], []
        for p in which.unique().tolist():
            place = (which == p).nonzero().flatten()
            batches.append(take(self._parts[p], self._open[p][local[place]]))
            places.append(place)
            still = torch.ones_like(self._open[p], dtype=torch.bool)
            still[local[place]] = False
            self._open[p] = self._open[p][still]
        self._compact()
        popped = concat(batches) if len(batches) > 1 else batches[0]
        return take(popped, torch.cat(places).argsort())

    def global_bound(self, key: str = BOUND) -> float:
        """The smallest ``BOUND`` (or ``key``) of the open domains (``inf`` when none is left)."""
        return min((float(part[key][rows].min()) for part, rows in zip(self._parts, self._open)),
                   default=math.inf)  # fmt: skip

    def _compact(self) -> None:
        """Drop the parts with no open domain; copy out the open ones of a part less than half open."""
        kept = [(part, rows) for part, rows in zip(self._parts, self._open) if rows.shape[0]]
        self._parts, self._open = [], []
        for part, rows in kept:
            if 2 * rows.shape[0] < domain_count(part):
                part, rows = take(part, rows), torch.arange(rows.shape[0])
            self._parts.append(part)
            self._open.append(rows)

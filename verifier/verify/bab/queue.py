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
    """Open domains; ``pop`` returns the ones of lowest ``BOUND`` first (the most promising for a
    counterexample, and the ones holding the global lower bound down)."""

    def __init__(self):
        self._parts: list[Domains] = []  # pushed batches, merged lazily at the next pop

    def __len__(self) -> int:
        return sum(domain_count(part) for part in self._parts)

    def push(self, domains: Domains) -> None:
        """Add a batch (it must hold ``BOUND``; empty batches are ignored)."""
        if BOUND not in domains:
            raise KeyError(f"a batch of domains needs the key {BOUND!r}")
        if domain_count(domains):
            self._parts.append(domains)

    def pop(self, count: int) -> Domains:
        """Remove and return the ``min(count, len)`` domains of lowest ``BOUND``, lowest first."""
        if not self._parts:
            raise IndexError("pop from an empty DomainQueue")
        merged = concat(self._parts) if len(self._parts) > 1 else self._parts[0]
        bound = merged[BOUND]
        first = torch.topk(bound, min(count, bound.shape[0]), largest=False, sorted=True).indices
        rest = torch.ones_like(bound, dtype=torch.bool)
        rest[first] = False
        self._parts = [take(merged, rest)] if bool(rest.any()) else []
        return take(merged, first)

    def global_bound(self) -> float:
        """The smallest ``BOUND`` of the open domains (``inf`` when none is left)."""
        return min((float(part[BOUND].min()) for part in self._parts), default=math.inf)

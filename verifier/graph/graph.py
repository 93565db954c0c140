"""The internal graph: a topologically ordered list of nodes, node 0 being the (single) input.

Shapes are per sample: every tensor flowing through the graph carries one extra leading batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from verifier.ops.base import Nonlinear, Op


@dataclass(frozen=True)
class Node:
    name: str
    op: Op | None  # None for the input node
    inputs: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    output: int
    batched: bool = True  # False when the source model's input has no batch dimension
    last_use: tuple[int, ...] = field(init=False, repr=False)
    consumers: tuple[tuple[int, ...], ...] = field(init=False, repr=False)

    def __post_init__(self):
        last = list(range(len(self.nodes)))
        users: list[list[int]] = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes):
            for i in node.inputs:
                last[i] = max(last[i], k)
                if k not in users[i]:
                    users[i].append(k)
        last[self.output] = len(self.nodes)
        object.__setattr__(self, "last_use", tuple(last))
        object.__setattr__(self, "consumers", tuple(tuple(u) for u in users))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output].shape

    def needs_bounds(self) -> set[int]:
        """Nodes whose concrete bounds the relaxations read: the inputs of nonlinear operators."""
        return {i for n in self.nodes if isinstance(n.op, Nonlinear) for i in n.inputs}

    def nonlinear_consumers(self, k: int) -> tuple[int, ...]:
        """The nonlinear nodes reading node k (whose relaxations depend on k's bounds)."""
        return tuple(j for j in self.consumers[k] if isinstance(self.nodes[j].op, Nonlinear))

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the graph on a batch ``x`` of shape [B, *input_shape]; values are freed after last use."""
        return self._run(x, None)

    def with_batch_statistics(self, x: Tensor) -> tuple[Tensor, Graph]:
        """Training-mode evaluation: operators normalising by batch statistics (a live graph's BatchNorm)
        use those of the batch ``x``. Returns the output and the graph with each such operator replaced by
        the affine map of this batch's statistics (for bounds consistent with the output)."""
        nodes = list(self.nodes)
        return self._run(x, nodes), Graph(tuple(nodes), self.output, self.batched)

    def _run(self, x: Tensor, specialised: list[Node] | None) -> Tensor:
        values: dict[int, Tensor] = {0: x}
        for k, node in enumerate(self.nodes[1 : self.output + 1], start=1):
            inputs = [values[i] for i in node.inputs]
            batch_map = getattr(node.op, "with_batch_statistics", None)
            if specialised is not None and batch_map is not None:
                values[k], op = batch_map(*inputs)
                specialised[k] = replace(node, op=op)
            else:
                values[k] = node.op.forward(*inputs)
            for i in set(node.inputs):
                if self.last_use[i] <= k:
                    del values[i]
        return values[self.output]

    def to(self, device=None, dtype=None) -> Graph:
        nodes = tuple(n if n.op is None else replace(n, op=n.op.to(device, dtype)) for n in self.nodes)
        return Graph(nodes, self.output, self.batched)


def identity_coefficients(shape: tuple[int, ...], batch: int, like: Tensor) -> Tensor:
    """[n, batch, *shape] with row j the indicator of flat position j, for every batch element."""
    n = int(torch.Size(shape).numel())
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return eye.reshape(n, 1, *shape).expand(n, batch, *shape)


def prune(nodes: list[Node], output: int, batched: bool) -> Graph:
    """Keep the ancestors of the output only, renumbered in the same (topological) order."""
    keep = {output}
    for k in range(output, -1, -1):
        if k in keep:
            keep.update(nodes[k].inputs)
    keep.add(0)
    order = sorted(keep)
    new_index = {old: new for new, old in enumerate(order)}
    kept = tuple(Node(nodes[k].name, nodes[k].op, tuple(new_index[i] for i in nodes[k].inputs), nodes[k].shape)
                 for k in order)  # fmt: skip
    return Graph(kept, new_index[output], batched)

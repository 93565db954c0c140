"""The internal graph: a topologically ordered list of nodes, node 0 being the (single) input.

Shapes are per sample: every tensor flowing through the graph carries one extra leading batch dimension.

A model with several inputs has one flat input node 0 of shape ``(n,)``, the concatenation of its inputs
flattened row-major in order (the VNN-LIB convention); each input is then a node that picks its range of
node 0 and reshapes it (an exact data movement, so IBP stays exact). ``Graph.inputs`` records the names
and per-sample shapes of those inputs; the passes see one input and know nothing of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from verifier.errors import InputError
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
    inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (name, per-sample shape) per model input, when
    # there are several (node 0 is then their flat concatenation); empty for a single input (node 0 itself)
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
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shape of each model input, in order (one entry, ``input_shape``, for a single input)."""
        return tuple(shape for _, shape in self.inputs) if self.inputs else (self.input_shape,)

    def join_inputs(self, x: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """The engine's input from a model's inputs: a tensor is returned as it is; a tuple ``(x_1, ...)``
        of tensors [B, *input_shapes[i]] becomes their row-major flat concatenation [B, n]."""
        if isinstance(x, Tensor):
            return x
        shapes = self.input_shapes
        if len(x) != len(shapes):
            raise InputError(f"{len(x)} input tensors given, the model has {len(shapes)}")
        for i, (t, shape) in enumerate(zip(x, shapes)):
            if t.dim() == 0 or tuple(t.shape[1:]) != shape or t.shape[0] != x[0].shape[0]:
                raise InputError(
                    f"input {i} has shape {tuple(t.shape)}; expected ({x[0].shape[0]}, *{shape})"
                )
        joined = torch.cat([t.reshape(t.shape[0], -1) for t in x], dim=1)
        return joined if self.inputs else joined.reshape(joined.shape[0], *self.input_shape)

    def split_input(self, x: Tensor) -> tuple[Tensor, ...]:
        """The inverse of ``join_inputs``: the engine's input [B, *input_shape] cut into the model's inputs,
        each [B, *input_shapes[i]]."""
        flat = x.reshape(x.shape[0], -1)
        sizes = [int(torch.Size(shape).numel()) for shape in self.input_shapes]
        pieces = torch.split(flat, sizes, dim=1)
        return tuple(p.reshape(x.shape[0], *shape) for p, shape in zip(pieces, self.input_shapes))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[self.output].shape

    def needs_bounds(self) -> set[int]:
        """Nodes whose concrete bounds the relaxations read: the inputs of nonlinear operators."""
        return {i for n in self.nodes if isinstance(n.op, Nonlinear) for i in n.inputs}

    def nonlinear_consumers(self, k: int) -> tuple[int, ...]:
        """The nonlinear nodes reading node k (whose relaxations depend on k's bounds)."""
        return tuple(j for j in self.consumers[k] if isinstance(self.nodes[j].op, Nonlinear))

    def forward(self, x: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Evaluate the graph on a batch ``x`` of shape [B, *input_shape], or on a tuple of the model's inputs
        (see ``join_inputs``); values are freed after last use."""
        return self._run(self.join_inputs(x), None)

    def with_batch_statistics(self, x: Tensor) -> tuple[Tensor, Graph]:
        """Training-mode evaluation: operators normalising by batch statistics (a live graph's BatchNorm)
        use those of the batch ``x``. Returns the output and the graph with each such operator replaced by
        the affine map of this batch's statistics (for bounds consistent with the output)."""
        nodes = list(self.nodes)
        return self._run(self.join_inputs(x), nodes), replace(self, nodes=tuple(nodes))

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
        return replace(self, nodes=nodes)


def identity_coefficients(shape: tuple[int, ...], batch: int, like: Tensor) -> Tensor:
    """[n, batch, *shape] with row j the indicator of flat position j, for every batch element."""
    n = int(torch.Size(shape).numel())
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return eye.reshape(n, 1, *shape).expand(n, batch, *shape)


def prune(nodes: list[Node], output: int, batched: bool,
          inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> Graph:  # fmt: skip
    """Keep the ancestors of the output only, renumbered in the same (topological) order (node 0, the
    input, always stays: with several inputs it holds all of them, used or not)."""
    keep = {output}
    for k in range(output, -1, -1):
        if k in keep:
            keep.update(nodes[k].inputs)
    keep.add(0)
    order = sorted(keep)
    new_index = {old: new for new, old in enumerate(order)}
    kept = tuple(Node(nodes[k].name, nodes[k].op, tuple(new_index[i] for i in nodes[k].inputs), nodes[k].shape)
                 for k in order)  # fmt: skip
    return Graph(kept, new_index[output], batched, inputs)

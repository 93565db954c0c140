"""Linear maps of the graph and certified upper bounds of their spectral norms.

A :class:`LinearMap` is a chain of affine operators of the graph (``J = J_m ... J_1``, offsets dropped)
applied through the operators' own ``linear`` and ``transpose``; nothing is special-cased per operator, so
Linear, Conv, BatchNorm, pooling and every data movement are covered alike.

``spectral_norm_bound`` returns ``u >= ||J||_2``:

* small maps (the smaller side at most ``DENSE_SIDE``): the Gram matrix ``J^T J`` (or ``J J^T``) built
  column by column in float64 and its largest eigenvalue (``eigvalsh``): exact up to float64 rounding;
* larger maps: Gram iteration (Delattre et al. 2023) on the operator: for every ``t``,
  ``||J||_2^(4t) = lambda_max((J^T J)^(2t)) <= trace((J^T J)^(2t)) = sum_i ||(J^T J)^t e_i||^2``, so
  ``(sum_i ||(J^T J)^t e_i||^2)^(1 / 4t)`` is an upper bound for every ``t``, which falls towards ``||J||``
  as ``t`` grows (by at most a factor ``n^(1 / 4t)`` above it). Power iteration would only approach the
  norm from below; this is why it is not used for the bound.

Both results are multiplied by ``1 + ROUNDING_ALLOWANCE`` to cover float64 rounding (relative errors of
order ``n 1e-16``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from verifier.graph.graph import Graph

DENSE_SIDE = 4096  # Gram matrices up to 4096^2 float64 (128 MB)
GRAM_STEPS = 4  # t = 1..4: the last bound is within n^(1/16) of the norm
ROUNDING_ALLOWANCE = 1e-6
CHUNK = 256  # basis vectors pushed through a map at once


@dataclass(frozen=True)
class LinearMap:
    """``x -> J x`` between flat spaces: ``matvec`` takes [N, n_in] and gives [N, n_out]; ``rmatvec`` is
    ``J^T``."""

    matvec: Callable[[Tensor], Tensor]
    rmatvec: Callable[[Tensor], Tensor]
    n_in: int
    n_out: int

    def dense(self) -> Tensor:
        """``J`` as a [n_out, n_in] float64 matrix (columns ``J e_i``)."""
        eye = torch.eye(self.n_in, dtype=torch.float64)
        return torch.cat([self.matvec(eye[i : i + CHUNK]) for i in range(0, self.n_in, CHUNK)]).T

    def compose(self, rows: Tensor) -> Tensor:
        """``R J`` for rows R [r, n_out]: [r, n_in]."""
        return self.rmatvec(rows.to(torch.float64))


def chain_map(graph: Graph, steps: list[tuple[int, int]]) -> LinearMap:
    """The linear part of the affine nodes ``steps`` = [(node, input position), ...] applied in order, each
    node reading the previous one (the first reads its input at that position)."""
    shapes = [graph.nodes[graph.nodes[k].inputs[i]].shape for k, i in steps[:1]]
    shapes += [graph.nodes[k].shape for k, _ in steps]
    ops = [graph.nodes[k].op for k, _ in steps]

    def matvec(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *shapes[0])
        for op, (_, i) in zip(ops, steps):
            x = op.linear(i, x)
        return x.reshape(x.shape[0], -1)

    def rmatvec(a: Tensor) -> Tensor:
        a = a.reshape(a.shape[0], *shapes[-1])
        for j in range(len(ops) - 1, -1, -1):
            a = ops[j].transpose(steps[j][1], a, shapes[j])
        return a.reshape(a.shape[0], -1)

    size = lambda s: int(torch.Size(s).numel())
    return LinearMap(matvec, rmatvec, size(shapes[0]), size(shapes[-1]))


def identity_map(n: int) -> LinearMap:
    same = lambda x: x
    return LinearMap(same, same, n, n)


def spectral_norm_bound(m: LinearMap) -> float:
    """``u >= ||J||_2`` (see the module docstring: exact Gram eigenvalue, or Gram iteration)."""
    if min(m.n_in, m.n_out) <= DENSE_SIDE:
        value = float(gram(m).max().clamp(min=0).sqrt())
    else:
        value = _gram_iteration(m)
    return value * (1 + ROUNDING_ALLOWANCE)


def gram(m: LinearMap) -> Tensor:
    """Eigenvalues of the Gram matrix on the smaller side (``J^T J`` or ``J J^T``, same nonzero spectrum)."""
    inner = m.n_in <= m.n_out
    n = m.n_in if inner else m.n_out
    there, back = (m.matvec, m.rmatvec) if inner else (m.rmatvec, m.matvec)
    eye = torch.eye(n, dtype=torch.float64)
    g = torch.cat([back(there(eye[i : i + CHUNK])) for i in range(0, n, CHUNK)])
    return torch.linalg.eigvalsh((g + g.T) / 2)  # symmetric up to rounding


def _gram_iteration(m: LinearMap) -> float:
    inner = m.n_in <= m.n_out
    n = m.n_in if inner else m.n_out
    there, back = (m.matvec, m.rmatvec) if inner else (m.rmatvec, m.matvec)
    traces = torch.zeros(GRAM_STEPS, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        v = torch.eye(n, dtype=torch.float64)[start : start + CHUNK]
        for t in range(GRAM_STEPS):
            v = back(there(v))  # (J^T J)^(t+1) e_i
            traces[t] += v.square().sum()
    powers = 4.0 * torch.arange(1, GRAM_STEPS + 1, dtype=torch.float64)
    return float((traces ** (1 / powers)).min())


def float64_graph(graph: Graph) -> Graph:
    """A float64 copy of the graph's operators, parameters included (detached): the estimators compute in
    float64 so that their rounding stays within ``ROUNDING_ALLOWANCE``."""
    graph = graph.to(dtype=torch.float64)
    nodes = []
    for node in graph.nodes:
        changes = {}
        for f in dataclasses.fields(node.op) if node.op is not None else ():
            v = getattr(node.op, f.name)
            if isinstance(v, Tensor) and v.is_floating_point() and v.dtype != torch.float64:
                changes[f.name] = v.detach().to(torch.float64)
            elif isinstance(v, nn.Parameter):
                changes[f.name] = v.detach().clone()
            elif isinstance(v, nn.Module):
                changes[f.name] = copy.deepcopy(v).to(torch.float64).requires_grad_(False)
        nodes.append(
            dataclasses.replace(node, op=dataclasses.replace(node.op, **changes)) if changes else node
        )
    return dataclasses.replace(graph, nodes=tuple(nodes))

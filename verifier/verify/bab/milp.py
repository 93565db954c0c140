"""The mixed-integer linear program of a network on a box (big-M, Tjeng et al. 2019).

A variable per neuron of every node up to the output, equalities for the affine nodes, and per ReLU neuron
crossing zero an indicator ``d`` in {0, 1} with ``y >= h``, ``y >= 0``, ``y <= u d``, ``y <= h - l (1 - d)``
on its input's bounds ``[l, u]`` (stable neurons: ``y = h`` or ``y = 0``). Every point of the box, with
``d = 1[h > 0]``, is a solution, so an inequality valid for every solution holds on the whole box.

The encoding is sound: its bounds are the engine's sound bounds (the box, the roots' intermediate bounds,
and interval arithmetic in float64 elsewhere), the weights the graph's own float32 values in float64, so
every point of the box and its activations satisfy it (entries a solver would drop, ``TINY``, widen their
rows instead). ``mip_cuts`` hands it to HiGHS for cutting planes; ``cones`` names the rows a cut's proof
(``cut_proofs``) may need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# scipy.sparse is imported where it is used: ~0.1 s that every verify-model start would otherwise pay
from verifier.graph.graph import Graph
from verifier.ops.activations import ReLU
from verifier.ops.base import Affine

# matrix entries HiGHS ignores (its ``small_matrix_value``): ``encode`` moves them into the rows' sides
TINY = 1e-9
# the largest affine map (inputs x outputs) written out as a matrix; larger graphs get no cuts
MAX_ENTRIES = 3 * 10**7
# the most rows of a cut's first relaxation that ``cones`` adds (its LP must stay small: a proof solves
# up to 64 of them)
CONE_ROWS = 2000
VALUE, INDICATOR = 0, 1


@dataclass(frozen=True)
class Encoding:
    """The MILP of a graph over one box: variables ``lower <= v <= upper`` (``integer`` marks the
    indicators), rows ``row_lower <= matrix v <= row_upper``; ``owner`` [n_vars, 3] names each variable
    (node, VALUE or INDICATOR, flat position); ``output`` the output node's variables."""

    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray
    matrix: object  # scipy.sparse.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    owner: np.ndarray
    output: np.ndarray


def encodable(graph: Graph) -> bool:
    """Whether every node is an affine map of one input or a ReLU (the networks ``encode`` takes), and
    every affine map small enough to write out."""
    for node in graph.nodes[1 : graph.output + 1]:
        if isinstance(node.op, ReLU):
            ok = not node.op.negative_slope
        else:
            size = numel(graph.nodes[node.inputs[0]].shape) * numel(node.shape)
            ok = isinstance(node.op, Affine) and len(node.inputs) == 1 and size <= MAX_ENTRIES
        if not ok:
            return False
    return True


def encode(graph: Graph, box_lo: np.ndarray, box_hi: np.ndarray,
           bounds: dict[int, tuple[np.ndarray, np.ndarray]]) -> Encoding:  # fmt: skip
    """The MILP of ``graph`` (``encodable``) on the box ``[box_lo, box_hi]`` (flat), with ``bounds`` (flat,
    per node) wherever the engine has them."""
    import scipy.sparse as sp

    graph = graph.to(dtype=torch.float64)
    program = _Program()
    lo, hi = np.asarray(box_lo, np.float64), np.asarray(box_hi, np.float64)
    var = {0: program.block(lo, hi, 0, VALUE)}
    span = {0: (lo, hi)}
    for j in range(1, graph.output + 1):
        node = graph.nodes[j]
        src = node.inputs[0]
        l_in, u_in = span[src]
        if isinstance(node.op, ReLU):
            var[j], span[j] = _relu(program, j, var[src], l_in, u_in)
            continue
        jac, offset = _affine(node.op, graph.nodes[src].shape, node.shape)
        centre, radius = jac @ ((l_in + u_in) / 2) + offset, abs(jac) @ ((u_in - l_in) / 2)
        lo, hi = _widen(centre - radius, centre + radius)
        if j in bounds:
            lo, hi = np.maximum(lo, bounds[j][0]), np.minimum(hi, bounds[j][1])
        var[j], span[j] = program.block(lo, hi, j, VALUE), (lo, hi)
        jac, slack = _without_tiny(jac, np.maximum(abs(l_in), abs(u_in)))
        program.add([(sp.identity(len(lo)), var[j]), (-jac, var[src])], offset - slack, offset + slack)
    return program.finish(var[graph.output])


def _without_tiny(jac, size: np.ndarray) -> tuple[object, np.ndarray]:
    """The sparse matrix ``jac`` without its entries of magnitude at most ``TINY``, and per row what they
    can add up to on inputs of magnitude at most ``size``: the equality ``z = jac v + b`` becomes the interval
    ``z - jac' v in [b - slack, b + slack]``, which every point still satisfies. (HiGHS drops such entries
    from its model itself, which would make its cuts those of a slightly different network.)"""
    jac = jac.tocsr(copy=True)
    tiny = abs(jac.data) <= TINY
    if not tiny.any():
        return jac, np.zeros(jac.shape[0])
    small = jac.copy()
    small.data = np.where(tiny, small.data, 0.0)
    jac.data[tiny] = 0.0
    jac.eliminate_zeros()
    return jac, (abs(small) @ size) * (1 + 1e-6)  # (the margin: against the sum's rounding)


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds in float64 widened against their own rounding."""
    return lo - 1e-9 * (1 + abs(lo)), hi + 1e-9 * (1 + abs(hi))


def _affine(op: Affine, in_shape, out_shape) -> tuple[object, np.ndarray]:
    """The operator's matrix (sparse, float64) and offset (flat)."""
    import scipy.sparse as sp

    n_in = numel(in_shape)
    with torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
        cols = op.linear(0, eye).reshape(n_in, -1)
        offset = op.offset()
        offset = np.zeros(numel(out_shape)) if offset is None else offset.expand(1, *out_shape).reshape(-1)
    return sp.csr_matrix(cols.T.numpy()), np.asarray(offset, np.float64)


def _relu(program: _Program, j: int, h: np.ndarray, l: np.ndarray, u: np.ndarray):
    """ReLU node j's variables and rows on input variables ``h`` with bounds ``[l, u]``."""
    import scipy.sparse as sp

    y = program.block(np.maximum(l, 0), np.maximum(u, 0), j, VALUE)
    active, crossing = np.flatnonzero(l >= 0), np.flatnonzero((l < 0) & (u > 0))
    if len(active):
        eye = sp.identity(len(active))
        program.add([(eye, y[active]), (-eye, h[active])], np.zeros(len(active)), np.zeros(len(active)))
    m = len(crossing)
    if m:
        d = program.block(np.zeros(m), np.ones(m), j, INDICATOR, positions=crossing, integer=True)
        eye, lc, uc = sp.identity(m), l[crossing], u[crossing]
        inf, zero = np.full(m, np.inf), np.zeros(m)
        program.add([(eye, y[crossing]), (-eye, h[crossing])], zero, inf)  # y >= h
        program.add([(eye, y[crossing]), (sp.diags(-uc), d)], -inf, zero)  # y <= u d
        program.add([(eye, y[crossing]), (-eye, h[crossing]), (sp.diags(-lc), d)], -inf, -lc)
    return y, (np.maximum(l, 0), np.maximum(u, 0))


class _Program:
    """Variables allocated block by block and sparse rows over them."""

    def __init__(self):
        self.lower, self.upper, self.integer, self.owner = [], [], [], []
        self.pieces, self.row_lower, self.row_upper = [], [], []
        self.rows = 0

    def block(self, lower, upper, node: int, kind: int, positions=None, integer: bool = False) -> np.ndarray:
        start = sum(len(b) for b in self.lower)
        n = len(lower)
        self.lower.append(np.asarray(lower, np.float64))
        self.upper.append(np.asarray(upper, np.float64))
        self.integer.append(np.full(n, integer))
        pos = np.arange(n) if positions is None else positions
        self.owner.append(np.stack([np.full(n, node), np.full(n, kind), pos], 1))
        return np.arange(start, start + n)

    def add(self, terms, lower, upper) -> None:
        """Rows ``lower <= sum_k M_k v[idx_k] <= upper`` for ``terms = [(M_k, idx_k)]``."""
        import scipy.sparse as sp

        for matrix, idx in terms:
            coo = sp.coo_matrix(matrix)
            self.pieces.append((coo.row + self.rows, idx[coo.col], coo.data))
        self.row_lower.append(np.asarray(lower, np.float64))
        self.row_upper.append(np.asarray(upper, np.float64))
        self.rows += len(lower)

    def finish(self, output: np.ndarray) -> Encoding:
        import scipy.sparse as sp

        rows, cols, vals = (np.concatenate(p) for p in zip(*self.pieces))
        lower = np.concatenate(self.lower)
        matrix = sp.csc_matrix((vals, (rows, cols)), shape=(self.rows, len(lower)))
        return Encoding(lower, np.concatenate(self.upper), np.concatenate(self.integer), matrix,
                        np.concatenate(self.row_lower), np.concatenate(self.row_upper),
                        np.concatenate(self.owner), output)  # fmt: skip


def cones(encoding: Encoding, program, limit: int = CONE_ROWS):
    """``cone(columns)``: the rows that define the variables ``columns`` (an affine node's equalities, a
    ReLU's rows for its output and indicator: the rows whose latest node is the variable's), then those that
    define the variables of these, and so on down to the input, while the rows stay within ``limit``. A cut
    HiGHS found by probing an indicator (fixing it, propagating through the layers below) holds on the cone of
    its variables, which the rows that hold them alone do not show."""
    import scipy.sparse as sp

    node = encoding.owner[:, 0]
    coo = sp.coo_matrix(program)
    own = _latest(encoding, program)[coo.row] == node[coo.col]
    defines = sp.csr_matrix((np.ones(own.sum()), (coo.col[own], coo.row[own])), shape=program.shape[::-1])
    by_row = sp.csr_matrix(program)

    def cone(columns: np.ndarray) -> np.ndarray:
        rows, seen, frontier = np.zeros(0, dtype=np.int64), set(columns.tolist()), columns
        while len(frontier):
            new = np.setdiff1d(defines[frontier].indices, rows)
            if not len(new) or len(rows) + len(new) > limit:
                break
            rows = np.union1d(rows, new)
            frontier = np.array(sorted(set(by_row[new].indices.tolist()) - seen), dtype=np.int64)
            seen.update(frontier.tolist())
        return rows

    return cone


def _latest(encoding: Encoding, program) -> np.ndarray:
    """[rows] the latest node whose variables each row of ``program`` holds."""
    import scipy.sparse as sp

    coo = sp.coo_matrix(program)
    latest = np.full(program.shape[0], -1)
    np.maximum.at(latest, coo.row, encoding.owner[coo.col, 0])
    return latest

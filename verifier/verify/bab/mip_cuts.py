"""Cutting planes for ReLU branch and bound from a MILP solver's root node (GCP-CROWN's MIP cuts).

The network on a root's box is a mixed-integer linear program (big-M, Tjeng et al. 2019): a variable per
neuron of every node up to the output, equalities for the affine nodes, and per ReLU neuron crossing zero an
indicator ``d`` in {0, 1} with ``y >= h``, ``y >= 0``, ``y <= u d``, ``y <= h - l (1 - d)`` on its input's
bounds ``[l, u]`` (stable neurons: ``y = h`` or ``y = 0``). Every point of the box, with ``d = 1[h > 0]``,
is a solution, so an inequality valid for every solution holds on the whole root: a cut. HiGHS, asked to
minimise a spec row, strengthens its LP relaxation at the root with such cuts (mixed-integer rounding,
implied bounds, flow covers, ...); the separation rounds' cuts come back through its cut-pool callback and
enter every domain's bound with their own multipliers (``engine.cuts``), as abcrown's CPLEX cuts do. The
solver runs in a child process beside the search (``CutJob``); its cuts reach the search once it ends.

The encoding is sound: its bounds are the engine's sound bounds (the box, the roots' intermediate bounds,
and interval arithmetic in float64 elsewhere), the weights the graph's own float32 values in float64, so every
point of the root and its activations satisfy it (entries HiGHS would drop, ``TINY``, widen their rows
instead). Against the rounding of HiGHS's derivations (tolerances of about 1e-6), each cut's right-hand
side is relaxed by ``SLACK`` times its scale (``1 + |rhs| + sum |a_i| max|v_i|``).

HiGHS's cut pool is not trusted: the rows that HiGHS 1.15.1's cut-pool callback returns are not all valid
for the MILP. On random 5-input nets of two hidden layers (``tests.exact.nets``, ``HARD`` sizes, seeds 0-39),
HiGHS's root cuts for seeds 10 and 25 exclude points of the box below the cutoff, by 0.61 and 0.80: at seed
10 the MILP optimum itself, which HiGHS's own search finds (-0.3072), and with no cutoff at all as well; the
MILP with them added has minimum -0.206 at seed 10 (-0.307 without). HiGHS holds the same model (its matrix,
bounds and integrality read back equal), and neither turning off symmetry detection, scaling or node
separation nor ageing changes the cuts; highspy 1.16.0 keeps seed 25's minimiser but not seed 10's. HiGHS's
tracker holds bugs of this kind (invalid cuts that cut off optima: ERGO-Code/HiGHS issues 3170 and 3273,
closed, and 2664, open). So every cut is proven before it is used (``proven_rows``, ``cut_proofs``: on a
relaxation of the MILP, with bounds of our own arithmetic), and the ones that are not are dropped."""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import verifier

# scipy.sparse is imported where it is used: ~0.1 s that every verify-model start would otherwise pay
from verifier.engine import cuts as cutting
from verifier.engine.cuts import Cuts
from verifier.engine.params import Params, nonnegative
from verifier.graph.graph import Graph
from verifier.ops.activations import ReLU
from verifier.ops.base import Affine
from verifier.verify.bab import cut_proofs

# relative slack of a cut's right-hand side against the solver's rounding (module docstring)
SLACK = 1e-5
# relative margin above a row's threshold at which HiGHS's search is cut off (``start``): far above its
# tolerances (1e-6), so that no point at the threshold is beyond the cutoff
CUTOFF = 1e-4
# matrix entries HiGHS ignores (its ``small_matrix_value``): ``encode`` moves them into the rows' sides
TINY = 1e-9
# the largest affine map (inputs x outputs) written out as a matrix; larger graphs get no cuts
MAX_ENTRIES = 3 * 10**7
# the most rows of a cut's first relaxation that ``_cones`` adds (its LP must stay small: a proof solves
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


class RootCuts:
    """The cuts of one search's single root, from its first roots to its refined ones (``ReluSplit.roots``):
    ``start`` the job once, ``take`` its cuts into the refining root's state and parameters as soon as they
    come, ``close`` it when the search ends. A pickled copy has no job: a child process belongs to the
    process that started it (``shards`` sends the brancher to its workers)."""

    def __init__(self):
        self.cuts: Cuts | None = None
        self.seconds: float | None = None  # what HiGHS's root took, if it ended before the cuts were taken
        self._job: CutJob | None = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_job": None}

    @property
    def running(self) -> bool:
        return self._job is not None

    def remaining(self) -> float:
        """Seconds until the job's own time limit (0 without a job)."""
        return 0.0 if self._job is None else max(self._job.until - time.monotonic(), 0.0)

    def start(self, graph: Graph, state, objective: np.ndarray, threshold: float, seconds: float) -> None:
        """A ``CutJob`` on the MILP of the root ``state`` (its first domain: box and bounds), minimising
        ``objective . f`` cut off just above ``threshold`` (by ``CUTOFF``), so that its cuts hold wherever
        that row is at or below the threshold; nothing if one runs already, or without HiGHS or an
        encoding."""
        if self._job is not None or not (available() and encodable(graph)):
            return
        lo, hi = (t[0].detach().reshape(-1).double().cpu().numpy() for t in state.region.box())
        bounds = {
            k: tuple(t[0].detach().reshape(-1).double().cpu().numpy() for t in b)
            for k, b in state.bounds.items()
        }
        cutoff = threshold + CUTOFF * (1 + abs(threshold))
        self._job = CutJob(graph.to(device="cpu"), lo, hi, bounds, objective, cutoff, seconds)

    def take(self, state, params: Params, lower: Tensor, wait: float = 0.0) -> None:
        """The job's cuts, once it has answered (waiting ``wait`` seconds at most), into ``state`` and
        ``params``, with multipliers from 0 for each bound of ``lower`` [R, B]."""
        if self._job is None or self._job.answered:
            return
        self.cuts = state.cuts = self._job.cuts(state.region.box()[0], wait)
        self.seconds = self._job.seconds
        if self.cuts is not None:
            params.tensors[cutting.KEY] = lower.new_zeros(*lower.shape, self.cuts.count).requires_grad_(True)
            params.projections[cutting.KEY] = nonnegative

    def close(self) -> None:
        """Stop the job, if one is running (a search that ends before refining does not need it)."""
        if self._job is not None:
            self._job.stop()
            self._job = None


def encodable(graph: Graph) -> bool:
    """Whether every node is an affine map of one input or a ReLU (the networks ``encode`` takes), and
    every affine map small enough to write out."""
    for node in graph.nodes[1 : graph.output + 1]:
        if isinstance(node.op, ReLU):
            ok = not node.op.negative_slope
        else:
            size = _numel(graph.nodes[node.inputs[0]].shape) * _numel(node.shape)
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


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds in float64 widened against their own rounding."""
    return lo - 1e-9 * (1 + abs(lo)), hi + 1e-9 * (1 + abs(hi))


def _affine(op: Affine, in_shape, out_shape) -> tuple[object, np.ndarray]:
    """The operator's matrix (sparse, float64) and offset (flat)."""
    import scipy.sparse as sp

    n_in = _numel(in_shape)
    with torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
        cols = op.linear(0, eye).reshape(n_in, -1)
        offset = op.offset()
        offset = np.zeros(_numel(out_shape)) if offset is None else offset.expand(1, *out_shape).reshape(-1)
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


def one_sided(encoding: Encoding, matrix, lower: np.ndarray, upper: np.ndarray, slack: float):
    """The rows ``lower <= matrix v <= upper`` as cuts ``a v <= rhs`` (sparse ``a``), each finite side
    one, its right-hand side relaxed by ``slack`` times its scale; with the row each came from."""
    import scipy.sparse as sp

    matrix = sp.csr_matrix(matrix)
    below, above = np.isfinite(upper), np.isfinite(lower)
    a = sp.vstack([matrix[below], -matrix[above]]).tocsr()
    rhs = np.concatenate([upper[below], -lower[above]])
    size = np.maximum(abs(encoding.lower), abs(encoding.upper))
    source = np.concatenate([np.flatnonzero(below), np.flatnonzero(above)])
    return a, rhs + slack * (1 + abs(rhs) + abs(a) @ size), source


def proven_rows(encoding: Encoding, matrix, lower: np.ndarray, upper: np.ndarray, objective: np.ndarray,
                cutoff: float, seconds: float):  # fmt: skip
    """The rows ``lower <= matrix v <= upper`` whose every finite side ``cut_proofs`` proves on the
    encoding's MILP where ``objective . v[output] <= cutoff`` within ``seconds``, with half the slack
    ``to_cuts`` gives them: the other half covers the rounding of the cuts to the search's dtype (float32's
    relative 6e-8 of a side's scale, far below ``SLACK / 2``)."""
    import scipy.sparse as sp

    a, rhs, source = one_sided(encoding, matrix, lower, upper, SLACK / 2)
    row = np.zeros((1, len(encoding.lower)))
    row[0, encoding.output] = objective
    program = sp.vstack([encoding.matrix, sp.csr_matrix(row)]).tocsr()
    sides = np.append(encoding.row_lower, -np.inf), np.append(encoding.row_upper, cutoff)
    cutoff_row, cone = np.array([program.shape[0] - 1]), _cones(encoding, program)
    bounds = encoding.lower, encoding.upper, encoding.integer
    ok = cut_proofs.proven(a, rhs, program, *sides, *bounds, seconds, start=cutoff_row, cone=cone)
    keep = np.ones(len(lower), dtype=bool)
    keep[source[~ok]] = False
    matrix = sp.csr_matrix(matrix)[keep]
    return matrix, lower[keep], upper[keep]


def _cones(encoding: Encoding, program, limit: int = CONE_ROWS):
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


def to_cuts(encoding: Encoding, graph: Graph, matrix, lower: np.ndarray, upper: np.ndarray,
            dtype: torch.dtype = torch.float32, row: np.ndarray | None = None,
            cutoff: float = float("inf"), device=None) -> Cuts | None:  # fmt: skip
    """The engine's cuts (``a v <= rhs``) of rows ``lower <= matrix v <= upper`` over the encoding's
    variables, each right-hand side relaxed by ``SLACK`` times its scale, for the spec row ``row`` alone
    if given, valid where it is at most ``cutoff`` (``engine.cuts``); None for no finite side."""
    a, rhs, _ = one_sided(encoding, matrix, lower, upper, SLACK)
    if not len(rhs):
        return None
    coo = a.tocoo()
    owner = encoding.owner[coo.col]
    parts: tuple[dict[int, Tensor], dict[int, Tensor]] = ({}, {})
    for node, kind in sorted({(int(n), int(k)) for n, k, _ in owner}):
        pick = (owner[:, 0] == node) & (owner[:, 1] == kind)
        index = torch.as_tensor(np.stack([owner[pick, 2], coo.row[pick]]))
        shape = (_numel(graph.nodes[node].shape), len(rhs))
        values = torch.as_tensor(coo.data[pick], dtype=dtype)
        matrix = torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce()
        parts[kind][node] = matrix.to(device)
    tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)
    return Cuts(
        parts[VALUE], parts[INDICATOR], tensor(rhs), None if row is None else tensor(row), float(cutoff)
    )


# ------------------------------------------------------------------------------------------------ solver


def available() -> bool:
    """Whether HiGHS's Python interface (``highspy``, the optional ``cuts`` extra) is installed."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def root_cuts(encoding: Encoding, objective: np.ndarray, cutoff: float, seconds: float):
    """HiGHS's cuts at the root of ``min objective . v[output]`` with the objective cutoff ``cutoff``:
    ``(matrix, lower, upper)`` (CSR over the encoding's variables), valid on the solutions whose objective
    is at most ``cutoff`` (HiGHS tightens with the cutoff, and with any solution it finds, after which its
    cuts need not hold even at that solution: measured on a small CNN, cuts taken after HiGHS had found
    the optimum cut it off by 2.9). None when the solver ends before its root separation does (time, or a
    root that needs none), or has found a solution by then (one at or below the cutoff: the cuts may
    exclude it). No optimality gaps (HiGHS would prune solutions within them of the cutoff), single-threaded,
    presolve off (its cuts would be over the presolved model's variables), no primal heuristics (their
    time is not the cuts')."""
    import highspy
    import scipy.sparse as sp

    h = highspy.Highs()
    for key, value in [("output_flag", False), ("presolve", "off"), ("threads", 1), ("time_limit", seconds),
                       ("objective_bound", cutoff), ("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0),
                       ("mip_heuristic_effort", 0.0), ("mip_heuristic_run_feasibility_jump", False),
                       ("mip_heuristic_run_rins", False), ("mip_heuristic_run_rens", False),
                       ("mip_heuristic_run_root_reduced_cost", False)]:  # fmt: skip
        h.setOptionValue(key, value)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(encoding.lower), len(encoding.row_lower)
    cost = np.zeros(lp.num_col_)
    cost[encoding.output] = objective
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, encoding.lower, encoding.upper
    lp.row_lower_, lp.row_upper_ = encoding.row_lower, encoding.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    m = encoding.matrix
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.indptr, m.indices, m.data
    kinds = highspy.HighsVarType
    lp.integrality_ = [kinds.kInteger if i else kinds.kContinuous for i in encoding.integer]
    h.passModel(lp)
    found = []
    pool, interrupt = (
        highspy.cb.HighsCallbackType.kCallbackMipGetCutPool,
        highspy.cb.HighsCallbackType.kCallbackMipInterrupt,
    )

    def callback(kind, message, out, into, user):
        if kind == pool and not found:
            if out.mip_primal_bound < cutoff:  # a solution (without one, HiGHS reports the cutoff)
                found.append(None)
                return
            starts = np.array(out.cutpool_start)
            found.append((
                sp.csr_matrix((np.array(out.cutpool_value), np.array(out.cutpool_index), starts),
                              shape=(out.cutpool_num_cut, out.cutpool_num_col)),
                np.array(out.cutpool_lower), np.array(out.cutpool_upper)))  # fmt: skip
        elif kind == interrupt and found:
            into.user_interrupt = 1  # the cuts are in: the rest of the search is not ours to wait for

    h.setCallback(callback, None)
    h.startCallback(pool)
    h.startCallback(interrupt)
    h.run()
    return found[0] if found else None


def serve() -> None:
    """The child's side of ``CutJob``: ``(graph, box_lo, box_hi, bounds, objective, cutoff, seconds, parent
    pid)`` pickled on stdin; ``job_cuts``'s answer and the seconds it took, pickled on stdout. It exits as
    soon as its parent is gone (a verify-model worker killed at its deadline must not leave a solver
    running)."""
    graph, lo, hi, bounds, objective, cutoff, seconds, parent = pickle.load(sys.stdin.buffer)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    start = time.monotonic()
    cuts = job_cuts(graph, lo, hi, bounds, objective, cutoff, seconds)
    pickle.dump((cuts, time.monotonic() - start), sys.stdout.buffer)
    sys.stdout.flush()


def job_cuts(graph: Graph, lo: np.ndarray, hi: np.ndarray, bounds: dict[int, tuple[np.ndarray, np.ndarray]],
             objective: np.ndarray, cutoff: float, seconds: float) -> Cuts | None:  # fmt: skip
    """What a ``CutJob`` answers: the engine's cuts (on the CPU, in float64) of the rows of ``root_cuts``'s
    pool on the MILP ``encode`` writes that ``proven_rows`` proves, all within ``seconds``; or None."""
    until = time.monotonic() + seconds
    encoding = encode(graph, lo, hi, bounds)
    found = root_cuts(encoding, objective, cutoff, max(until - time.monotonic(), 0.0))
    if found is None:
        return None
    found = proven_rows(encoding, *found, objective, cutoff, max(until - time.monotonic(), 0.0))
    return to_cuts(encoding, graph, *found, torch.float64, objective, cutoff)


class CutJob:
    """``serve`` in a child process beside the search (a fresh interpreter, as ``shards`` starts its
    workers: verify-model's own worker is a daemon process, which may not start ``multiprocessing``
    children): the MILP is written and solved there, so the search only pays for pickling the graph and
    its bounds. ``cuts()`` takes its answer, ``stop()`` ends it."""

    def __init__(self, graph: Graph, box_lo: np.ndarray, box_hi: np.ndarray,
                 bounds: dict[int, tuple[np.ndarray, np.ndarray]], objective: np.ndarray, cutoff: float,
                 seconds: float):  # fmt: skip
        code = "from verifier.verify.bab.mip_cuts import serve; serve()"
        # the child imports this very package, wherever it was imported from here
        path = os.pathsep.join([str(Path(verifier.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
        self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=os.environ | {"PYTHONPATH": path})  # fmt: skip
        task = (graph, box_lo, box_hi, bounds, objective, cutoff, seconds, os.getpid())
        self._process.stdin.write(pickle.dumps(task))
        self._process.stdin.close()
        self.until = time.monotonic() + seconds
        self.answered, self._answer = False, None
        self.seconds: float | None = None  # what the child took, once it has answered

    def cuts(self, like: Tensor, wait: float = 0.0) -> Cuts | None:
        """The child's cuts (for its objective's row alone) in ``like``'s dtype and device, or None: for
        none, or none yet within ``wait`` seconds (``answered`` tells the two apart)."""
        if not self.answered and select.select([self._process.stdout], [], [], max(wait, 0.0))[0]:
            self.answered = True
            try:
                self._answer, self.seconds = pickle.loads(self._process.stdout.read())
            except (EOFError, pickle.UnpicklingError):  # the child died without an answer
                pass
        return None if self._answer is None else self._answer.to(like.device, like.dtype)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdout.close()

"""Cutting planes for ReLU branch and bound from a MILP solver's root node (GCP-CROWN's MIP cuts).

The network on a root's box is a mixed-integer linear program (``milp``): every point of the box and its
activations solve it, so an inequality valid for every solution holds on the whole root: a cut. HiGHS,
asked to minimise a spec row, strengthens its LP relaxation at the root with such cuts (mixed-integer
rounding, implied bounds, flow covers, ...); the separation rounds' cuts come back through its cut-pool
callback and enter every domain's bound with their own multipliers (``engine.cuts``), as abcrown's CPLEX
cuts do. The solver runs in a child process beside the search (``CutJob``); its cuts reach the search once
it ends. Against the rounding of HiGHS's derivations (tolerances of about 1e-6), each cut's right-hand side
is relaxed by ``SLACK`` times its scale (``1 + |rhs| + sum |a_i| max|v_i|``).

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
from verifier.verify.bab import cut_proofs
from verifier.verify.bab.milp import INDICATOR, VALUE, Encoding, cones, encodable, encode, numel

# relative slack of a cut's right-hand side against the solver's rounding (module docstring)
SLACK = 1e-5
# relative margin above a row's threshold at which HiGHS's search is cut off (``start``): far above its
# tolerances (1e-6), so that no point at the threshold is beyond the cutoff
CUTOFF = 1e-4


class RootCuts:
    """The cuts of one search's single root, from its first roots to its refined ones (``ReluSplit.roots``):
    ``start`` the job once, ``take`` its cuts into the refining root's state and parameters as soon as they
    come, ``close`` it when the search ends. A pickled copy has no job: a child process belongs to the
    process that started it (``shards`` sends the brancher to its workers)."""

    def __init__(self):
        self.cuts: Cuts | None = None
        self.seconds: float | None = None  # what HiGHS's root took, if it ended before the cuts were taken
        self._job: CutJob | None = None
        self._threads: int | None = None  # the search's torch threads before the job took one of them

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
        self._threads = torch.get_num_threads()
        if self._threads > 1:  # the job keeps a core busy: the search gives it one of its threads
            torch.set_num_threads(self._threads - 1)

    def take(self, state, params: Params, lower: Tensor, wait: float = 0.0) -> None:
        """The job's cuts, once it has answered (waiting ``wait`` seconds at most), into ``state`` and
        ``params``, with multipliers from 0 for each bound of ``lower`` [R, B]."""
        if self._job is None or self._job.answered:
            return
        self.cuts = state.cuts = self._job.cuts(state.region.box()[0], wait)
        self.seconds = self._job.seconds
        if self._job.answered:
            self._give_back_threads()
        if self.cuts is not None:
            params.tensors[cutting.KEY] = lower.new_zeros(*lower.shape, self.cuts.count).requires_grad_(True)
            params.projections[cutting.KEY] = nonnegative

    def close(self) -> None:
        """Stop the job, if one is running (a search that ends before refining does not need it)."""
        if self._job is not None:
            self._job.stop()
            self._job = None
        self._give_back_threads()

    def _give_back_threads(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None


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
                cutoff: float, seconds: float, with_cones: bool = True):  # fmt: skip
    """The rows ``lower <= matrix v <= upper`` whose every finite side ``cut_proofs`` proves on the
    encoding's MILP where ``objective . v[output] <= cutoff`` within ``seconds``, with half the slack
    ``to_cuts`` gives them: the other half covers the rounding of the cuts to the search's dtype (float32's
    relative 6e-8 of a side's scale, far below ``SLACK / 2``). ``with_cones``: a proof whose growth
    stalls may take the cut's cone (``milp.cones``; off only to measure what the cones give)."""
    import scipy.sparse as sp

    a, rhs, source = one_sided(encoding, matrix, lower, upper, SLACK / 2)
    row = np.zeros((1, len(encoding.lower)))
    row[0, encoding.output] = objective
    program = sp.vstack([encoding.matrix, sp.csr_matrix(row)]).tocsr()
    sides = np.append(encoding.row_lower, -np.inf), np.append(encoding.row_upper, cutoff)
    cutoff_row, cone = np.array([program.shape[0] - 1]), cones(encoding, program) if with_cones else None
    bounds = encoding.lower, encoding.upper, encoding.integer
    ok = cut_proofs.proven(a, rhs, program, *sides, *bounds, seconds, start=cutoff_row, cone=cone)
    keep = np.ones(len(lower), dtype=bool)
    keep[source[~ok]] = False
    matrix = sp.csr_matrix(matrix)[keep]
    return matrix, lower[keep], upper[keep]


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
        shape = (numel(graph.nodes[node].shape), len(rhs))
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

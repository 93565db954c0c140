"""Exact cases: a random network, specification rows with their exact optima, and VNN-LIB instances whose
true margin is chosen.

A property ``c^T y <= d`` (the VNN-COMP *unsafe* set) on the network's box is ``sat`` exactly when the
minimum ``m*`` of ``c^T f(x)`` over the box is ``<= d``. With ``d = m* - margin`` the true margin is
``margin``: positive means ``unsat``, negative ``sat``. ``m*`` is the MILP optimum's attained value, which
exceeds the exact minimum by at most the solver's gap; ``write_instance`` refuses a gap that is not far below
the margin, so the expected answer is certain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.exact.milp import Optimum, minimise
from tests.exact.nets import MEDIUM, SMALL, TINY, ReluNet, random_direction, random_net

# True margins of the generated properties, relative to an output spread of ~1: clearly unsat, clearly
# sat, and the two near-zero ones.
MARGINS = (0.1, -0.1, 1e-3, -1e-3)
SIZES = {"small": SMALL, "medium": MEDIUM, "tiny": TINY}
# Networks of every depth whose MILPs solve in a fraction of a second: the default run uses these.
QUICK_SEEDS = (0, 3, 6, 14)
ROWS = 2  # specification rows per network


@dataclass(frozen=True, eq=False)
class ExactCase:
    """A network, specification rows ``C`` (``(S, n_out)``, float32 values) and each row's ``Optimum``."""

    net: ReluNet
    C: np.ndarray
    optima: tuple[Optimum, ...]

    @property
    def minima(self) -> np.ndarray:
        """``(S,)``: the attained minimum of each row (an exact network value at a point of the box)."""
        return np.array([o.value for o in self.optima])


@functools.cache
def exact_case(seed: int, size: str = "small", rows: int = ROWS) -> ExactCase:
    """The network of ``seed`` drawn with ``SIZES[size]``, ``rows`` random rows and their MILP optima;
    cached, as every test file asks for the same few."""
    net = random_net(seed, SIZES[size])
    rng = np.random.default_rng(10_000 + seed)
    C = np.stack([random_direction(net, rng) for _ in range(rows)])
    return ExactCase(net, C, tuple(minimise(net, c) for c in C))


def vnnlib_text(lo: np.ndarray, hi: np.ndarray, c: np.ndarray, d: float) -> str:
    """VNN-LIB 1.0: inputs in ``[lo, hi]``, unsafe set ``sum_j c_j Y_j <= d``. Numbers are written with
    ``repr``, which round-trips float64 exactly."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(len(c))]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {float(a)!r}))", f"(assert (<= X_{i} {float(b)!r}))"]
    terms = " ".join(f"(* {float(cj)!r} Y_{j})" for j, cj in enumerate(c) if cj != 0.0)
    lines.append(f"(assert (<= (+ {terms}) {float(d)!r}))")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Instance:
    """One ``verify-model`` instance with a known answer; ``c``, ``d`` are its property's row."""

    onnx: Path
    vnnlib: Path
    net: ReluNet
    c: np.ndarray
    d: float
    margin: float

    @property
    def expected(self) -> str:
        return "unsat" if self.margin > 0 else "sat"


def write_instance(case: ExactCase, row: int, margin: float, directory: Path) -> Instance:
    """Write the ONNX file of ``case.net`` (Gemm layers for even seeds, MatMul + Add for odd ones; once per
    directory) and the property of row ``row`` of ``case.C`` with the true margin ``margin``."""
    net, c, optimum = case.net, case.C[row], case.optima[row]
    onnx = directory / f"net{net.seed}.onnx"
    if not onnx.exists():
        net.save_onnx(onnx, matmul=bool(net.seed % 2))
    assert abs(optimum.gap) < abs(margin) / 10, f"MILP gap {optimum.gap:.3g} too wide for margin {margin}"
    d = optimum.value - margin
    path = directory / f"net{net.seed}_row{row}_margin{margin:+g}.vnnlib"
    path.write_text(vnnlib_text(net.lo, net.hi, c, d))
    return Instance(onnx, path, net, c, d, margin)

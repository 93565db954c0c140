"""The verification property shared by every VNN-LIB front end, and the DNF machinery that builds it.

A property states the *counterexample* condition of a query (``sat`` = a violating input exists):

    SAT  <=>  exists case c, exists x with c.lower <= x <= c.upper, exists disjunct D of c:
              D.C @ f(x) <= D.d   (every row)

Front ends (VNN-LIB 1.0 in ``vnnlib.py``, 2.0 in ``vnnlib2.py``) translate a query into a formula over
*literals* -- a bound on one input, or one linear row over the outputs -- joined by ``Conj``/``Disj``.
``to_dnf`` expands the formula and ``assemble`` turns every DNF term into an input box plus one
output conjunction, merging terms whose boxes are identical into one ``Case``.

Variables are integer keys: input ``i`` is key ``i`` and output ``j`` is key ``~j`` (= ``-1 - j``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from verifier.errors import VerifierError

MAX_DNF_TERMS = 100_000


class VnnlibError(VerifierError, ValueError):
    """A VNN-LIB query that cannot be read, or does not fit the model; the message names the place.

    Attributes ``path``, ``line`` and ``column`` (1-based; ``None`` when unknown) locate the problem,
    and the message reads ``path:line:column: what went wrong``.
    """

    def __init__(
        self, message: str, path: str = "<string>", line: int | None = None, column: int | None = None
    ):
        self.path, self.line, self.column, self.reason = path, line, column, message
        place = ":".join(str(p) for p in (path, line, column) if p is not None)
        super().__init__(f"{place}: {message}")


def _frozen_float_array(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.array(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{what} has shape {array.shape}, expected {shape}")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Disjunct:
    """One conjunction of linear output constraints: unsafe iff ``C @ y <= d`` holds row by row.

    ``C`` has shape ``(k, n_outputs)`` and ``d`` shape ``(k,)``; ``k == 0`` means every output is unsafe.
    """

    C: np.ndarray
    d: np.ndarray

    def __post_init__(self):
        C = np.array(self.C, dtype=np.float64)
        if C.ndim != 2:
            raise ValueError(f"Disjunct.C must be 2-D (k, n_outputs), got shape {C.shape}")
        object.__setattr__(self, "C", _frozen_float_array(C, C.shape, "Disjunct.C"))
        object.__setattr__(self, "d", _frozen_float_array(self.d, C.shape[:1], "Disjunct.d"))


@dataclass(frozen=True, eq=False)
class Case:
    """An input box ``lower <= x <= upper`` with the unsafe output set (OR of disjuncts) that applies on it."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: tuple[Disjunct, ...]

    def __post_init__(self):
        lower = np.array(self.lower, dtype=np.float64)
        if lower.ndim != 1:
            raise ValueError(f"Case.lower must be 1-D, got shape {lower.shape}")
        object.__setattr__(self, "lower", _frozen_float_array(lower, lower.shape, "Case.lower"))
        object.__setattr__(self, "upper", _frozen_float_array(self.upper, lower.shape, "Case.upper"))
        object.__setattr__(self, "disjuncts", tuple(self.disjuncts))
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))):
            raise ValueError("Case bounds must be finite")
        if np.any(self.lower > self.upper):
            raise ValueError("Case has lower > upper")


class Variable(NamedTuple):
    """One declared variable, in declaration order: a VNN-LIB 2.0 tensor, or a 1.0 scalar ``X_i`` / ``Y_j``."""

    name: str
    element_type: str  # the standard's spelling: "real", "float32", ...
    shape: tuple[int, ...]  # () for a scalar; elements are flattened row-major
    is_output: bool


@dataclass(frozen=True, eq=False)
class Property:
    """``SAT`` iff for some case, some ``x`` in ``[lower, upper]`` has ``f(x)`` in that case's unsafe set.

    ``networks`` lists the network names a VNN-LIB 2.0 query declares (empty for VNN-LIB 1.0).
    ``variables`` lists the declared variables in order; inputs concatenated (flattened row-major)
    make up ``x``, outputs make up ``y``. It is what a ``sat`` assignment is printed against.
    """

    n_inputs: int
    n_outputs: int
    cases: tuple[Case, ...]
    networks: tuple[str, ...] = ()
    variables: tuple[Variable, ...] = ()

    def __post_init__(self):
        for name in ("cases", "networks", "variables"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for case in self.cases:
            if case.lower.shape != (self.n_inputs,):
                raise ValueError(f"case box has {case.lower.shape[0]} inputs, property has {self.n_inputs}")
            for disjunct in case.disjuncts:
                if disjunct.C.shape[1] != self.n_outputs:
                    raise ValueError(f"disjunct has {disjunct.C.shape[1]} outputs, expected {self.n_outputs}")
        if self.variables:
            sizes = [
                sum(math.prod(v.shape) for v in self.variables if v.is_output == out) for out in (False, True)
            ]
            if sizes != [self.n_inputs, self.n_outputs]:
                raise ValueError(
                    f"variables hold {sizes} input/output elements, expected {self.n_inputs, self.n_outputs}"
                )

    @property
    def element_types(self) -> tuple[str, ...]:
        """Distinct declared element types. Anything but ``real`` asks for analysis sound in that
        floating-point type, which a solver that cannot give it must refuse (VNN-LIB 2.0 section 5.3.2)."""
        return tuple(dict.fromkeys(v.element_type for v in self.variables))


def check_against_model(prop: Property, n_inputs: int, n_outputs: int, path: str = "<property>") -> None:
    """Raise ``VnnlibError`` unless the property's variable counts equal the model's flattened sizes."""
    problems = [
        f"{what}: property has {have}, model has {want}"
        for what, have, want in (("inputs", prop.n_inputs, n_inputs), ("outputs", prop.n_outputs, n_outputs))
        if have != want
    ]
    if problems:
        raise VnnlibError("property does not match the model: " + "; ".join(problems), path)


# --------------------------------------------------------------------------------------------- formulas


class InputBound(NamedTuple):
    """``x[index] <= value`` when ``upper`` else ``x[index] >= value``; ``at`` locates it in the source."""

    index: int
    upper: bool
    value: float
    at: Any = None


class OutputRow(NamedTuple):
    """``sum(c * y[j] for j, c in coeffs) <= rhs``."""

    coeffs: tuple[tuple[int, float], ...]
    rhs: float
    at: Any = None


@dataclass(frozen=True)
class Conj:
    """All of ``items``; the empty conjunction is true."""

    items: tuple


@dataclass(frozen=True)
class Disj:
    """Any of ``items``; the empty disjunction is false."""

    items: tuple


Literal = InputBound | OutputRow
Formula = Literal | Conj | Disj
TRUE, FALSE = Conj(()), Disj(())


@dataclass(frozen=True)
class Origin:
    """Where a formula came from: ``locate(at) -> (line, column)`` turns a literal's ``at`` into a place;
    ``input_name(i)`` names flat input ``i`` as the source spells it."""

    path: str
    locate: Callable[[Any], tuple[int | None, int | None]]
    input_at: Sequence[Any] = ()  # per input, where it is declared (for "X_3 has no bound" errors)
    input_name: Callable[[int], str] = "X_{}".format

    def error(self, at: Any, message: str) -> VnnlibError:
        line, column = self.locate(at) if at is not None else (None, None)
        return VnnlibError(message, self.path, line, column)


Linear = tuple[dict[int, float], float]  # (coeffs by variable key, constant): sum(c * v[k]) + constant


def add_linear(a: Linear, b: Linear, sign: float = 1.0) -> Linear:
    """``a + sign * b``."""
    coeffs = dict(a[0])
    for key, c in b[0].items():
        coeffs[key] = coeffs.get(key, 0.0) + sign * c
    return coeffs, a[1] + sign * b[1]


RELATIONS = ("<=", "<", ">=", ">", "=")


def relation(op: str, a: Linear, b: Linear, at: Any, origin: Origin) -> Formula:
    """``a op b`` as literals ``lhs - rhs <= 0``: sides swapped for ``>=``, both directions for ``=``.

    Strict ``<`` and ``>`` are read as ``<=`` and ``>=``. On outputs this replaces the unsafe set by its
    closure, a superset, so ``unsat`` (closure unreachable) still proves the strict property; on inputs
    it enlarges the box, which is likewise sound for ``unsat``. A ``sat`` witness on the boundary may
    violate the strict form and should be re-checked by whoever reports it.
    """
    if op in (">=", ">"):
        a, b = b, a
    below = linear_literal(*add_linear(a, b, -1.0), at, origin)
    if op != "=":
        return below
    return Conj((below, linear_literal(*add_linear(b, a, -1.0), at, origin)))


def linear_literal(coeffs: dict[int, float], const: float, at: Any, origin: Origin) -> Formula:
    """Classify ``sum(c * v[k]) + const <= 0`` as an input bound, an output row or a constant.

    A single input ``c * x_i + const <= 0`` becomes ``x_i <= -const / c`` (``>=`` when ``c < 0``). Constraints
    mixing inputs with outputs, or coupling several inputs, do not fit the box-times-polytope model
    and raise ``VnnlibError``.
    """
    if len(coeffs) == 1:  # the common case, one variable against a constant
        ((index, c),) = coeffs.items()
        if index >= 0 and c != 0.0:
            return InputBound(index, c > 0.0, -const / c + 0.0, at)  # + 0.0 turns -0.0 into 0.0
    terms = [(k, c) for k, c in coeffs.items() if c != 0.0]
    if not terms:
        return TRUE if const <= 0.0 else FALSE
    inputs = [k for k, _ in terms if k >= 0]
    if not inputs:
        return OutputRow(tuple(sorted((~k, c) for k, c in terms)), -const + 0.0, at)
    if len(inputs) < len(terms):
        raise origin.error(at, "constraint mixes input (X) and output (Y) variables")
    if len(terms) > 1:
        raise origin.error(at, "input constraint couples several inputs; only per-input bounds are supported")
    index, c = terms[0]
    return InputBound(index, c > 0.0, -const / c + 0.0, at)


def to_dnf(
    formula: Formula, origin: Origin, limit: int = MAX_DNF_TERMS
) -> list[tuple[tuple[Literal, ...], ...]]:
    """Expand ``formula`` into disjunctive normal form: a list of terms, each a conjunction.

    A term is a tuple of *chunks* (tuples of literals) whose concatenation is the conjunction. The
    literal children of one ``Conj`` form one chunk that every term expanded from it shares, so a
    file with thousands of input bounds and a small output disjunction costs one chunk, not copies.
    """
    if isinstance(formula, (InputBound, OutputRow)):
        return [((formula,),)]
    if isinstance(formula, Disj):
        terms = [term for item in formula.items for term in to_dnf(item, origin, limit)]
        _check_size(len(terms), origin, limit)
        return terms
    conjuncts = list(_conjuncts(formula.items))
    chunk = tuple(item for item in conjuncts if isinstance(item, (InputBound, OutputRow)))
    terms = [(chunk,) if chunk else ()]
    for item in conjuncts:
        if isinstance(item, Disj):
            expanded = to_dnf(item, origin, limit)
            _check_size(len(terms) * len(expanded), origin, limit)
            terms = [term + other for term in terms for other in expanded]
    return terms


def _conjuncts(items: tuple) -> Iterator[Formula]:
    """The literals and disjunctions of a conjunction, splicing in nested ``Conj`` and one-item ``Disj``.

    Splicing keeps the shared literal chunk large and the product short: a VNN-LIB 2.0 query arrives
    as one ``Disj(Conj(literal))`` per ``assert`` and would otherwise cost one product step each.
    """
    stack = list(reversed(items))
    while stack:
        item = stack.pop()
        if isinstance(item, Conj):
            stack.extend(reversed(item.items))
        elif isinstance(item, Disj) and len(item.items) == 1:
            stack.append(item.items[0])
        else:
            yield item


def _check_size(n_terms: int, origin: Origin, limit: int) -> None:
    if n_terms > limit:
        raise origin.error(None, f"disjunctive normal form exceeds {limit} terms (got {n_terms})")


# --------------------------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _ChunkSummary:
    lo_index: np.ndarray
    lo_value: np.ndarray
    hi_index: np.ndarray
    hi_value: np.ndarray
    rows: tuple[OutputRow, ...]


def _summarise(chunk: tuple[Literal, ...]) -> _ChunkSummary:
    lo, hi, rows = [], [], []
    for literal in chunk:
        if isinstance(literal, OutputRow):
            rows.append(literal)
        else:
            (hi if literal.upper else lo).append((literal.index, literal.value))
    lo_index, lo_value = (np.array(col) for col in zip(*lo)) if lo else (np.zeros(0, int), np.zeros(0))
    hi_index, hi_value = (np.array(col) for col in zip(*hi)) if hi else (np.zeros(0, int), np.zeros(0))
    return _ChunkSummary(lo_index, lo_value, hi_index, hi_value, tuple(rows))


def assemble(formula: Formula, n_inputs: int, n_outputs: int, origin: Origin) -> tuple[Case, ...]:
    """The cases of a ``Property``: the DNF terms of ``formula``, grouped by input box.

    Per term: ``lower = max`` of its lower bounds, ``upper = min`` of its upper bounds (intersection
    of half-spaces is exact), and its output rows stacked into one ``Disjunct``. Terms with
    bit-identical boxes share one ``Case``. Every input must end with finite bounds and
    ``lower <= upper``; otherwise ``VnnlibError``.
    """
    summaries: dict[int, _ChunkSummary] = {}
    grouped: dict[bytes, tuple[np.ndarray, np.ndarray, list[Disjunct]]] = {}
    for term in to_dnf(formula, origin):
        for chunk in term:
            if id(chunk) not in summaries:
                summaries[id(chunk)] = _summarise(chunk)
        parts = [summaries[id(chunk)] for chunk in term]
        lower, upper = np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf)
        for part in parts:
            np.maximum.at(lower, part.lo_index, part.lo_value)
            np.minimum.at(upper, part.hi_index, part.hi_value)
        _check_box(lower, upper, term, origin)
        key = lower.tobytes() + upper.tobytes()
        grouped.setdefault(key, (lower, upper, []))[2].append(_disjunct(parts, n_outputs))
    return tuple(Case(lo, up, tuple(ds)) for lo, up, ds in grouped.values())


def _disjunct(parts: list[_ChunkSummary], n_outputs: int) -> Disjunct:
    rows = [row for part in parts for row in part.rows]
    C = np.zeros((len(rows), n_outputs))
    for r, row in enumerate(rows):
        for j, c in row.coeffs:
            C[r, j] += c
    return Disjunct(C, np.array([row.rhs for row in rows], dtype=np.float64))


def _check_box(lower: np.ndarray, upper: np.ndarray, term, origin: Origin) -> None:
    """Raise on an unbounded input (pointing at its declaration) or an empty box (at a culprit bound)."""
    for side, values in (("lower", lower), ("upper", upper)):
        missing = np.flatnonzero(~np.isfinite(values))
        if missing.size:
            i = int(missing[0])
            at = origin.input_at[i] if i < len(origin.input_at) else None
            message = (
                f"input {origin.input_name(i)} has no finite {side} bound ({missing.size} inputs lack one)"
            )
            raise origin.error(at, message)
    empty = np.flatnonzero(lower > upper)
    if empty.size:
        i = int(empty[0])
        culprit = next(
            lit
            for chunk in term
            for lit in chunk
            if isinstance(lit, InputBound) and lit.index == i and not lit.upper and lit.value == lower[i]
        )
        name, low, high = origin.input_name(i), float(lower[i]), float(upper[i])
        raise origin.error(culprit.at, f"empty input box: {name} >= {low!r} but {name} <= {high!r}")

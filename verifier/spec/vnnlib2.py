"""VNN-LIB 2.0 queries, read with the ``vnnlib`` package from PyPI (C++ parser and type checker, MIT).

The package parses and type-checks the query, expands each assertion to DNF (``BoolExpr.to_dnf``)
and linearises each side of a comparison (``ArithExpr.to_linear_expr``). This module maps that typed
AST onto the shared formula of ``property.py``; ``property.assemble`` does the rest, exactly as for
VNN-LIB 1.0.

Tensor variables are flattened row-major and concatenated in declaration order: with inputs
``A [2]`` and ``B [2,3]``, ``B[i,j]`` is input ``2 + 3 * i + j``.

``vnnlib.compat.transform`` (the package's own box-plus-polytope conversion) is deliberately not
used: in v1.0.2 it ORs the disjunctions of separate ``assert`` commands instead of conjoining them
(an input disjunction in one assert and an output disjunction in another yields cases without
any output constraint), keeps only the ``<=`` half of ``==``, silently drops empty boxes and
returns unbounded inputs as +-inf.

Supported: one network; ``real`` or floating-point inputs and outputs of any shape (the declared types
are reported in ``Property.variables``; refusing a floating-point type the verifier cannot analyse
soundly, as section 5.3.2 requires, is the caller's decision); ``and``, ``or``,
``<=``, ``<``, ``>=``, ``>``, ``==`` over linear arithmetic; bounds on single inputs and linear
constraints over outputs. Refused with ``VnnlibError``: several networks (including ``equal-to``
/ ``isomorphic-to`` pairs), hidden-node variables, non-float element types, ``!=``, constraints
mixing inputs and outputs or coupling inputs.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import vnnlib as _pkg  # the PyPI package (absolute import), not the sibling module verifier.spec.vnnlib

from verifier.spec.property import (
    Conj,
    Disj,
    Formula,
    Origin,
    Property,
    Variable,
    VnnlibError,
    assemble,
    relation,
)

# The package's DType names of the element types a box over the reals can describe, in the standard's spelling.
_FLOAT_TYPES = {"Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16"}
_SYNTAX_ERROR = re.compile(r"line (\d+), column (\d+)")
_OPERATORS = {"LessEqual": "<=", "LessThan": "<", "GreaterEqual": ">=", "GreaterThan": ">", "Equal": "="}


def parse_query(text: str, path: str = "<string>") -> Property:
    """Parse a VNN-LIB 2.0 query ``text`` into a ``Property`` whose ``networks`` names its network."""
    try:
        query = _pkg.parse_query_string(text)
    except _pkg.VNNLibException as exc:
        raise _package_error(exc, path) from exc
    network = _single_network(query, Origin(path, _line_only))
    layout = _Layout(network, path)
    origin = layout.origin
    clauses = []
    for assertion in query.assertions:
        try:
            dnf = assertion.expr.to_dnf()
            clauses.append(Disj(tuple(Conj(tuple(layout.literals(c) for c in term)) for term in dnf)))
        except _pkg.VNNLibException as exc:
            raise origin.error(None, f"cannot linearise assertion {str(assertion).strip()}: {exc}") from exc
    cases = assemble(Conj(tuple(clauses)), layout.n_inputs, layout.n_outputs, origin)
    return Property(layout.n_inputs, layout.n_outputs, cases, (network.name,), layout.variables)


def _line_only(line: int | None) -> tuple[int | None, None]:
    """The package reports lines but not columns."""
    return line, None


def _package_error(exc: Exception, path: str) -> VnnlibError:
    """Turn the package's exception (plain text for syntax errors, JSON for type errors) into ours."""
    body = str(exc)
    try:
        report = json.loads(body)
    except ValueError:
        where = _SYNTAX_ERROR.search(body)
        line, column = (int(where[1]), int(where[2])) if where else (None, None)
        return VnnlibError(f"VNN-LIB 2.0: {body}", path, line, column)
    errors = report.get("errors") or [{}]
    first = errors[0]
    message = ": ".join(str(first[k]) for k in ("message", "hint") if first.get(k)) or body
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return VnnlibError(f"VNN-LIB 2.0: {message}{more}", path, first.get("line"))


def _single_network(query, origin: Origin):
    networks = query.networks
    if len(networks) != 1:
        names = ", ".join(n.name for n in networks)
        raise origin.error(None, f"only single-network queries are supported, found {len(networks)}: {names}")
    network = networks[0]
    if network.hidden:
        raise origin.error(None, f"hidden-node variables are not supported ({network.hidden[0].name})")
    return network


class _Layout:
    """Where each element of each declared tensor lives in the flat input / output vectors."""

    def __init__(self, network, path: str):
        self.origin = Origin(path, _line_only, input_name=self.input_name)
        self.slots: dict[str, tuple[int, list[int], bool]] = {}  # name -> (offset, shape, is_output)
        self.variables: list[Variable] = []
        self.n_inputs = self._place(network.inputs, False)
        self.n_outputs = self._place(network.outputs, True)

    def input_name(self, flat: int) -> str:
        """Spell flat input ``flat`` as the query does, e.g. ``X[1,0]``."""
        for name, (offset, shape, is_output) in self.slots.items():
            size = math.prod(shape)
            if not is_output and offset <= flat < offset + size:
                indices = [int(i) for i in np.unravel_index(flat - offset, shape)] if shape else []
                return f"{name}[{','.join(map(str, indices))}]"
        return f"input {flat}"

    def _place(self, declarations, is_output: bool) -> int:
        offset = 0
        for declaration in declarations:
            if declaration.dtype.name not in _FLOAT_TYPES:
                raise self.origin.error(
                    None,
                    f"{declaration.name}: element type {declaration.dtype.name} is not supported (need float)",
                )
            shape = [int(d) for d in declaration.shape]
            self.variables.append(
                Variable(declaration.name, _FLOAT_TYPES[declaration.dtype.name], tuple(shape), is_output)
            )
            self.slots[declaration.name] = (offset, shape, is_output)
            offset += math.prod(shape)
        return offset

    def _key(self, var) -> int:
        """``property.py`` key of one tensor element: flat index ``i`` for inputs, ``~i`` for outputs."""
        offset, shape, is_output = self.slots[var.name]
        flat = 0
        for index, dim in zip(var.indices, shape):
            if not 0 <= index < dim:
                raise self.origin.error(
                    var.line, f"index {list(var.indices)} out of range for {var.name}{shape}"
                )
            flat = flat * dim + index
        return ~(offset + flat) if is_output else offset + flat

    def _linear(self, expr) -> tuple[dict[int, float], float, int | None]:
        linear = expr.to_linear_expr()
        coeffs: dict[int, float] = {}
        line = None
        for term in linear.terms:
            key = self._key(term.var)
            coeffs[key] = coeffs.get(key, 0.0) + term.coeff
            line = line or term.var.line
        return coeffs, linear.constant, line

    def literals(self, comparison) -> Formula:
        """One comparison ``lhs op rhs``; see ``property.relation`` for how each operator becomes literals."""
        op = _OPERATORS.get(type(comparison).__name__)
        lhs, rhs = self._linear(comparison.lhs), self._linear(comparison.rhs)
        line = lhs[2] or rhs[2]
        if op is None:
            raise self.origin.error(line, f"comparison {str(comparison).strip()} is not supported")
        return relation(op, lhs[:2], rhs[:2], line, self.origin)

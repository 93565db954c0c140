"""VNN-LIB properties: ``load_property`` / ``parse_property`` for 1.0 and 2.0 files, and the 1.0 reader.

A VNN-LIB 1.0 file is SMT-LIB: ``(declare-const X_i Real)`` for inputs, ``(declare-const Y_j Real)``
for outputs, and ``(assert ...)`` over ``and``/``or``/``<=``/``>=``/``<``/``>``/``=`` with linear
arithmetic (``+``, ``-``, ``*`` by a constant, ``/`` by a constant). The asserted formula is the
counterexample condition; see ``property.py`` for what the resulting ``Property`` means.

Strict ``<``/``>`` are read as ``<=``/``>=`` (sound for ``unsat``; see ``property.relation``).

Reading happens in three stages: a tokenizer (``;`` comments to end of line), a reader grouping
tokens into nested forms, and an interpreter from forms to a ``property.Formula``. A tree node is
either an atom -- the ``int`` index of its token -- or a form -- a list ``[index of '(', *children]`` --
so every error can be traced back to a line and column.

VNN-LIB 2.0 files (first command ``(vnnlib-version <2.x>)`` or ``declare-network``) are routed to
``vnnlib2.py``, which uses the ``vnnlib`` package from PyPI.
"""

from __future__ import annotations

import math
import re
from itertools import islice, pairwise
from pathlib import Path

from verifier.spec import vnnlib2
from verifier.spec.property import (
    RELATIONS,
    Conj,
    Disj,
    Formula,
    Origin,
    Property,
    Variable,
    VnnlibError,
    add_linear,
    assemble,
    check_against_model,
    relation,
)

__all__ = [
    "Property",
    "VnnlibError",
    "check_against_model",
    "detect_version",
    "load_property",
    "parse_property",
]

# Group 1 is the token; a comment matches with an empty group 1, so it keeps its slot in the token list
# (the indices from findall and finditer agree) and the reader skips it.
_TOKEN = re.compile(r";[^\n]*|([()]|[^\s();]+)")
MAX_DEPTH = 100
_V2_HEADS = ("vnnlib-version", "declare-network")


def load_property(path: str | Path) -> Property:
    """Read the VNN-LIB 1.0 or 2.0 file at ``path`` (version detected from its first command)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise VnnlibError(f"cannot read VNN-LIB file: {exc}", str(path)) from exc
    return parse_property(text, str(path))


def parse_property(text: str, path: str = "<string>") -> Property:
    """Parse VNN-LIB ``text``; ``path`` only names the source in error messages."""
    if detect_version(text, path) == 2:
        return vnnlib2.parse_query(text, path)
    source = _Source(text, path)
    return _Interpreter(source).run(_read(source))


def detect_version(text: str, path: str = "<string>") -> int:
    """Return 2 when the first command is ``(vnnlib-version <2.x>)`` or ``(declare-network ...)``, else 1.

    The 2.0 grammar requires the version header; 1.0 has none and starts with ``declare-const``.
    """
    first = list(islice((m for m in _TOKEN.finditer(text) if m.group(1)), 3))
    words = [m.group(1) for m in first]
    if len(words) < 2 or words[0] != "(" or words[1] not in _V2_HEADS:
        return 1
    if words[1] == "vnnlib-version" and (len(words) < 3 or not words[2].startswith("<2.")):
        at = first[2] if len(first) == 3 else first[1]
        line, column = _line_column(text, at.start())
        found = words[2] if len(words) == 3 else "nothing"
        raise VnnlibError(f"unsupported VNN-LIB version {found}; supported: 1.0, <2.0>", path, line, column)
    return 2


def _line_column(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


class _Source:
    """The text of one file, its tokens, and the way back from a token index to a line and column."""

    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.tokens: list[str] = _TOKEN.findall(text)
        self.origin = Origin(path, self.locate)

    def locate(self, index: int) -> tuple[int, int]:
        if index >= len(self.tokens):  # past the last token: the end of the file
            return _line_column(self.text, len(self.text))
        match = next(islice(_TOKEN.finditer(self.text), index, None))
        return _line_column(self.text, match.start())

    def error(self, index: int, message: str) -> VnnlibError:
        return self.origin.error(index, message)


def _read(source: _Source) -> list[list]:
    """Group tokens into top-level forms; raise on unbalanced parentheses or nesting deeper than MAX_DEPTH."""
    open_forms: list[list] = []
    top: list = []
    for index, token in enumerate(source.tokens):
        if token == "(":
            open_forms.append(top)
            top = [index]
            if len(open_forms) > MAX_DEPTH:
                raise source.error(index, f"expressions nested deeper than {MAX_DEPTH} levels")
        elif token == ")":
            if not open_forms:
                raise source.error(index, "unbalanced ')': no matching '('")
            form, top = top, open_forms.pop()
            top.append(form)
        elif token:
            top.append(index)
    if open_forms:
        raise source.error(open_forms[1][0] if len(open_forms) > 1 else top[0], "unbalanced '(': not closed")
    for node in top:
        if not isinstance(node, list):
            raise source.error(node, f"expected '(' at top level, found {source.tokens[node]!r}")
    if not top:
        raise source.error(len(source.tokens), "empty file: no declarations or assertions")
    return top


class _Interpreter:
    """Turns the forms of one VNN-LIB 1.0 file into a ``Property``.

    Variables map to the integer keys of ``property.py``: ``X_i`` -> ``i``, ``Y_j`` -> ``~j``. A linear
    expression is a pair ``(coeffs: dict[key, float], constant)``.
    """

    def __init__(self, source: _Source):
        self.source, self.tokens = source, source.tokens
        self.keys: dict[str, int] = {}
        self.declared_at: dict[int, int] = {}
        self.assertions: list[Formula] = []

    def run(self, forms: list[list]) -> Property:
        for form in forms:
            command = self._head(form, "a command")
            if command == "declare-const":
                self._declare(form)
            elif command == "assert":
                self._expect_args(form, 1, 1)
                self.assertions.append(self._boolean(form[2]))
            else:
                raise self.source.error(
                    form[1], f"unknown command {command!r}; expected declare-const or assert"
                )
        n_inputs, n_outputs = self._check_declarations(forms)
        origin = Origin(self.source.path, self.source.locate, [self.declared_at[i] for i in range(n_inputs)])
        cases = assemble(Conj(tuple(self.assertions)), n_inputs, n_outputs, origin)
        scalars = [
            Variable(f"{kind}_{i}", "real", (), kind == "Y")
            for kind, n in (("X", n_inputs), ("Y", n_outputs))
            for i in range(n)
        ]
        return Property(n_inputs, n_outputs, cases, variables=scalars)

    def _head(self, form: list, what: str) -> str:
        if len(form) < 2 or isinstance(form[1], list):
            raise self.source.error(form[0], f"expected {what}, found an empty or nested form")
        return self.tokens[form[1]]

    def _expect_args(self, form: list, least: int, most: float = math.inf) -> None:
        n = len(form) - 2
        if not least <= n <= most:
            want = str(least) if least == most else f"at least {least}"
            raise self.source.error(form[0], f"{self.tokens[form[1]]!r} takes {want} argument(s), got {n}")

    def _atom(self, node, what: str) -> str:
        if isinstance(node, list):
            raise self.source.error(node[0], f"expected {what}, found a form")
        return self.tokens[node]

    def _declare(self, form: list) -> None:
        self._expect_args(form, 2, 2)
        name, sort = self._atom(form[2], "a variable name"), self._atom(form[3], "a sort")
        if sort != "Real":
            raise self.source.error(form[3], f"unsupported sort {sort!r} for {name}; VNN-LIB 1.0 uses Real")
        kind, digits = name[:2], name[2:]
        if kind not in ("X_", "Y_") or not (digits.isascii() and digits.isdigit()):
            raise self.source.error(form[2], f"unsupported variable name {name!r}; expected X_<i> or Y_<j>")
        if name in self.keys:
            raise self.source.error(form[2], f"variable {name} declared twice")
        key = int(digits) if kind == "X_" else ~int(digits)
        if key in self.declared_at:
            raise self.source.error(form[2], f"variable {name} declared twice (as a different spelling)")
        self.keys[name], self.declared_at[key] = key, form[0]

    def _check_declarations(self, forms: list[list]) -> tuple[int, int]:
        """Return (n_inputs, n_outputs); indices must run 0..n-1 without gaps."""
        counts = []
        for kind, keys in (
            ("X", [k for k in self.declared_at if k >= 0]),
            ("Y", [~k for k in self.declared_at if k < 0]),
        ):
            if not keys:
                raise self.source.error(forms[0][0], f"no {kind}_<i> variables declared")
            if max(keys) != len(keys) - 1:
                missing = min(set(range(max(keys))) - set(keys))
                where = self.declared_at[max(keys) if kind == "X" else ~max(keys)]
                raise self.source.error(
                    where, f"{kind}_{max(keys)} declared but {kind}_{missing} is not (gap)"
                )
            counts.append(len(keys))
        return counts[0], counts[1]

    def _boolean(self, node) -> Formula:
        if not isinstance(node, list):
            raise self.source.error(node, f"expected a constraint, found {self.tokens[node]!r}")
        op = self._head(node, "a constraint")
        if op in ("and", "or"):
            self._expect_args(node, 1)
            items = tuple(self._boolean(child) for child in node[2:])
            return Conj(items) if op == "and" else Disj(items)
        if op in RELATIONS:
            return self._compare(node, op)
        raise self.source.error(node[1], f"unknown operator {op!r} in a constraint")

    def _compare(self, form: list, op: str) -> Formula:
        """``(op a b c ...)`` chains as ``a op b and b op c`` (SMT-LIB); see ``property.relation``."""
        if len(form) == 4:  # the common binary case, without the chain bookkeeping
            return relation(op, self._arith(form[2]), self._arith(form[3]), form[0], self.source.origin)
        self._expect_args(form, 2)
        sides = [self._arith(node) for node in form[2:]]
        links = [relation(op, a, b, form[0], self.source.origin) for a, b in pairwise(sides)]
        return links[0] if len(links) == 1 else Conj(tuple(links))

    def _arith(self, node) -> tuple[dict[int, float], float]:
        if not isinstance(node, list):
            return self._operand(node)
        op = self._head(node, "an arithmetic expression")
        if op not in _ARITHMETIC:
            raise self.source.error(node[1], f"unknown operator {op!r} in an arithmetic expression")
        self._expect_args(node, *_ARITY[op])
        return _ARITHMETIC[op](self, node, [self._arith(child) for child in node[2:]])

    def _operand(self, index: int) -> tuple[dict[int, float], float]:
        token = self.tokens[index]
        key = self.keys.get(token)
        if key is not None:
            return {key: 1.0}, 0.0
        try:
            value = float(token)
        except ValueError:
            value = None
        if value is None or "_" in token:
            looks_numeric = token[0] in "0123456789+-."
            message = f"invalid numeric constant {token!r}" if looks_numeric else f"unknown variable {token}"
            raise self.source.error(index, message)
        if not math.isfinite(value):
            raise self.source.error(index, f"non-finite constant {token!r}")
        return {}, value


_ZERO = ({}, 0.0)


def _plus(interpreter, form, args):
    total = args[0]
    for arg in args[1:]:
        total = add_linear(total, arg)
    return total


def _subtract(interpreter, form, args):
    if len(args) == 1:
        return add_linear(_ZERO, args[0], -1.0)
    total = args[0]
    for arg in args[1:]:
        total = add_linear(total, arg, -1.0)
    return total


def _times(interpreter, form, args):
    """A product is linear when at most one factor has variables; the others scale it."""
    variable = [i for i, arg in enumerate(args) if arg[0]]
    if len(variable) > 1:
        raise interpreter.source.error(form[0], "nonlinear product of variables")
    keep = variable[0] if variable else 0
    result = args[keep]
    for i, arg in enumerate(args):
        if i != keep:
            result = add_linear(_ZERO, result, arg[1])
    return result


def _divide(interpreter, form, args):
    coeffs, divisor = args[1]
    if coeffs:
        raise interpreter.source.error(form[3], "nonlinear division: the divisor must be a constant")
    if divisor == 0.0:
        raise interpreter.source.error(form[3], "division by zero")
    return add_linear(_ZERO, args[0], 1.0 / divisor)


_ARITHMETIC = {"+": _plus, "-": _subtract, "*": _times, "/": _divide}
_ARITY = {"+": (1,), "-": (1,), "*": (2,), "/": (2, 2)}

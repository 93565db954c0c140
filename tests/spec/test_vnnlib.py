"""VNN-LIB 1.0 reader: every real benchmark file, spot values, the old compiled form, and malformed input."""

from __future__ import annotations

import csv
import hashlib
import math
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest

from verifier.errors import VerifierError
from verifier.spec.property import Case, Disjunct, Property, Variable
from verifier.spec.vnnlib import VnnlibError, check_against_model, load_property, parse_property

BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"{BENCHMARKS} not present")


def _flat_size(declared: str) -> int:
    """``'input[1, 1, 1, 5]' -> 5``; symbolic (batch) dimensions count as 1."""
    dims = declared[declared.index("[") + 1 : -1].split(",")
    return math.prod(int(d) if d.strip().isdigit() else 1 for d in dims)


def _expected_sizes() -> dict[Path, tuple[int, int]]:
    """Each benchmark vnnlib file -> (n_inputs, n_outputs) of the models it is paired with."""
    if not BENCHMARKS.is_dir():
        return {}
    with open(BENCHMARKS / "models.csv", newline="") as f:
        models = {
            (row["benchmark"], row["onnx"]): (
                _flat_size(row["inputs(declared)"]),
                _flat_size(row["outputs(declared)"]),
            )
            for row in csv.DictReader(f)
        }
    expected: dict[Path, tuple[int, int]] = {}
    for instances in sorted(BENCHMARKS.glob("*/instances.csv")):
        bench = instances.parent
        for onnx, vnnlib, _ in csv.reader(instances.open()):
            sizes = models[(bench.name, onnx)]
            assert expected.setdefault(bench / vnnlib, sizes) == sizes, (
                f"{vnnlib} paired with different shapes"
            )
    return expected


EXPECTED = _expected_sizes()


@needs_benchmarks
def test_every_benchmark_vnnlib_file_is_paired_with_a_model():
    on_disk = set(BENCHMARKS.glob("**/*.vnnlib"))
    assert len(on_disk) == 410
    assert on_disk == set(EXPECTED)


def _sweep() -> list:
    """Every benchmark file (about 10 s for all 410)."""
    return [pytest.param(path, id=str(path.relative_to(BENCHMARKS))) for path in sorted(EXPECTED)]


@needs_benchmarks
@pytest.mark.parametrize("path", _sweep())
def test_benchmark_file_parses_to_a_well_formed_property(path):
    prop = load_property(path)
    assert (prop.n_inputs, prop.n_outputs) == EXPECTED[path]
    check_against_model(prop, *EXPECTED[path])
    assert prop.cases and prop.networks == () and prop.element_types == ("real",)
    assert prop.variables[0] == Variable("X_0", "real", (), False)
    assert prop.variables[-1] == Variable(f"Y_{prop.n_outputs - 1}", "real", (), True)
    for case in prop.cases:
        assert case.lower.shape == case.upper.shape == (prop.n_inputs,)
        assert np.all(np.isfinite(case.lower)) and np.all(np.isfinite(case.upper))
        assert np.all(case.lower <= case.upper)
        assert case.disjuncts
        for disjunct in case.disjuncts:
            assert disjunct.C.shape == (disjunct.d.shape[0], prop.n_outputs) and disjunct.C.shape[0] >= 1
            assert np.all(np.isfinite(disjunct.C)) and np.all(np.isfinite(disjunct.d))


_SIMPLE_BOUND = re.compile(r"^\(assert \((<=|>=) X_(\d+) (\S+)\)\)\s*$", re.MULTILINE)


@needs_benchmarks
@pytest.mark.parametrize(
    "pattern", ["mnist_fc/vnnlib/*.vnnlib", "oval21/vnnlib/*.vnnlib", "eran_mnist/**/*.vnnlib"]
)
def test_image_boxes_match_an_independent_line_by_line_reading(pattern):
    """These files write one ``(assert (<= X_i c))`` per line; read them back with a line regex as oracle."""
    for path in sorted(BENCHMARKS.glob(pattern))[:2]:
        prop = load_property(path)
        (case,) = prop.cases
        lower, upper = np.full(prop.n_inputs, np.nan), np.full(prop.n_inputs, np.nan)
        for op, index, value in _SIMPLE_BOUND.findall(path.read_text()):
            (upper if op == "<=" else lower)[int(index)] = float(value)
        np.testing.assert_array_equal(case.lower, lower)
        np.testing.assert_array_equal(case.upper, upper)


@needs_benchmarks
def test_acas_prop_1_values():
    prop = load_property(BENCHMARKS / "acasxu/vnnlib/prop_1.vnnlib")
    (case,) = prop.cases
    np.testing.assert_array_equal(case.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(case.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (disjunct,) = case.disjuncts  # (>= Y_0 3.991125645861615)  <=>  -Y_0 <= -3.99...
    np.testing.assert_array_equal(disjunct.C, [[-1.0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(disjunct.d, [-3.991125645861615])


@needs_benchmarks
def test_acas_prop_6_has_two_input_boxes_with_four_disjuncts_each():
    prop = load_property(BENCHMARKS / "acasxu/vnnlib/prop_6.vnnlib")
    assert len(prop.cases) == 2
    np.testing.assert_array_equal(prop.cases[0].lower[1:3], [0.11140846, -0.499999896])
    np.testing.assert_array_equal(prop.cases[1].upper[1:3], [-0.11140846, -0.499204121])
    for case in prop.cases:
        np.testing.assert_array_equal(case.lower[[0, 3, 4]], [-0.129289109, -0.5, -0.5])
        assert len(case.disjuncts) == 4
        for j, disjunct in enumerate(case.disjuncts, start=1):  # (<= Y_j Y_0): Y_j - Y_0 <= 0
            expected = np.zeros((1, 5))
            expected[0, 0], expected[0, j] = -1.0, 1.0
            np.testing.assert_array_equal(disjunct.C, expected)
            np.testing.assert_array_equal(disjunct.d, [0.0])


@needs_benchmarks
def test_acas_prop_3_conjunction_of_output_rows_is_one_disjunct():
    prop = load_property(BENCHMARKS / "acasxu/vnnlib/prop_3.vnnlib")
    (case,) = prop.cases
    (disjunct,) = case.disjuncts  # (<= Y_0 Y_j) for j = 1..4, all at once
    np.testing.assert_array_equal(disjunct.C, np.hstack([np.ones((4, 1)), -np.eye(4)]))
    np.testing.assert_array_equal(disjunct.d, np.zeros(4))


@needs_benchmarks
def test_mnist_fc_robustness_property_has_nine_disjuncts():
    prop = load_property(BENCHMARKS / "mnist_fc/vnnlib/prop_2_0.03.vnnlib")
    (case,) = prop.cases
    others = [j for j in range(10) if j != 4]  # (>= Y_j Y_4): Y_4 - Y_j <= 0
    assert len(case.disjuncts) == 9
    for j, disjunct in zip(others, case.disjuncts):
        expected = np.zeros((1, 10))
        expected[0, 4], expected[0, j] = 1.0, -1.0
        np.testing.assert_array_equal(disjunct.C, expected)
        np.testing.assert_array_equal(disjunct.d, [0.0])
    assert case.lower[0] == 0.0 and case.upper[0] == 0.029999999329447746


@needs_benchmarks
def test_rl_properties_single_row_and_six_row_conjunction():
    (case,) = load_property(BENCHMARKS / "rl_benchmarks/vnnlib/cartpole_case_unsafe_31.vnnlib").cases
    np.testing.assert_array_equal(case.disjuncts[0].C, [[-1.0, 1.0]])  # (<= Y_1 Y_0)
    (case,) = load_property(BENCHMARKS / "rl_benchmarks/vnnlib/dubinsrejoin_case_safe_0.vnnlib").cases
    (disjunct,) = case.disjuncts
    assert disjunct.C.shape == (6, 8)
    np.testing.assert_array_equal(disjunct.C[3], [0, 0, 0, 0, 1, 0, -1, 0])  # (<= Y_4 Y_6)


_PICKLE_ALLOWED = frozenset(
    {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"), ("numpy", "dtype")}
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The ``.compiled`` files are pickles of numpy arrays; refuse anything else they might name."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


@needs_benchmarks
@pytest.mark.parametrize("name", ["test_nano", "test_tiny", "test_small"])
def test_matches_the_old_compiled_form(name):
    """``<name>.vnnlib.compiled`` = pickle of ``([(box, [(C, d), ...]), ...], sha256 of the .vnnlib)``."""
    source = BENCHMARKS / "test" / f"{name}.vnnlib"
    with open(f"{source}.compiled", "rb") as f:
        compiled, digest = _NumpyOnlyUnpickler(f).load()
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()  # it encodes this very file
    prop = load_property(source)
    assert len(prop.cases) == len(compiled)
    for case, (box, specs) in zip(prop.cases, compiled):
        np.testing.assert_array_equal(np.stack([case.lower, case.upper], axis=1), box)
        assert len(case.disjuncts) == len(specs)
        for disjunct, (C, d) in zip(case.disjuncts, specs):
            np.testing.assert_array_equal(disjunct.C, C)
            np.testing.assert_array_equal(disjunct.d, d)


@pytest.mark.slow  # measures time; that every benchmark file parses is checked above
@needs_benchmarks
def test_largest_file_parses_fast():
    path = max(BENCHMARKS.glob("**/*.vnnlib"), key=lambda p: p.stat().st_size)
    text = path.read_text()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        prop = parse_property(text, str(path))
        best = min(best, time.perf_counter() - start)
    assert prop.n_inputs == 3072
    assert best < 0.5, f"{path.name}: {best * 1e3:.0f} ms"  # ~40 ms on an idle core; slack for busy machines


# ---------------------------------------------------------------------------------------- small inputs

HEAD = (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
)
BOX = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"


def _one_case(body: str) -> Case:
    (case,) = parse_property(HEAD + BOX + body).cases
    return case


@pytest.mark.parametrize(
    ("constraint", "C", "d"),
    [
        ("(<= Y_0 3.5)", [[1, 0]], [3.5]),
        ("(<= 3.5 Y_0)", [[-1, 0]], [-3.5]),
        ("(>= Y_0 Y_1)", [[-1, 1]], [0]),
        ("(< Y_1 Y_0)", [[-1, 1]], [0]),  # strict read as non-strict
        ("(> Y_0 -2e-1)", [[-1, 0]], [0.2]),
        ("(<= (+ Y_0 (* 2 Y_1) 1) (- 4))", [[1, 2]], [-5]),
        ("(<= (- Y_0 Y_1 0.5) (/ Y_1 -2))", [[1, -0.5]], [0.5]),
        ("(<= (* -1.5 Y_0 2) 3)", [[-3, 0]], [3]),
        ("(= Y_0 1)", [[1, 0], [-1, 0]], [1, -1]),
        ("(<= Y_0 Y_1 7)", [[1, -1], [0, 1]], [0, 7]),  # chain: Y_0 <= Y_1 and Y_1 <= 7
        ("(and (<= Y_0 1) (<= (- Y_0 Y_0) 5))", [[1, 0]], [1]),  # a constant-true row disappears
    ],
)
def test_output_constraints(constraint, C, d):
    (disjunct,) = _one_case(f"(assert {constraint})").disjuncts
    np.testing.assert_array_equal(disjunct.C, C)
    np.testing.assert_array_equal(disjunct.d, d)


def test_input_bounds_take_the_tightest_and_accept_scaled_and_equality_forms():
    text = HEAD + BOX + "(assert (<= (* 4 X_0) 2))\n(assert (>= (- X_1) -0.25))\n(assert (= X_1 0.25))\n"
    (case,) = parse_property(text + "(assert (<= Y_0 0))").cases
    np.testing.assert_array_equal(case.lower, [0, 0.25])
    np.testing.assert_array_equal(case.upper, [0.5, 0.25])


def test_terms_with_identical_boxes_merge_and_different_boxes_split():
    same = "(assert (or (and (<= Y_0 0)) (and (<= Y_1 0) (<= Y_0 1))))"
    (case,) = parse_property(HEAD + BOX + same).cases
    assert [d.C.shape[0] for d in case.disjuncts] == [1, 2]
    split = "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))"
    text = HEAD + split + "(assert (>= X_1 0))(assert (<= X_1 0))(assert (or (<= Y_0 0) (<= Y_1 0)))"
    prop = parse_property(text)
    assert [c.lower[0] for c in prop.cases] == [0, 2] and [len(c.disjuncts) for c in prop.cases] == [2, 2]
    same_lower = split.replace("(>= X_0 2) (<= X_0 3)", "(>= X_0 0) (<= X_0 3)")
    prop = parse_property(HEAD + same_lower + "(assert (>= X_1 0))(assert (<= X_1 0))(assert (<= Y_0 0))")
    assert [c.upper[0] for c in prop.cases] == [1, 3]


def test_output_free_property_is_one_unconstrained_disjunct():
    (disjunct,) = _one_case("").disjuncts
    assert disjunct.C.shape == (0, 2)


def test_dnf_blow_up_is_refused():
    doubling = "(assert (or (<= Y_0 1) (<= Y_0 2)))\n" * 17  # 2**17 = 131072 terms
    with pytest.raises(VnnlibError, match="exceeds 100000 terms"):
        parse_property(HEAD + BOX + doubling)


def test_comments_crlf_and_byte_order_mark(tmp_path):
    path = tmp_path / "p.vnnlib"
    text = "; (unbalanced in a comment\r\n" + (HEAD + BOX).replace("\n", " ; c )\r\n") + "(assert (<= Y_0 1))"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_property(path).cases[0].upper[0] == 1.0


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("", 1, 1, "empty file"),
        ("; only a comment\n", 2, 1, "empty file"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1)", 2, 1, "unbalanced '('"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1)))", 2, 20, "unbalanced ')'"),
        ("(declare-const X_0 Real)\n  (assert (<= X_0 1)\n(assert (>= X_0 0))", 2, 3, "unbalanced '('"),
        ("(declare-const X_0 Real) X_0", 1, 26, "expected '(' at top level"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Z_3))",
            3,
            17,
            "unknown variable Z_3",
        ),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1.2.3))", 2, 17, "invalid numeric constant '1.2.3'"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1_000))", 2, 17, "invalid numeric constant"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 inf))", 2, 17, "non-finite constant 'inf'"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1e999))", 2, 17, "non-finite constant"),
        ("(declare-const X_0 Real)\n(assert (=> X_0 1))", 2, 10, "unknown operator '=>'"),
        ("(declare-const X_0 Real)\n(assert (<= (abs X_0) 1))", 2, 14, "unknown operator 'abs'"),
        ("(declare-const X_0 Real)\n(assert (not (<= X_0 1)))", 2, 10, "unknown operator 'not'"),
        ("(declare-const X_0 Real)\n(check-sat)", 2, 2, "unknown command 'check-sat'"),
        ("(declare-const X_0 Int)", 1, 20, "unsupported sort 'Int'"),
        ("(declare-const Z_0 Real)", 1, 16, "unsupported variable name 'Z_0'"),
        ("(declare-const X_0 Real)\n(declare-const X_0 Real)", 2, 16, "declared twice"),
        ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)", 2, 1, "gap"),
        ("(declare-const X_0 Real)\n(assert (<= X_0))", 2, 9, "takes at least 2 argument(s), got 1"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1) (>= X_0 0))", 2, 1, "takes 1 argument(s), got 2"),
        ("(declare-const X_0 Real)\n(assert (and))", 2, 9, "takes at least 1"),
        ("(declare-const X_0 Real)\n(assert X_0)", 2, 9, "expected a constraint"),
        ("(declare-const X_0 Real)\n(assert ((<= X_0 1)))", 2, 9, "empty or nested form"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (* X_0 Y_0) 1))",
            3,
            13,
            "nonlinear",
        ),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (/ 1 X_0) 1))", 3, 18, "divisor"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (/ X_0 0) 1))",
            3,
            20,
            "division by zero",
        ),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))", 3, 9, "mixes input"),
        ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= (+ X_0 X_1) 1))", 3, 9, "couples"),
        ("(declare-const Y_0 Real)\n(assert (<= Y_0 1))", 1, 1, "no X_<i> variables"),
        (
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))",
            1,
            1,
            "X_0 has no finite lower",
        ),
        (
            HEAD + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))",
            2,
            1,
            "X_1 has no finite upper",
        ),
        (HEAD + BOX + "(assert (>= X_0 2))", 9, 9, "empty input box: X_0 >= 2.0 but X_0 <= 1.0"),
        ("(" * 101 + ")" * 101, 1, 101, "nested deeper than 100"),
        ("(vnnlib-version <3.0>)", 1, 17, "unsupported VNN-LIB version <3.0>"),
    ],
)
def test_malformed_input_names_line_and_column(text, line, column, message):
    with pytest.raises(VnnlibError, match=re.escape(message)) as info:
        parse_property(text, "prop.vnnlib")
    error = info.value
    assert (error.path, error.line, error.column) == ("prop.vnnlib", line, column)
    assert str(error).startswith(f"prop.vnnlib:{line}:{column}: ")
    assert isinstance(error, VerifierError) and isinstance(error, ValueError)


def test_missing_file_is_a_vnnlib_error(tmp_path):
    with pytest.raises(VnnlibError, match="cannot read"):
        load_property(tmp_path / "absent.vnnlib")


def test_check_against_model():
    prop = parse_property(HEAD + BOX + "(assert (<= Y_0 1))")
    check_against_model(prop, 2, 2)
    with pytest.raises(VnnlibError, match=r"p\.vnnlib: .*inputs: property has 2, model has 784") as info:
        check_against_model(prop, 784, 2, path="p.vnnlib")
    assert "outputs" not in str(info.value)
    with pytest.raises(VnnlibError, match="outputs: property has 2, model has 10"):
        check_against_model(prop, 2, 10)


def test_data_model_is_validated_and_read_only():
    case = Case(np.zeros(2), np.ones(2), (Disjunct(np.eye(2), np.zeros(2)),))
    prop = Property(2, 2, [case])
    assert isinstance(prop.cases, tuple) and case.lower.dtype == np.float64
    with pytest.raises(ValueError):
        case.lower[0] = 5.0
    with pytest.raises(ValueError, match="lower > upper"):
        Case(np.ones(2), np.zeros(2), ())
    with pytest.raises(ValueError, match="finite"):
        Case(np.zeros(2), np.full(2, np.inf), ())
    with pytest.raises(ValueError, match="shape"):
        Disjunct(np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match="outputs"):
        Property(2, 3, [case])
    with pytest.raises(ValueError, match="variables hold"):
        Property(
            2, 2, [case], variables=[Variable("X", "real", (3,), False), Variable("Y", "real", (2,), True)]
        )

"""VNN-LIB 2.0 queries read through the ``vnnlib`` package, and version routing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from verifier.spec.property import Property, Variable
from verifier.spec.vnnlib import VnnlibError, detect_version, load_property, parse_property

DATA = Path(__file__).resolve().parent / "data"
BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"{BENCHMARKS} not present")

V2 = "(vnnlib-version <2.0>)\n"
NET = "(declare-network f (declare-input X real [2]) (declare-output Y real [2]))\n"
BOX = "(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X[1] -1.0) (<= X[1] 1.0)))\n"


def _boxes_and_rows(prop: Property):
    return [
        (case.lower.tolist(), case.upper.tolist(), [(d.C.tolist(), d.d.tolist()) for d in case.disjuncts])
        for case in prop.cases
    ]


def test_tensor_input_flattens_row_major_and_separate_assertions_are_conjoined():
    prop = load_property(DATA / "v2_two_regions.vnnlib")
    assert (prop.n_inputs, prop.n_outputs, prop.networks, prop.element_types) == (
        4,
        3,
        ("classifier",),
        ("real",),
    )
    unsafe = [([[1.0, -1.0, 0.0]], [0.0]), ([[1.0, 0.0, -1.0]], [0.0])]  # logits[j] >= logits[0]
    assert _boxes_and_rows(prop) == [
        ([0.0, -1.0, 0.25, 2.0], [0.5, 1.0, 0.25, 3.0], unsafe),
        ([0.5, -1.0, 0.25, 2.0], [1.0, 0.0, 0.25, 3.0], unsafe),
    ]


def test_several_tensors_concatenate_in_declaration_order_with_linear_arithmetic():
    prop = load_property(DATA / "v2_two_tensors.vnnlib")
    assert (prop.n_inputs, prop.n_outputs, prop.networks, prop.element_types) == (
        3,
        3,
        ("controller",),
        ("float32",),
    )
    assert prop.variables == (
        Variable("state", "float32", (2,), False),
        Variable("gain", "float32", (1,), False),
        Variable("speed", "float32", (), True),
        Variable("torque", "float32", (2,), True),
    )
    # speed + 2 torque[1] + (1.5 - torque[0]) > 1  <=>  -speed + torque[0] - 2 torque[1] <= 0.5 (closed)
    assert _boxes_and_rows(prop) == [([-1.0, -0.5, 0.1], [1.0, 0.5, 0.2], [([[-1.0, 1.0, -2.0]], [0.5])])]


@pytest.mark.parametrize(
    ("constraint", "C", "d"),
    [
        ("(<= Y[0] 3.5)", [[1, 0]], [3.5]),
        ("(>= -3.5 Y[1])", [[0, 1]], [-3.5]),
        ("(< Y[1] Y[0])", [[-1, 1]], [0]),
        ("(== Y[0] 1.0)", [[1, 0], [-1, 0]], [1, -1]),
        ("(<= (- Y[0] (* 0.5 Y[1])) 2.0)", [[1, -0.5]], [2]),
    ],
)
def test_output_constraints(constraint, C, d):
    ((_, _, [(got_C, got_d)]),) = _boxes_and_rows(parse_property(V2 + NET + BOX + f"(assert {constraint})"))
    assert (got_C, got_d) == (C, d)


def _as_v2(text: str) -> str:
    """Rewrite a VNN-LIB 1.0 file as 2.0: one network, ``X_i`` -> ``X[i]``, decimals without exponents."""
    body = re.sub(r";[^\n]*", "", text)
    sizes = [len(re.findall(rf"declare-const {v}_\d+ ", body)) for v in "XY"]
    body = re.sub(r"\(declare-const [XY]_\d+ Real\)", "", body)
    body = re.sub(
        r"(?<=[\s(])-?\d[\d.]*(?:[eE][-+]?\d+)?(?=[\s)])",
        lambda m: np.format_float_positional(float(m[0]), trim="0"),
        body,
    )
    body = re.sub(r"\b([XY])_(\d+)\b", r"\1[\2]", body)
    head = f"(declare-network net (declare-input X real [{sizes[0]}]) (declare-output Y real [{sizes[1]}]))\n"
    return V2 + head + body


@needs_benchmarks
@pytest.mark.parametrize(
    "name",
    [f"acasxu/vnnlib/prop_{i}.vnnlib" for i in range(1, 11)]
    + ["mnist_fc/vnnlib/prop_2_0.03.vnnlib", "rl_benchmarks/vnnlib/dubinsrejoin_case_safe_0.vnnlib"],
)
def test_benchmark_rewritten_as_2_0_gives_the_same_property(name):
    text = (BENCHMARKS / name).read_text()
    v1, v2 = parse_property(text), parse_property(_as_v2(text))
    assert v2.networks == ("net",) and v1.networks == ()
    assert (v1.n_inputs, v1.n_outputs) == (v2.n_inputs, v2.n_outputs)
    assert len(v1.cases) == len(v2.cases)
    for a, b in zip(v1.cases, v2.cases):
        np.testing.assert_array_equal(a.lower, b.lower)
        np.testing.assert_array_equal(a.upper, b.upper)
        assert len(a.disjuncts) == len(b.disjuncts)
        for da, db in zip(a.disjuncts, b.disjuncts):
            np.testing.assert_array_equal(da.C, db.C)
            np.testing.assert_array_equal(da.d, db.d)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("(declare-const X_0 Real)", 1),
        ("; comment (vnnlib-version <2.0>)\n(declare-const X_0 Real)", 1),
        ("; header next\n(vnnlib-version <2.0>)", 2),
        ("(vnnlib-version <2.1>)", 2),
        ("(declare-network f)", 2),
        ("", 1),
    ],
)
def test_detect_version(text, version):
    assert detect_version(text) == version


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (NET + BOX + "(assert (<= Y[0] 1))", 4, "found a PositiveIntConstant constant '1'"),
        (NET + BOX + "(assert (<= Y[2] 1.0))", 4, "out of bounds"),
        (NET + BOX + "(assert (<= X[0] Y[0]))", 4, "mixes input (X) and output (Y)"),
        (NET + BOX + "(assert (<= (+ X[0] X[1]) 1.0))", 4, "couples several inputs"),
        (NET + BOX + "(assert (!= Y[0] 1.0))", 4, "(!= Y [0] 1.0) is not supported"),
        (NET + BOX + "(assert (<= (* Y[0] Y[1]) 1.0))", None, "Non-linear"),
        (NET + "(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))", None, "input X[1] has no finite lower bound"),
        (NET + BOX + "(assert (>= X[1] 2.0))", 4, "empty input box: X[1] >= 2.0 but X[1] <= 1.0"),
        (NET.replace("X real", "X int8") + "(assert (>= X[0] 0))", None, "element type I8 is not supported"),
        (
            NET + NET.replace("X ", "A ").replace("Y ", "B ").replace(" f ", " g ") + BOX,
            None,
            "found 2: f, g",
        ),
        (
            NET.replace("(declare-output", '(declare-hidden H real [2] "h") (declare-output') + BOX,
            None,
            "hidden",
        ),
    ],
)
def test_errors_name_the_file_and_line(body, line, message):
    with pytest.raises(VnnlibError, match=re.escape(message)) as info:
        parse_property(V2 + body, "q.vnnlib")
    assert (info.value.path, info.value.line) == ("q.vnnlib", line)
    assert str(info.value).startswith(f"q.vnnlib:{line}: " if line else "q.vnnlib: ")


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (NET + BOX + "(assert (<= Y[0] 1.5e-3))", 4),  # the 2.0 grammar has no exponent notation
        (NET + BOX + "(assert (<= Y[0] 1.0)", 4),
        (NET, 2),  # a query needs at least one assertion
    ],
)
def test_2_0_syntax_errors_carry_the_package_line_and_column(body, line):
    with pytest.raises(VnnlibError, match="syntax error") as info:
        parse_property(V2 + body, "q.vnnlib")
    assert info.value.line == line and isinstance(info.value.column, int)
    assert f"syntax error at line {line}, column {info.value.column}" in str(info.value)


def test_header_without_2_0_version_is_refused():
    with pytest.raises(VnnlibError, match=r"^q\.vnnlib:1:17: unsupported VNN-LIB version <1\.0>"):
        parse_property("(vnnlib-version <1.0>)\n(declare-const X_0 Real)", "q.vnnlib")

"""The counterexample checker: exact box membership, exact ``C y <= d``, and inward/outward rounding."""

from __future__ import annotations

import numpy as np
import pytest

from tests.verify.paths import TEST_SAT, TEST_UNSAT
from verifier.spec.property import Case, Disjunct
from verifier.spec.vnnlib import load_property
from verifier.verify.onnx_check import OnnxChecker, disjunct_holds, in_box
from verifier.verify.spec_batch import rounded_box

# A point of test_prop.vnnlib's box where test_sat.onnx's first output is minimal (found by the attack).
SAT_POINT = np.array([-0.29855284, -0.009549296, 0.49338034, 0.5, 0.30000001], dtype=np.float32)


def test_exact_comparison_beats_float_rounding():
    # 1e16 + 1 rounds to 1e16 in float64, so a float comparison would accept this point.
    disjunct = Disjunct(np.array([[1.0, 1.0]]), np.array([1e16]))
    assert not disjunct_holds(disjunct, np.array([1e16, 1.0]))
    assert disjunct_holds(disjunct, np.array([1e16, 0.0]))


def test_boundary_is_inside_and_one_step_beyond_is_not():
    y = np.array([0.25, -0.5], dtype=np.float32)
    C = np.array([[1.0, -1.0]])
    exact = float(y[0]) - float(y[1])
    assert disjunct_holds(Disjunct(C, np.array([exact])), y)
    assert not disjunct_holds(Disjunct(C, np.array([np.nextafter(exact, -np.inf)])), y)


def test_in_box_compares_the_cast_value_exactly():
    lower, upper = np.array([0.1]), np.array([0.2])
    assert not in_box(np.float32([0.2]), lower, upper)  # float32(0.2) > 0.2
    assert in_box(np.float32([0.1]), lower, upper)  # float32(0.1) > 0.1
    assert in_box(np.float32([0.15]), lower, upper)


@pytest.mark.parametrize("seed", range(5))
def test_rounded_boxes(seed):
    rng = np.random.default_rng(seed)
    lower = rng.normal(size=50)
    upper = lower + rng.exponential(size=50) * 10.0 ** rng.integers(-9, 1, size=50)
    lo, hi = rounded_box(lower, upper, np.float32, inward=True)
    fits = lo <= hi
    assert np.all(lo[fits] >= lower[fits]) and np.all(hi[fits] <= upper[fits])
    assert np.all(np.nextafter(lo[fits], np.float32(-np.inf)) < lower[fits])  # the largest such box
    assert np.all(np.nextafter(hi[fits], np.float32(np.inf)) > upper[fits])
    out_lo, out_hi = rounded_box(lower, upper, np.float32, inward=False)
    assert np.all(out_lo <= lower) and np.all(out_hi >= upper)


def test_checker_accepts_a_real_counterexample_and_rejects_others():
    onnx_path, vnnlib_path = TEST_SAT
    prop = load_property(vnnlib_path)
    checker = OnnxChecker(str(onnx_path))
    found = checker.check(prop.cases, 0, SAT_POINT)
    assert found is not None and found.x.dtype == np.float32
    assert np.argmin(found.y) == 0
    outside = SAT_POINT.copy()
    outside[0] = np.float32(-0.29)  # above the box's upper bound for X_0
    assert checker.check(prop.cases, 0, outside) is None


def test_checker_rejects_a_point_that_misses_the_unsafe_set():
    onnx_path, vnnlib_path = TEST_UNSAT
    prop = load_property(vnnlib_path)
    checker = OnnxChecker(str(onnx_path))
    assert checker.check(prop.cases, 0, SAT_POINT) is None


def test_checker_rejects_a_wrong_claim():
    """A spec the point does not satisfy (its output rows shifted by one ulp) must be refused."""
    onnx_path, vnnlib_path = TEST_SAT
    prop = load_property(vnnlib_path)
    checker = OnnxChecker(str(onnx_path))
    y = checker.run(SAT_POINT).astype(np.float64)
    C = np.eye(5)[:1] - np.eye(5)[1:2]
    tight = Case(prop.cases[0].lower, prop.cases[0].upper, (Disjunct(C, C @ y),))
    assert checker.check((tight,), 0, SAT_POINT) is not None
    shifted = Case(tight.lower, tight.upper, (Disjunct(C, np.nextafter(C @ y, -np.inf)),))
    assert checker.check((shifted,), 0, SAT_POINT) is None


def test_several_inputs_are_fed_their_slices_in_their_own_types(tmp_path):
    """x float32 [1, 2] and y float64 [3]: the point is taken in float32 (exact in both types), x gets
    values 0..1 and y values 2..4 of the flat point, each in its declared type (the model returns its
    inputs concatenated)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "flat"], ["x1"]),
             helper.make_node("Concat", ["x1", "y32"], ["out"], axis=0)]  # fmt: skip
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
              helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3])]  # fmt: skip
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [out], [flat]), opset_imports=[helper.make_opsetid("", 11)]
    )
    model.ir_version = 8
    path = tmp_path / "two_types.onnx"
    onnx.save(model, path)
    checker = OnnxChecker(str(path))
    assert checker.signature.input_names == ("x", "y") and checker.input_types == ("float32", "float64")
    assert checker.dtype is np.float32 and checker.sizes == [2, 3] and checker.n_inputs == 5
    point = np.array([1.0, 2.0, 10.0, 20.0, 30.0])
    feed = checker.feed(point)
    assert feed["x"].dtype == np.float32 and feed["x"].shape == (1, 2)
    assert feed["y"].dtype == np.float64 and feed["y"].shape == (3,)
    np.testing.assert_array_equal(checker.run(point), point)

"""verify-model on an ONNX model with two inputs of different shapes (an image and a vector): VNN-LIB 1.0
properties number ``X_i`` across both inputs concatenated, VNN-LIB 2.0 queries declare each input. Every
``sat`` counterexample is re-checked here with onnxruntime, fed input by input independently of the
verifier's own slicing, and must lie in each input's own box."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import verifier
from tests.graph.multi_input_models import ImageAndVector, export
from verifier.cli import main
from verifier.verify.result_file import parse_vnncomp

SHAPES = [(1, 4, 4), (3,)]  # per sample; the file declares [batch, ...] with a symbolic batch
SIZES = [16, 3]
TIMEOUT = "60"


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """(ONNX path, box lower, box upper, lowest sampled out[0], CROWN's lower bound of out[0]); the two
    inputs get boxes of different places and widths, so a mix-up of their order shows."""
    folder = tmp_path_factory.mktemp("multi")
    torch.manual_seed(5)
    path = export(ImageAndVector().eval(), SHAPES, folder / "image_vector.onnx")
    lower = np.concatenate([np.full(16, 0.2), np.array([-1.0, 0.5, 2.0])])
    upper = np.concatenate([np.full(16, 0.3), np.array([-0.8, 0.9, 2.1])])
    gen = np.random.default_rng(0)
    points = lower + (upper - lower) * gen.random((2000, 19))
    lowest = float(feed(path, points)[:, 0].min())
    model = verifier.load(path)
    box = verifier.Box(
        torch.tensor(lower[None], dtype=torch.float32), torch.tensor(upper[None], dtype=torch.float32)
    )
    crown = float(model.bounds(box, method="crown").lower[0, 0])
    return path, lower, upper, lowest, crown


def feed(path: str, points: np.ndarray) -> np.ndarray:
    """onnxruntime's outputs [K, 2] at flat points [K, 19]: the first 16 values are the image, then the vector."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    image = points[:, :16].reshape(-1, 1, 4, 4).astype(np.float32)
    vector = points[:, 16:].reshape(-1, 3).astype(np.float32)
    return session.run(None, {"in0": image, "in1": vector})[0]


def vnnlib1(lower, upper, threshold: float) -> str:
    """Unsafe: ``Y_0 <= threshold`` on the box; X_0..X_15 the image, X_16..X_18 the vector."""
    lines = [f"(declare-const X_{i} Real)" for i in range(19)] + [
        "(declare-const Y_0 Real)",
        "(declare-const Y_1 Real)",
    ]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    lines.append(f"(assert (<= Y_0 {float(threshold)!r}))")
    return "\n".join(lines) + "\n"


def vnnlib2(lower, upper, threshold: float, order=("in0", "in1")) -> str:
    """The same property as a VNN-LIB 2.0 query declaring the two inputs by the model's names."""
    declared = {"in0": "(declare-input in0 real [1,1,4,4])", "in1": "(declare-input in1 real [1,3])"}
    lines = ["(vnnlib-version <2.0>)", "(declare-network net", *[declared[name] for name in order],
             "(declare-output out real [1,2])", ")"]  # fmt: skip
    names = [f"in0[0,0,{i // 4},{i % 4}]" for i in range(16)] + [f"in1[0,{j}]" for j in range(3)]
    for name, lo, hi in zip(names, lower, upper):
        lines.append(f"(assert (and (>= {name} {float(lo)!r}) (<= {name} {float(hi)!r})))")
    lines.append(f"(assert (<= out[0,0] {float(threshold)!r}))")
    return "\n".join(lines) + "\n"


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_counterexample(path, lower, upper, threshold, x, y) -> None:
    """x lies in the box, onnxruntime gives y at x, and y is unsafe."""
    assert x.shape == (19,) and y.shape == (2,)
    assert np.all(x >= lower) and np.all(x <= upper)
    np.testing.assert_array_equal(feed(path, x[None])[0], y.astype(np.float32))
    assert y[0] <= threshold


def test_the_bounds_leave_room_for_both_verdicts(instance):
    _, _, _, lowest, crown = instance
    assert crown < lowest


def test_vnnlib1_sat_writes_the_counterexample_in_vnnlib_order(instance, tmp_path, capsys):
    path, lower, upper, lowest, _ = instance
    threshold = lowest + 1e-3
    prop = tmp_path / "sat.vnnlib"
    prop.write_text(vnnlib1(lower, upper, threshold))
    out_file = tmp_path / "result.txt"
    status, _, err = run(capsys, path, prop, "--timeout", TIMEOUT, "--out", out_file)
    assert status == 0, err
    verdict, x, y = parse_vnncomp(out_file.read_text())
    assert verdict == "sat"
    assert_counterexample(path, lower, upper, threshold, x, y)


def test_vnnlib1_unsat(instance, tmp_path, capsys):
    path, lower, upper, _, crown = instance
    prop = tmp_path / "unsat.vnnlib"
    prop.write_text(vnnlib1(lower, upper, crown - 0.05))
    status, _, err = run(capsys, path, prop, "--timeout", TIMEOUT, "--out", tmp_path / "r.txt")
    assert status == 0, err
    assert (tmp_path / "r.txt").read_text() == "unsat\n"


def assignment(out: str) -> dict[str, np.ndarray]:
    """The ``verify`` command's assignment block: variable name -> its values."""
    values: dict[str, list[float]] = {}
    current = None
    for line in out.splitlines()[1:]:
        if " real [" in line:
            current = line.split()[0]
            values[current] = []
        else:
            values[current].append(float(line))
    return {name: np.array(v) for name, v in values.items()}


def test_vnnlib2_query_with_two_inputs_sat(instance, tmp_path, capsys):
    path, lower, upper, lowest, _ = instance
    threshold = lowest + 1e-3
    query = tmp_path / "sat.vnnlib"
    query.write_text(vnnlib2(lower, upper, threshold))
    status, out, err = run(capsys, "verify", query, "--network", f"net={path}", "--timeout", TIMEOUT)
    assert status == 0, err
    assert out.splitlines()[0] == "sat"
    values = assignment(out)
    assert list(values) == ["in0", "in1", "out"] and [len(v) for v in values.values()] == [16, 3, 2]
    x = np.concatenate([values["in0"], values["in1"]])
    assert_counterexample(path, lower, upper, threshold, x, values["out"])


def test_vnnlib2_query_with_two_inputs_unsat(instance, tmp_path, capsys):
    path, lower, upper, _, crown = instance
    query = tmp_path / "unsat.vnnlib"
    query.write_text(vnnlib2(lower, upper, crown - 0.05))
    status, out, err = run(capsys, "verify", query, "--network", f"net={path}", "--timeout", TIMEOUT)
    assert (status, out) == (0, "unsat\n"), err


def test_vnnlib2_inputs_declared_out_of_the_models_order_are_refused(instance, tmp_path, capsys):
    path, lower, upper, _, crown = instance
    query = tmp_path / "swapped.vnnlib"
    query.write_text(vnnlib2(lower, upper, crown - 0.05, order=("in1", "in0")))
    status, out, err = run(capsys, "verify", query, "--network", f"net={path}", "--timeout", TIMEOUT)
    assert status == 1 and out == ""
    assert "in the order in1, in0" in err and "in0, in1" in err

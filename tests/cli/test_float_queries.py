"""``verify-model verify`` on VNN-LIB 2.0 queries declaring float32 / float64: decided (sat / unsat) when the
bounds decide them, and never ``unsat`` when only real arithmetic would prove it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli.test_standard import run
from tests.verify.paths import TEST_UNSAT

TYPES = {"float32": (TensorProto.FLOAT, np.float32), "float64": (TensorProto.DOUBLE, np.float64)}
W = [[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 1.0, 1.0]]


def one_node(path, op_type, in_shape, out_shape, consts=(), dtype="float32", **attrs) -> str:
    """A model ``Y = op(X, *consts)`` saved at ``path``."""
    proto, np_type = TYPES[dtype]
    names = [f"c{i}" for i in range(len(consts))]
    inits = [numpy_helper.from_array(np.asarray(c, dtype=np_type), n) for c, n in zip(consts, names)]
    node = helper.make_node(op_type, ["X", *names], ["Y"], name=f"/{op_type.lower()}", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", proto, in_shape)],
                              [helper.make_tensor_value_info("Y", proto, out_shape)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def small_graph(path, nodes, consts, in_shape, out_shape) -> str:
    """A float32 model from ``nodes`` (op type, inputs, output, attributes) reading X and writing Y, with
    constants ``consts`` (name: array; int64 arrays stay int64) saved at ``path``."""
    inits = [numpy_helper.from_array(np.asarray(v, np.int64 if np.asarray(v).dtype.kind == "i" else np.float32),
                                     n) for n, v in consts.items()]  # fmt: skip
    made = [helper.make_node(op, list(ins), [out], name=f"/{out}", **attrs) for op, ins, out, attrs in nodes]
    graph = helper.make_graph(made, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


# softmax over 4 inputs spelled as a PyTorch export of ``exp(x) / exp(x).sum(-1, keepdim=True)``
SOFTMAX = ([("Exp", ["X"], "e", {}), ("ReduceSum", ["e", "axes"], "s", {"keepdims": 1}),
            ("Div", ["e", "s"], "Y", {})], {"axes": [1]})  # fmt: skip
# ``x0 x1``: a product of two graph tensors, in [1, 4] on the box [1, 2]^2 (McCormick's planes reach 4 at
# the corner (2, 2), so the root bound decides)
PRODUCT = ([("MatMul", ["X", "wa"], "a", {}), ("MatMul", ["X", "wb"], "b", {}), ("Mul", ["a", "b"], "Y", {})],
           {"wa": [[1.0], [0.0]], "wb": [[0.0], [1.0]]})  # fmt: skip
# (model, input shape, output shape, box, unsafe set proved empty, unsafe set hit): softmax_0 is at most
# e / (e + 3 / e) = 0.711 on [-1, 1]^4, reached at a corner
GRAPHS = {
    "softmax": (SOFTMAX, [1, 4], [1, 4], (-1.0, 1.0), "(>= Y[0,0] 0.75)", "(>= Y[0,0] 0.7)"),
    "product": (PRODUCT, [1, 2], [1, 1], (1.0, 2.0), "(>= Y[0,0] 4.05)", "(>= Y[0,0] 3.9)"),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_softmax_and_products_are_decided(name, tmp_path, capsys):
    (nodes, consts), in_shape, out_shape, box, empty, hit = GRAPHS[name]
    network = f"net={small_graph(tmp_path / 'm.onnx', nodes, consts, in_shape, out_shape)}"
    unsat = query(tmp_path / "unsat.vnnlib", in_shape, out_shape, box, empty)
    sat = query(tmp_path / "sat.vnnlib", in_shape, out_shape, box, hit)
    assert run(capsys, "verify", unsat, "--network", network, "--timeout", "60")[1] == "unsat\n"
    status, out, _ = run(capsys, "verify", sat, "--network", network, "--timeout", "60")
    assert status == 0 and out.splitlines()[0] == "sat"


def query(path, in_shape, out_shape, box, unsafe, dtype="float32") -> str:
    """A query over input box ``box`` (lower, upper for every element) with unsafe set ``unsafe``."""
    lines = ["(vnnlib-version <2.0>)", "(declare-network net",
             f"  (declare-input X {dtype} [{','.join(map(str, in_shape))}])",
             f"  (declare-output Y {dtype} [{','.join(map(str, out_shape))}])", ")"]  # fmt: skip
    for index in np.ndindex(*in_shape):
        x = f"X[{','.join(map(str, index))}]"
        lines.append(f"(assert (and (>= {x} {box[0]}) (<= {x} {box[1]})))")
    lines.append(f"(assert {unsafe})")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# (operator, input shape, output shape, constants, attributes, unsafe set proved empty, unsafe set hit)
CASES = [
    ("Relu", [1, 4], [1, 4], (), {}, "(<= Y[0,0] -0.01)", "(>= Y[0,0] 0.5)"),
    ("Sigmoid", [1, 4], [1, 4], (), {}, "(>= Y[0,1] 0.75)", "(>= Y[0,1] 0.7)"),
    ("Tanh", [1, 4], [1, 4], (), {}, "(<= Y[0,2] -0.77)", "(<= Y[0,2] -0.7)"),
    ("LeakyRelu", [1, 4], [1, 4], (), {"alpha": 0.1}, "(<= Y[0,3] -0.11)", "(<= Y[0,3] -0.09)"),
    ("Abs", [1, 4], [1, 4], (), {}, "(<= Y[0,0] -0.001)", "(>= Y[0,0] 0.9)"),
    ("Gemm", [1, 4], [1, 2], (W, [0.1, -0.2]), {"transB": 1}, "(>= Y[0,0] 4.7)", "(>= Y[0,0] 4.5)"),
    ("MatMul", [1, 4], [1, 2], (np.transpose(W),), {}, "(>= (- Y[0,0] Y[0,1]) 5.1)", "(>= Y[0,1] 2.9)"),
    (
        "MaxPool",
        [1, 1, 2, 2],
        [1, 1, 1, 1],
        (),
        {"kernel_shape": [2, 2]},
        "(<= Y[0,0,0,0] -1.01)",
        "(>= Y[0,0,0,0] 0.9)",
    ),
    (
        "AveragePool",
        [1, 1, 2, 2],
        [1, 1, 1, 1],
        (),
        {"kernel_shape": [2, 2]},
        "(>= Y[0,0,0,0] 1.01)",
        "(<= Y[0,0,0,0] -0.9)",
    ),
    (
        "Conv",
        [1, 1, 2, 2],
        [1, 1, 1, 1],
        ([[[[1.0, -2.0], [0.5, 0.25]]]],),
        {},
        "(>= Y[0,0,0,0] 3.8)",
        "(>= Y[0,0,0,0] 3.5)",
    ),
]


NO_FLOAT64_KERNEL = {"AveragePool", "Conv"}  # onnxruntime's CPU provider has no float64 kernel for these
RUNS = [
    (c, t) for t in ("float32", "float64") for c in CASES if t == "float32" or c[0] not in NO_FLOAT64_KERNEL
]


@pytest.mark.parametrize(("case", "dtype"), RUNS, ids=[f"{c[0]}-{t}" for c, t in RUNS])
def test_single_operators_are_decided(case, dtype, tmp_path, capsys):
    op, in_shape, out_shape, consts, attrs, empty, hit = case
    model = one_node(tmp_path / "m.onnx", op, in_shape, out_shape, consts, dtype, **attrs)
    network = f"net={model}"
    unsat = query(tmp_path / "unsat.vnnlib", in_shape, out_shape, (-1.0, 1.0), empty, dtype)
    sat = query(tmp_path / "sat.vnnlib", in_shape, out_shape, (-1.0, 1.0), hit, dtype)
    assert run(capsys, "verify", unsat, "--network", network, "--timeout", "60")[1] == "unsat\n"
    status, out, _ = run(capsys, "verify", sat, "--network", network, "--timeout", "60")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "sat" and lines[1].startswith(f"X {dtype} ")


def cancelling(tmp_path, dtype: str) -> tuple[str, str]:
    """``y = sum of 500 inputs - sum of 500 inputs + 0.01`` at the point x = 1: exactly 0.01 in real
    arithmetic, well above the verdict margin, but float32's error bound for a 1001-term sum is
    ``gamma_1001 * 1000.01`` (about 0.06): the query ``y <= 0`` is unsat in real arithmetic and not
    provable for float32; float64's bound (about 1e-10) proves it."""
    weights = [[1.0] * 500 + [-1.0] * 500]
    model = one_node(tmp_path / f"c_{dtype}.onnx", "Gemm", [1, 1000], [1, 1], (weights, [0.01]), dtype,
                     transB=1)  # fmt: skip
    return model, query(
        tmp_path / f"c_{dtype}.vnnlib", [1, 1000], [1, 1], (1.0, 1.0), "(<= Y[0,0] 0.0)", dtype
    )


def test_rounding_error_larger_than_the_real_margin_blocks_unsat(tmp_path, capsys):
    model, float32 = cancelling(tmp_path, "float32")
    real = query(tmp_path / "real.vnnlib", [1, 1000], [1, 1], (1.0, 1.0), "(<= Y[0,0] 0.0)", "real")
    assert run(capsys, "verify", real, "--network", f"net={model}")[1] == "unsat\n"
    assert run(capsys, "verify", float32, "--network", f"net={model}", "--timeout", "60")[1] == "unknown\n"


def test_float64_decides_what_float32_cannot(tmp_path, capsys):
    model, float64 = cancelling(tmp_path, "float64")
    assert run(capsys, "verify", float64, "--network", f"net={model}", "--timeout", "60")[1] == "unsat\n"


def test_acas_property_3_in_float32(tmp_path, capsys):
    from tests.cli.test_standard import QUERY

    path = tmp_path / "prop3.vnnlib"
    path.write_text(QUERY.format(type="float32"))
    assert (
        run(capsys, "verify", path, "--network", f"acas={TEST_UNSAT[0]}", "--timeout", "60")[1] == "unsat\n"
    )


def test_fused_softmax_is_refused_by_name(tmp_path, capsys):
    """The runtime's fused kernel computes otherwise than the operators the loader translates it into."""
    model = one_node(tmp_path / "softmax.onnx", "Softmax", [1, 4], [1, 4], axis=1)
    path = query(tmp_path / "q.vnnlib", [1, 4], [1, 4], (-1.0, 1.0), "(>= Y[0,0] 0.75)")
    status, out, err = run(capsys, "verify", path, "--network", f"net={model}")
    assert status == 1 and out == "" and "Softmax (node" in err and "fused" in err


def test_folded_batch_norm_is_refused(tmp_path, capsys):
    ones = np.ones(1)
    model = one_node(tmp_path / "bn.onnx", "BatchNormalization", [1, 1, 2, 2], [1, 1, 2, 2],
                     (ones, 0 * ones, 0 * ones, ones))  # fmt: skip
    path = query(tmp_path / "q.vnnlib", [1, 1, 2, 2], [1, 1, 2, 2], (-1.0, 1.0), "(<= Y[0,0,0,0] -2.0)")
    status, out, err = run(capsys, "verify", path, "--network", f"net={model}")
    assert status == 1 and out == "" and "BatchNormalization" in err

"""Every failure a user can cause is a VerifierError subclass with a message naming the file or node:
unreadable files, unsupported operators (all listed at once), and bad inputs to the forward pass and to
bound computations. A raw torch/onnx exception escaping is a failure of these tests, not an error."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from graph_testing import Net
from onnx import TensorProto, helper

import verifier
from verifier import InputError, ModelLoadError, UnsupportedOperatorError, VerifierError


def raised(expected: type[VerifierError], call: Callable, *args, **kwargs) -> VerifierError:
    """The exception ``call(*args, **kwargs)`` raises, which must be an ``expected``, not a raw one."""
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    assert isinstance(info.value, VerifierError), f"raw {type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, expected), f"{type(info.value).__name__} instead of {expected.__name__}"
    return info.value


def save(folder, model: onnx.ModelProto):
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> verifier.BoundedModel:
    """A small ReLU network from 4 inputs to 3 outputs."""
    n = Net([1, 4])
    return verifier.load(
        save(tmp_path_factory.mktemp("errors"), n.model(n.gemm(n.op("Relu", n.gemm("x", 4, 5)), 5, 3)))
    )


# ------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(1000), b"not an onnx model\njust text\n", b""],
    ids=["random_bytes", "text", "empty"],
)
def test_a_file_that_is_not_onnx_names_the_path(tmp_path, content):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    assert str(path) in str(raised(ModelLoadError, verifier.load, path))


def test_a_truncated_onnx_file_names_the_path(tmp_path):
    n = Net([1, 4])
    path = tmp_path / "truncated.onnx"
    path.write_bytes(n.model(n.gemm("x", 4, 3)).SerializeToString()[:60])
    assert str(path) in str(raised(ModelLoadError, verifier.load, path))


@pytest.mark.parametrize("as_str", [True, False], ids=["str", "Path"])
def test_a_missing_file_names_the_path(tmp_path, as_str):
    path = tmp_path / "missing.onnx"
    assert str(path) in str(raised(ModelLoadError, verifier.load, str(path) if as_str else path))


def test_a_model_with_a_boolean_data_input_names_it(tmp_path):
    """Several inputs load (tests/graph/test_multi_input.py); one that is not a float tensor is refused."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Where", ["mask", "x", "x"], ["y"], name="where")
    graph = helper.make_graph([node], "g", [x, z], [y])
    path = save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "input 'mask' has element type BOOL" in str(raised(ModelLoadError, verifier.load, path))


def test_an_output_that_does_not_depend_on_the_input(tmp_path):
    n = Net([1, 4])
    n.op("Relu", "x")
    constant = n.op("Constant", value=onnx.numpy_helper.from_array(np.ones(3, np.float32)))
    path = save(tmp_path, n.model(constant))
    assert "depends on its input" in str(raised(ModelLoadError, verifier.load, path))


# -------------------------------------------------------------------------------- unsupported operators


def test_every_unsupported_operator_is_listed_with_its_node(tmp_path):
    n = Net([1, 4])
    path = save(tmp_path, n.model(n.op("Tan", n.op("Asin", n.gemm(n.op("Atan", "x"), 4, 4)))))
    error = raised(UnsupportedOperatorError, verifier.load, path)
    assert error.unsupported == [("Atan", "/atan_0"), ("Asin", "/asin_2"), ("Tan", "/tan_3")]
    for op, node in error.unsupported:
        assert f"{op} (node {node})" in str(error)


MISUSES = {  # a supported op type on graph tensors where it is not affine, built on the input x: [1, 4]
    "matmul_vector_by_matrix": lambda n: ("MatMul", ["x", n.op("Reshape", "x", n.ints(1, 4, 1))]),
    "pow_two_tensors": lambda n: ("Pow", [n.op("Relu", "x"), n.gemm("x", 4, 4)]),
}


@pytest.mark.parametrize("misuse", MISUSES)
def test_a_supported_type_used_without_bound_rules_names_the_node(tmp_path, misuse):
    n = Net([1, 4])
    op_type, inputs = MISUSES[misuse](n)
    n.nodes.append(helper.make_node(op_type, inputs, ["y"], name="bad_node"))
    path = save(tmp_path, n.model("y"))
    error = raised(UnsupportedOperatorError, verifier.load, path)
    assert "bad_node" in str(error) and [node for _, node in error.unsupported] == ["bad_node"]


REFUSALS = {  # a supported op type used in a way without bound rules, and what the error says
    "reduce_sum_over_batch": (lambda n: n.op("ReduceSum", "x", n.ints(0, 1)), "over the batch dimension"),
    "reduce_mean_over_all": (lambda n: n.op("ReduceMean", "x", keepdims=0), "over the batch dimension"),
    "maxpool_asymmetric_pads_dilated": (
        lambda n: n.op(
            "MaxPool",
            n.op("Reshape", "x", n.ints(1, 1, 2, 2)),
            kernel_shape=[2, 2],
            pads=[1, 0, 0, 0],
            dilations=[2, 2],
        ),
        "pads differ at the two ends, with ceil_mode or dilations",
    ),
    "resize_cubic": (
        lambda n: n.op(
            "Resize", n.op("Reshape", "x", n.ints(1, 1, 2, 2)), "", n.const([1, 1, 2, 2]), mode="cubic"
        ),
        "cubic interpolation",
    ),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_refused_use_names_the_node_and_the_reason(tmp_path, refusal):
    build, reason = REFUSALS[refusal]
    n = Net([1, 4])
    out = build(n)
    path = save(tmp_path, n.model(out))
    error = raised(UnsupportedOperatorError, verifier.load, path)
    assert [node for _, node in error.unsupported] == [n.nodes[-1].name] and reason in str(error)


def test_a_cast_to_integer_is_unsupported(tmp_path):
    n = Net([1, 4])
    path = save(
        tmp_path, n.model(n.op("Cast", n.op("Cast", "x", to=TensorProto.INT64), to=TensorProto.FLOAT))
    )
    error = raised(UnsupportedOperatorError, verifier.load, path)
    assert "cast_0" in str(error) and "int64" in str(error)


def test_translation_failures_name_the_onnx_node_verbatim(tmp_path):
    n = Net([1, 4])
    n.nodes.append(helper.make_node("Pow", ["x", n.op("Relu", "x")], ["y"], name="/layer1/Pow_2"))
    path = save(tmp_path, n.model("y"))
    assert "/layer1/Pow_2" in str(raised(ModelLoadError, verifier.load, path))


def test_unknown_types_and_untranslatable_uses_are_listed_together(tmp_path):
    n = Net([1, 4])
    h = n.op("Atan", "x")
    n.nodes.append(helper.make_node("Pow", [h, n.op("Relu", "x")], ["y"], name="pow_node"))
    path = save(tmp_path, n.model("y"))
    error = raised(UnsupportedOperatorError, verifier.load, path)
    assert "/atan_0" in str(error) and "pow_node" in str(error)


# --------------------------------------------------------------------------------------------- bad input


def test_forward_rejects_a_wrong_shape(model):
    for x in (torch.zeros(2, 5), torch.zeros(4), torch.zeros(2, 4, 1), torch.zeros(2, 2, 2)):
        assert str(tuple(x.shape)) in str(raised(InputError, model, x))


def test_bounds_reject_a_region_of_the_wrong_shape(model):
    for x in (torch.zeros(2, 5), torch.zeros(4), torch.zeros(1, 2, 2)):
        raised(InputError, model.bounds, verifier.LinfBall(x, 0.1))
        raised(InputError, model.bounds, verifier.Box(x, x + 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_a_region_is_rejected(bad):
    x = torch.zeros(2, 4)
    x_bad = x.clone()
    x_bad[1, 2] = bad
    raised(InputError, verifier.Box, x_bad, x + 1)
    raised(InputError, verifier.Box, x - 1, x_bad)
    raised(InputError, verifier.LinfBall, x_bad, 0.1)
    raised(InputError, verifier.L2Ball, x_bad, 0.1)
    raised(InputError, verifier.LinfBall, x, bad)
    raised(InputError, verifier.LinfBall, x, torch.tensor([0.1, bad]))


def test_box_with_lower_above_upper_or_mismatched_shapes():
    raised(InputError, verifier.Box, torch.ones(1, 4), torch.zeros(1, 4))
    raised(InputError, verifier.Box, torch.zeros(1, 4), torch.ones(1, 5))


def test_negative_eps_is_rejected():
    x = torch.zeros(2, 4)
    for eps in (-0.1, torch.tensor([0.1, -0.1]), torch.tensor(-1e-9)):
        raised(InputError, verifier.LinfBall, x, eps)
        raised(InputError, verifier.L2Ball, x, eps)


def test_an_unknown_method_is_rejected(model):
    box = verifier.LinfBall(torch.zeros(1, 4), 0.1)
    for method in ("beta-crown", "CROWN", "", None):
        raised(InputError, model.bounds, box, method=method)
    raised(InputError, model.bounds, box, relu_lower="one")


def test_a_specification_of_the_wrong_shape_is_rejected(model):
    box = verifier.LinfBall(torch.zeros(2, 4), 0.1)
    for C in (torch.ones(2, 3), torch.ones(2, 1, 4), torch.ones(3, 1, 3), torch.ones(2, 1, 3, 1)):
        assert str(tuple(C.shape)) in str(raised(InputError, model.bounds, box, C=C))
    raised(InputError, model.bounds, box, C=torch.full((2, 1, 3), float("nan")))


def test_a_well_formed_specification_is_accepted(model):
    """C [B, S, n_out] gives [B, S]; a C with batch 1 is shared by every region."""
    box = verifier.LinfBall(torch.zeros(2, 4), 0.1)
    assert model.bounds(box, C=torch.ones(2, 5, 3)).lower.shape == (2, 5)
    assert model.bounds(box, C=torch.ones(1, 2, 3)).upper.shape == (2, 2)


def test_loading_a_module_needs_a_matching_example_input():
    raised(InputError, verifier.load, torch.nn.Linear(3, 2))
    raised(ModelLoadError, verifier.load, torch.nn.Linear(3, 2), torch.zeros(1, 4))


class _Refused(torch.nn.Module):
    """Module uses without bound rules: all pieces of a split taken at once, a sum over the batch."""

    def forward(self, x):  # x: [B, 4]
        joined = torch.cat(torch.split(x, 2, 1), 1)
        return joined + x.sum() + torch.mean(x, dim=0)


def test_refused_module_uses_name_their_nodes():
    error = raised(UnsupportedOperatorError, verifier.load, _Refused(), torch.zeros(1, 4))
    reasons = {node: kind for kind, node in error.unsupported}
    assert {"cat", "sum_1", "mean"} <= set(reasons)
    assert "pieces of a split" in reasons["cat"] and "batch dimension" in reasons["mean"]


# ------------------------------------------------------------------------- raw exceptions (known bugs)


def test_margins_reject_labels_out_of_range(model):
    box = verifier.LinfBall(torch.zeros(2, 4), 0.1)
    raised(InputError, model.margins, box, torch.tensor([0, 3]))


def test_a_conv_model_with_a_fixed_batch_of_two_is_rejected(tmp_path):
    """Its samples cannot be told from its batch: the message asks for an export with batch 1."""
    n = Net([2, 3, 4, 4])
    path = save(tmp_path, n.model(n.op("Relu", n.conv("x", 3, 2))))
    message = str(raised(ModelLoadError, verifier.load, path))
    assert "fixed batch of 2" in message and "batch 1" in message


def test_eps_of_the_wrong_length_is_rejected(model):
    raised(
        InputError, lambda: model.bounds(verifier.LinfBall(torch.zeros(2, 4), torch.tensor([0.1, 0.1, 0.1])))
    )


def test_a_ragged_specification_is_rejected(model):
    box = verifier.LinfBall(torch.zeros(2, 4), 0.1)
    raised(InputError, model.bounds, box, C=[[[1.0, 0.0]], [[1.0]]])


def test_loading_something_that_is_neither_a_path_nor_a_module():
    raised(InputError, verifier.load, 42)


def test_forward_casts_float64_input_to_the_model_precision(model):
    x = torch.randn(2, 4, dtype=torch.float64)
    y = model(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, model(x.float()), rtol=0, atol=0)

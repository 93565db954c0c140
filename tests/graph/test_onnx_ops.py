"""One small ONNX model per supported operator and variant, checked against onnxruntime.

Each case loads, reproduces onnxruntime's forward pass, has sound bounds for every method (sampled points
and corners of a random box), and bounds a batch of three boxes. A companion test fails when an operator in
``verifier.supported_onnx_operators()`` has no case here, so adding an operator means adding a case."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from graph_testing import Net, OnnxRunner, assert_sound
from onnx import TensorProto, helper, numpy_helper

import verifier

CASES: dict[str, Callable[[], onnx.ModelProto]] = {}


def case(name: str):
    """Register a model builder under ``name``."""

    def deco(build: Callable[[], onnx.ModelProto]):
        assert name not in CASES, f"case {name} defined twice"
        CASES[name] = build
        return build

    return deco


# ----------------------------------------------------------------------------------- linear and residual


@case("gemm_relu")
def _():
    n = Net([1, 5])
    return n.model(n.gemm(n.op("Relu", n.gemm("x", 5, 6)), 6, 3))


@case("gemm_transb_alpha_beta")
def _():
    n = Net([1, 4])
    h = n.op("Gemm", "x", n.rand(6, 4), n.rand(6), transB=1, alpha=0.7, beta=1.3)
    return n.model(n.op("Gemm", n.op("Relu", h), n.rand(2, 6), n.rand(1, 2), transB=1, alpha=-1.5, beta=0.5))


@case("gemm_scalar_c")
def _():
    n = Net([1, 4])
    return n.model(n.op("Relu", n.op("Gemm", "x", n.rand(4, 3), n.const(0.3))))


@case("matmul_const")
def _():
    n = Net([1, 6])
    h = n.op("Relu", n.op("Add", n.op("MatMul", "x", n.rand(6, 5)), n.rand(5)))
    return n.model(n.op("MatMul", h, n.rand(5, 3)))


@case("matmul_3d")
def _():
    n = Net([1, 3, 4])
    return n.model(n.op("Relu", n.op("MatMul", "x", n.rand(4, 2))))


@case("matmul_const_on_the_left")
def _():
    """``W @ x`` with x [1, 3, 4]: W maps each sample's columns."""
    n = Net([1, 3, 4])
    return n.model(n.op("Relu", n.op("MatMul", n.rand(5, 3), n.op("Relu", "x"))))


@case("add_const_either_side")
def _():
    n = Net([1, 4])
    h = n.op("Add", n.const(1.5), n.op("Add", n.gemm("x", 4, 5), n.rand(5)))
    return n.model(n.op("Relu", h))


@case("sub_const_either_side")
def _():
    n = Net([1, 4])
    h = n.op("Sub", n.rand(1, 5), n.op("Relu", n.op("Sub", n.gemm("x", 4, 5), n.const(0.2))))
    return n.model(n.op("Relu", h))


@case("mul_const_either_side")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("Mul", n.rand(2, 1, 1), n.op("Relu", n.op("Mul", "x", n.const(-2.0))))
    return n.model(n.op("Relu", n.conv(h, 2, 2, k=2)))


@case("div_const")
def _():
    n = Net([1, 1, 3, 3])
    h = n.op("Div", n.op("Sub", "x", n.const(0.1307)), n.const(0.3081))
    return n.model(n.op("Relu", n.op("Div", n.conv(h, 1, 2, k=2), n.const([[[2.0]], [[-4.0]]]))))


@case("add_const_broadcast_grows")
def _():
    n = Net([1, 1, 4])
    return n.model(n.op("Relu", n.op("Add", "x", n.rand(1, 3, 4))))


@case("residual_add")
def _():
    n = Net([1, 4])
    f = n.gemm(n.op("Relu", n.gemm("x", 4, 6)), 6, 4)
    return n.model(n.op("Relu", n.op("Add", "x", f)))


@case("residual_sub")
def _():
    n = Net([1, 2, 3, 3])
    f = n.conv(n.op("Relu", n.conv("x", 2, 2, pads=[1, 1, 1, 1])), 2, 2, pads=[1, 1, 1, 1])
    return n.model(n.op("Relu", n.op("Sub", f, "x")))


@case("neg")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Relu", n.op("Neg", n.gemm("x", 4, 5))), 5, 2))


@case("batchnorm_conv")
def _():
    n = Net([1, 3, 4, 4])
    stats = [n.rand(4), n.rand(4), n.rand(4), n.const(n.rng.uniform(0.5, 2.0, 4))]
    return n.model(n.op("Relu", n.op("BatchNormalization", n.conv("x", 3, 4, k=2), *stats, epsilon=1e-3)))


@case("batchnorm_gemm")
def _():
    n = Net([1, 4])
    stats = [n.rand(5), n.rand(5), n.rand(5), n.const(n.rng.uniform(0.5, 2.0, 5))]
    return n.model(n.op("Relu", n.op("BatchNormalization", n.gemm("x", 4, 5), *stats)))


# ------------------------------------------------------------------------------------------ convolutions


@case("conv2d_stride_pad_dilation_groups")
def _():
    n = Net([1, 4, 7, 7])
    w, b = n.rand(6, 2, 3, 3), n.rand(6)
    h = n.op("Conv", "x", w, b, strides=[2, 1], pads=[1, 2, 1, 2], dilations=[2, 1], group=2)
    return n.model(n.op("Relu", h))


@case("conv2d_relu_conv")
def _():
    n = Net([1, 2, 5, 5])
    return n.model(n.conv(n.op("Relu", n.conv("x", 2, 3)), 3, 2, k=2, strides=[2, 2]))


@case("conv1d")
def _():
    n = Net([1, 3, 10])
    h = n.op("Conv", "x", n.rand(4, 3, 3), n.rand(4), strides=[2], pads=[1, 1])
    return n.model(n.op("Conv", n.op("Relu", h), n.rand(4, 2, 2), dilations=[2], group=2))


@case("conv_transpose_stride_output_padding")
def _():
    n = Net([1, 3, 3, 3])
    h = n.op("ConvTranspose", "x", n.rand(3, 2, 3, 3), n.rand(2), strides=[2, 2], pads=[1, 1, 1, 1],
             output_padding=[1, 1])  # fmt: skip
    return n.model(n.op("Relu", h))


@case("conv_transpose_groups_dilation")
def _():
    n = Net([1, 4, 3, 3])
    h = n.op("ConvTranspose", "x", n.rand(4, 1, 2, 2), strides=[2, 1], dilations=[1, 2], group=2)
    return n.model(n.op("Relu", n.op("Relu", h)))


@case("conv_transpose_1d")
def _():
    n = Net([1, 2, 5])
    h = n.op("ConvTranspose", "x", n.rand(2, 3, 3), n.rand(3), strides=[2], pads=[1, 1], output_padding=[1])
    return n.model(n.op("Relu", n.op("ConvTranspose", n.op("Relu", h), n.rand(3, 1, 2), dilations=[2])))


@case("conv_asymmetric_pads")
def _():
    n = Net([1, 2, 5, 5])
    h = n.op("Conv", "x", n.rand(3, 2, 3, 3), n.rand(3), strides=[2, 1], pads=[0, 2, 1, 0])
    return n.model(n.op("Relu", h))


@case("conv1d_asymmetric_pads")
def _():
    n = Net([1, 2, 6])
    return n.model(n.op("Relu", n.op("Conv", "x", n.rand(2, 2, 3), pads=[2, 0])))


@case("conv_transpose_asymmetric_pads")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("ConvTranspose", "x", n.rand(2, 2, 3, 3), n.rand(2), strides=[2, 2], pads=[0, 1, 2, 0])
    return n.model(n.op("Relu", h))


# ------------------------------------------------------------------------------------------------ pooling


@case("maxpool_pad_stride")
def _():
    n = Net([1, 2, 5, 5])
    h = n.conv("x", 2, 3, pads=[1, 1, 1, 1])
    h = n.op("MaxPool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return n.model(n.gemm(n.op("Flatten", h), 27, 2))


@case("maxpool_plain")
def _():
    n = Net([1, 2, 4, 4])
    return n.model(n.op("MaxPool", "x", kernel_shape=[2, 2], strides=[2, 2]))


@case("maxpool_overlapping_dilated")
def _():
    n = Net([1, 1, 5, 5])
    return n.model(n.op("MaxPool", n.op("Relu", "x"), kernel_shape=[2, 2], dilations=[2, 2]))


@case("maxpool_1d")
def _():
    n = Net([1, 2, 7])
    return n.model(n.op("MaxPool", n.op("Relu", "x"), kernel_shape=[3], strides=[2], pads=[1, 1]))


@case("avgpool_count_include_pad_0")
def _():
    n = Net([1, 2, 5, 5])
    h = n.op("AveragePool", n.op("Relu", "x"), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return n.model(n.op("Relu", n.conv(h, 2, 1, k=2)))


@case("avgpool_count_include_pad_1")
def _():
    n = Net([1, 2, 5, 5])
    h = n.op("AveragePool", n.conv("x", 2, 2), kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    return n.model(n.op("Relu", h))


@case("avgpool_1d")
def _():
    n = Net([1, 2, 7])
    return n.model(n.op("Relu", n.op("AveragePool", "x", kernel_shape=[3], strides=[2])))


@case("global_average_pool")
def _():
    n = Net([1, 2, 4, 4])
    h = n.op("GlobalAveragePool", n.op("Relu", n.conv("x", 2, 3, pads=[1, 1, 1, 1])))
    return n.model(n.gemm(n.op("Flatten", h), 3, 2))


@case("global_average_pool_1d")
def _():
    n = Net([1, 3, 5])
    return n.model(n.op("GlobalAveragePool", n.op("Relu", "x")))


@case("maxpool_asymmetric_pads")
def _():
    """Pads that differ at the two ends; on a ReLU's output too, where -inf padding differs from 0."""
    n = Net([1, 2, 5, 5])
    h = n.op(
        "MaxPool", n.op("Neg", n.op("Relu", "x")), kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0]
    )
    return n.model(n.op("Relu", h))


@case("maxpool_1d_asymmetric_pads")
def _():
    n = Net([1, 2, 6])
    return n.model(
        n.op("MaxPool", n.op("Neg", n.op("Relu", "x")), kernel_shape=[3], strides=[2], pads=[2, 1])
    )


@case("avgpool_asymmetric_pads_count_include_pad_0")
def _():
    n = Net([1, 2, 5, 5])
    h = n.op("AveragePool", "x", kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0])
    return n.model(n.op("Relu", h))


@case("avgpool_asymmetric_pads_count_include_pad_1")
def _():
    n = Net([1, 2, 6])
    h = n.op("AveragePool", "x", kernel_shape=[3], strides=[2], pads=[2, 1], count_include_pad=1)
    return n.model(n.op("Relu", h))


# -------------------------------------------------------------------------------------------- activations


@case("leaky_relu")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("LeakyRelu", n.gemm("x", 4, 6), alpha=0.1), 6, 2))


@case("leaky_relu_steep")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("LeakyRelu", n.gemm("x", 4, 6), alpha=1.7), 6, 2))


@case("sigmoid")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Sigmoid", n.gemm("x", 4, 6)), 6, 2))


@case("tanh")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Tanh", n.gemm("x", 4, 6)), 6, 2))


@case("sigmoid_tanh_wide")
def _():
    n = Net([1, 3])
    h = n.op("Tanh", n.op("Mul", n.gemm("x", 3, 5), n.const(8.0)))
    return n.model(n.op("Sigmoid", n.op("Mul", n.gemm(h, 5, 3), n.const(6.0))))


# -------------------------------------------------------------------------------------------- data moves


@case("flatten")
def _():
    n = Net([1, 2, 2, 3])
    return n.model(n.gemm(n.op("Flatten", n.op("Relu", "x"), axis=1), 12, 2))


@case("reshape_const_shape")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("Reshape", n.op("Relu", n.conv("x", 2, 2, k=2)), n.ints(1, -1))
    return n.model(n.op("Reshape", n.gemm(h, 8, 6), n.ints(0, 3, 2)))


def _reshape_by_shape_subgraph(batch) -> onnx.ModelProto:
    """Reshape to [batch, -1] with the batch size read by Shape -> Gather -> Unsqueeze -> Concat."""
    n = Net([batch, 2, 3, 3])
    h = n.op("Relu", n.conv("x", 2, 2, k=2))
    size = n.op("Unsqueeze", n.op("Gather", n.op("Shape", h), n.const(0, np.int64), axis=0), n.ints(0))
    return n.model(n.gemm(n.op("Reshape", h, n.op("Concat", size, n.ints(-1), axis=0)), 8, 3))


@case("expand_folded_where_subgraph")
def _():
    """Expand to a shape computed as torch exports ``expand(-1, 4)``, from constants only:
    ``Where(Equal(s, -ones), ones, s)`` with ``ones = ConstantOfShape(2)``; folded at load time."""
    n = Net([1, 3])
    h = n.op("ReduceMean", n.op("Relu", n.gemm("x", 3, 4)), axes=[1], keepdims=1)
    target = n.ints(-1, 4)
    ones = n.op(
        "ConstantOfShape", n.ints(2), value=onnx.helper.make_tensor("one", TensorProto.INT64, [1], [1])
    )
    shape = n.op("Where", n.op("Equal", target, n.op("Mul", ones, n.ints(-1))), ones, target)
    return n.model(n.gemm(n.op("Expand", h, shape), 4, 2))


@case("sub_broadcast_mean")
def _():
    """``h - mean(h)`` over features (a normalisation's centring): Sub of two graph tensors, broadcast."""
    n = Net([1, 3])
    h = n.op("Relu", n.gemm("x", 3, 4))
    return n.model(n.gemm(n.op("Sub", h, n.op("ReduceMean", h, axes=[1], keepdims=1)), 4, 2))


@case("add_broadcast_outer")
def _():
    """A column plus a row: both operands broadcast, to [1, 2, 3]."""
    n = Net([1, 4])
    col = n.op("Reshape", n.gemm("x", 4, 2), n.ints(1, 2, 1))
    row = n.op("Reshape", n.op("Relu", n.gemm("x", 4, 3)), n.ints(1, 1, 3))
    return n.model(n.op("Flatten", n.op("Add", col, row), axis=1))


# ------------------------------------------------------------------- products of tensors, normalisations


@case("mul_two_tensors")
def _():
    """A product of two graph tensors (of opposite-sign ranges), then a layer."""
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Mul", n.gemm("x", 4, 5), n.op("Tanh", n.gemm("x", 4, 5))), 5, 2))


@case("mul_broadcast_square")
def _():
    """A column times a row (both broadcast), and a tensor times itself."""
    n = Net([1, 4])
    col = n.op("Reshape", n.gemm("x", 4, 2), n.ints(1, 2, 1))
    row = n.op("Reshape", n.op("Relu", n.gemm("x", 4, 3)), n.ints(1, 1, 3))
    outer = n.op("Flatten", n.op("Mul", col, row), axis=1)
    return n.model(n.op("Mul", outer, outer))


@case("div_two_tensors")
def _():
    """A quotient by a positive graph tensor (``exp(h) + 0.5``)."""
    n = Net([1, 4])
    den = n.op("Add", n.op("Exp", n.gemm("x", 4, 3)), n.const(0.5))
    return n.model(n.op("Div", n.gemm("x", 4, 3), den))


@case("matmul_two_tensors")
def _():
    """Attention-like scores: ``q @ k^T`` of two [2, 3] maps of the input, per head of a batch of 2."""
    n = Net([1, 6])
    q = n.op("Reshape", n.gemm("x", 6, 12), n.ints(1, 2, 2, 3))
    k = n.op("Transpose", n.op("Reshape", n.gemm("x", 6, 12), n.ints(1, 2, 2, 3)), perm=[0, 1, 3, 2])
    return n.model(n.op("MatMul", q, k))


@case("softmax_last_axis")
def _():
    n = Net([1, 2, 4])
    return n.model(n.op("Softmax", n.op("Relu", n.op("MatMul", "x", n.rand(4, 4))), axis=-1))


@case("softmax_middle_axis")
def _():
    n = Net([1, 3, 2])
    return n.model(n.op("Softmax", n.op("Add", "x", n.rand(3, 2)), axis=1))


@case("log_softmax_logits")
def _():
    n = Net([1, 4])
    return n.model(n.op("LogSoftmax", n.gemm(n.op("Relu", n.gemm("x", 4, 6)), 6, 3), axis=1))


@case("opset11_softmax_flattens_trailing_axes")
def _():
    """Before opset 13 Softmax normalises over all axes from ``axis`` on, taken as one."""
    n = Net([1, 2, 3])
    return n.model(n.op("Softmax", n.op("Add", "x", n.rand(2, 3)), axis=1), opset=11)


@case("opset11_softmax_last_of_runtime_shape")
def _():
    """Softmax-11 over the last of four axes of a tensor whose shape is known only at run time (a Reshape to
    a shape computed from ``Shape``, as the VNN-COMP ViTs do): lifting it to opset 13 wraps it in a Flatten
    that would merge the batch dimension into the rows; the loader keeps the batch."""
    n = Net([1, 12])
    batch = n.op("Unsqueeze", n.op("Gather", n.op("Shape", "x"), n.const(0, np.int64), axis=0), axes=[0])
    h = n.op("Reshape", n.op("Relu", n.gemm("x", 12, 12)), n.op("Concat", batch, n.ints(2, 2, 3), axis=0))
    out = n.op("Softmax", h, axis=3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, n.shape)
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    graph = helper.make_graph(n.nodes, "case", [x], [y], n.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    return model


@case("layer_norm")
def _():
    n = Net([1, 3, 4])
    h = n.op("Add", n.op("MatMul", "x", n.rand(4, 4)), n.rand(4))
    return n.model(n.op("LayerNormalization", h, n.rand(4), n.rand(4), axis=-1, epsilon=1e-5))


@case("layer_norm_two_axes_no_bias")
def _():
    n = Net([1, 2, 3])
    return n.model(n.op("LayerNormalization", n.op("Relu", "x"), n.rand(2, 3), axis=1, epsilon=1e-3))


case("reshape_folded_shape_subgraph")(lambda: _reshape_by_shape_subgraph(1))
case("reshape_folded_symbolic_batch")(lambda: _reshape_by_shape_subgraph("batch"))


@case("transpose")
def _():
    n = Net([1, 2, 3, 4])
    h = n.op("Transpose", n.conv("x", 2, 3, k=2), perm=[0, 2, 3, 1])
    return n.model(n.op("Relu", n.op("MatMul", h, n.rand(3, 2))))


@case("concat_graph_tensors")
def _():
    n = Net([1, 4])
    h = n.op("Concat", n.op("Relu", n.gemm("x", 4, 3)), n.gemm("x", 4, 2), "x", axis=1)
    return n.model(n.gemm(n.op("Relu", h), 9, 2))


@case("concat_with_constant")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("Concat", n.rand(1, 1, 3, 3), n.op("Relu", "x"), n.rand(1, 2, 3, 3), axis=1)
    return n.model(n.op("Relu", n.conv(h, 5, 2, k=2)))


@case("slice_steps")
def _():
    n = Net([1, 3, 6, 5])
    h = n.op("Slice", n.op("Relu", "x"), n.ints(1, 0, -1), n.ints(3, 6, 0), n.ints(1, 2, 3), n.ints(1, 2, -2))
    return n.model(n.op("Relu", n.conv(h, 2, 2, k=2)))


@case("slice_default_axes")
def _():
    n = Net([1, 8])
    return n.model(n.op("Relu", n.op("Slice", n.gemm("x", 8, 8), n.ints(0, 1), n.ints(1, 7))))


@case("gather_axis1")
def _():
    n = Net([1, 5])
    h = n.op("Gather", n.op("Relu", n.gemm("x", 5, 4)), n.ints(2, 0, -1, 2), axis=1)
    return n.model(n.gemm(h, 4, 2))


@case("gather_scalar_index")
def _():
    n = Net([1, 2, 3, 4])
    h = n.op("Gather", n.op("Relu", "x"), n.const(1, np.int64), axis=2)
    return n.model(n.op("Relu", n.op("Sub", h, n.const(0.5))))


@case("squeeze_unsqueeze")
def _():
    n = Net([1, 3, 1, 4])
    h = n.op("Unsqueeze", n.op("Squeeze", n.op("Relu", "x"), n.ints(2)), n.ints(1, -1))
    return n.model(n.op("Relu", n.op("Sub", h, n.const(0.5))))


@case("identity")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Identity", n.op("Relu", n.op("Identity", "x"))), 4, 2))


@case("dropout")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Dropout", n.op("Relu", n.gemm("x", 4, 5))), 5, 2))


@case("cast_to_float")
def _():
    n = Net([1, 4])
    return n.model(n.gemm(n.op("Cast", n.op("Relu", n.gemm("x", 4, 5)), to=TensorProto.FLOAT), 5, 2))


@case("expand")
def _():
    n = Net([1, 3, 1])
    return n.model(n.op("Relu", n.op("Sub", n.op("Expand", "x", n.ints(1, 3, 4)), n.rand(3, 4))))


@case("tile")
def _():
    n = Net([1, 2, 2])
    return n.model(n.op("Relu", n.op("Add", n.op("Tile", "x", n.ints(1, 2, 3)), n.rand(4, 6))))


@case("constant")
def _():
    n = Net([1, 4])
    shift = n.op("Constant", value=numpy_helper.from_array(np.array([0.5, -1.0, 0.0, 2.0], np.float32)))
    shape = n.op("Constant", value=numpy_helper.from_array(np.array([1, 2, 2], np.int64)))
    return n.model(n.op("Relu", n.op("Reshape", n.op("Add", "x", shift), shape)))


@case("pad_constant_value")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("Pad", n.op("Relu", "x"), n.ints(0, 0, 1, 2, 0, 0, 2, 0), n.const(0.75), mode="constant")
    return n.model(n.op("Relu", n.conv(h, 2, 2)))


@case("pad_reflect")
def _():
    n = Net([1, 2, 4, 4])
    h = n.op("Pad", n.conv("x", 2, 2, k=2), n.ints(0, 0, 1, 2, 0, 0, 2, 1), mode="reflect")
    return n.model(n.op("Relu", h))


@case("split_pieces_used_apart")
def _():
    n = Net([1, 2, 6])
    x = n.op("Relu", "x")
    n.nodes.append(onnx.helper.make_node("Split", [x, n.ints(2, 4)], ["s0", "s1"], axis=2, name="/split"))
    return n.model(n.op("Add", "s0", n.op("Slice", "s1", n.ints(0), n.ints(2), n.ints(2))))


@case("split_equal_one_piece_unused")
def _():
    n = Net([1, 6, 2])
    n.nodes.append(onnx.helper.make_node("Split", ["x"], ["s0", "s1", "s2"], axis=1, name="/split"))
    return n.model(n.op("Relu", n.op("Sub", "s2", "s0")))


@case("resize_nearest")
def _():
    n = Net([1, 2, 2, 3])
    scales = n.const([1, 1, 2, 1.5])
    h = n.op("Resize", n.op("Relu", "x"), "", scales, mode="nearest", coordinate_transformation_mode="asymmetric",
             nearest_mode="floor")  # fmt: skip
    return n.model(n.op("Relu", n.conv(h, 2, 1, k=2)))


@case("resize_linear_half_pixel_scales")
def _():
    n = Net([1, 2, 3, 4])
    return n.model(
        n.op("Relu", n.op("Resize", n.conv("x", 2, 2, k=1), "", n.const([1, 1, 2, 0.5]), mode="linear"))
    )


@case("resize_linear_align_corners_sizes")
def _():
    n = Net([1, 2, 3, 3])
    h = n.op("Resize", n.op("Relu", "x"), "", "", n.ints(1, 2, 5, 4), mode="linear",
             coordinate_transformation_mode="align_corners")  # fmt: skip
    return n.model(n.op("Sub", h, n.const(0.5)))


@case("resize_linear_1d")
def _():
    n = Net([1, 2, 4])
    return n.model(n.op("Resize", n.op("Relu", "x"), "", n.const([1, 1, 1.5]), mode="linear"))


@case("opset9_upsample_nearest")
def _():
    n = Net([1, 1, 2, 2])
    h = n.op("Upsample", n.op("Relu", "x"), n.const([1, 1, 2, 3]), mode="nearest")
    return n.model(n.op("Relu", n.op("Sub", h, n.const(0.25))), opset=9)


@case("reduce_sum_axes_input")
def _():
    n = Net([1, 2, 3, 4])
    h = n.op("ReduceSum", n.op("Relu", n.conv("x", 2, 3, k=1)), n.ints(-1, 1), keepdims=0)
    return n.model(n.gemm(h, 3, 2))


@case("reduce_mean_attribute_keepdims")
def _():
    n = Net([1, 2, 3, 4])
    return n.model(n.op("Relu", n.op("ReduceMean", n.conv("x", 2, 3, k=1), axes=[2, 3])))


@case("reduce_mean_of_reduce_sum_noop")
def _():
    n = Net([1, 3, 4])
    h = n.op("ReduceSum", n.op("Relu", "x"), n.const([], np.int64), noop_with_empty_axes=1)
    return n.model(n.op("ReduceMean", h, axes=[-1], keepdims=0))


# --------------------------------------------------------------------------- convex / concave elementwise
# Each function between two Gemms (inputs of restricted domains go through Exp, plus a shift, first), so that
# CROWN has correlations to exploit: ``test_crown_not_looser_than_ibp`` checks that it does.


def _between_gemms(op_type: str, positive: bool = False, *consts, **attrs) -> onnx.ModelProto:
    n = Net([1, 4], seed=len(op_type))
    h = n.gemm("x", 4, 5)
    if positive:
        h = n.op("Add", n.op("Exp", h), n.const(0.25))
    return n.model(n.gemm(n.op(op_type, h, *[n.const(c) for c in consts], **attrs), 5, 3))


ELEMENTWISE = {
    "elementwise_exp": lambda: _between_gemms("Exp"),
    "elementwise_log": lambda: _between_gemms("Log", True),
    "elementwise_sqrt": lambda: _between_gemms("Sqrt", True),
    "elementwise_reciprocal": lambda: _between_gemms("Reciprocal", True),
    "elementwise_softplus": lambda: _between_gemms("Softplus"),
    "elementwise_pow_square": lambda: _between_gemms("Pow", False, 2.0),
    "elementwise_pow_cube_positive": lambda: _between_gemms("Pow", True, 3.0),
    "elementwise_pow_half": lambda: _between_gemms("Pow", True, 0.5),
    "elementwise_pow_inverse_square": lambda: _between_gemms("Pow", True, -2.0),
    "elementwise_abs": lambda: _between_gemms("Abs"),
    "elementwise_sin": lambda: _between_gemms("Sin"),
    "elementwise_cos": lambda: _between_gemms("Cos"),
    "elementwise_erf": lambda: _between_gemms("Erf"),
    "elementwise_clip": lambda: _between_gemms("Clip", False, -0.3, 0.4),
    "elementwise_clip_min": lambda: _between_gemms("Clip", False, 0.1),
    "elementwise_clip_relu6": lambda: _between_gemms("Clip", False, 0.0, 6.0),
    "elementwise_pow_cube": lambda: _between_gemms("Pow", False, 3.0),
    "elementwise_pow_fifth": lambda: _between_gemms("Pow", False, 5.0),
    "elementwise_max_constant": lambda: _between_gemms("Max", False, 0.2),
    "elementwise_min_constant": lambda: _between_gemms("Min", False, -0.1),
}
for _name, _build in ELEMENTWISE.items():
    case(_name)(_build)


@case("one_node_clip_max_only")
def _():
    n = Net([1, 5])
    return n.model(n.op("Clip", "x", "", n.const(0.2)))


@case("opset6_clip_attributes")
def _():
    n = Net([1, 5])
    return n.model(n.op("Clip", "x", min=-0.5, max=0.5), opset=6)


def _one_node(op_type: str, *consts) -> onnx.ModelProto:
    """The function alone on the input (defined on every box the generic tests draw)."""
    n = Net([1, 5])
    return n.model(n.op(op_type, "x", *[n.const(c) for c in consts]))


ONE_NODE = {
    "one_node_exp": ("Exp",),
    "one_node_softplus": ("Softplus",),
    "one_node_pow_square": ("Pow", 2.0),
    "one_node_abs": ("Abs",),
    "one_node_sin": ("Sin",),
    "one_node_cos": ("Cos",),
    "one_node_clip": ("Clip", -0.25, 0.5),
    "one_node_erf": ("Erf",),
    "one_node_pow_cube": ("Pow", 3.0),
    "one_node_sign": ("Sign",),
    "one_node_floor": ("Floor",),
    "one_node_ceil": ("Ceil",),
    "one_node_round": ("Round",),
}
for _name, _args in ONE_NODE.items():
    case(_name)(lambda args=_args: _one_node(*args))


def _steps_between_gemms(op_type: str) -> onnx.ModelProto:
    """A step function of a scaled Gemm (several jumps inside the boxes), then a Gemm."""
    n = Net([1, 4], seed=len(op_type))
    return n.model(n.gemm(n.op(op_type, n.op("Mul", n.gemm("x", 4, 5), n.const(3.0))), 5, 3))


for _kind in ("Sign", "Floor", "Ceil", "Round"):
    case(f"steps_{_kind.lower()}")(lambda kind=_kind: _steps_between_gemms(kind))


@case("gelu_opset20")
def _():
    n = Net([1, 4])
    h = n.gemm("x", 4, 5)
    both = n.op("Concat", n.op("Gelu", h), n.op("Gelu", h, approximate="tanh"), axis=1)
    return n.model(n.gemm(both, 10, 3), opset=20)


@case("max_min_of_graph_tensors")
def _():
    n = Net([1, 4])
    a, b, c = n.gemm("x", 4, 5), n.gemm("x", 4, 5), n.gemm("x", 4, 1)
    top = n.op("Max", a, b)  # two graph tensors
    low = n.op("Min", a, b, c, n.rand(5))  # three graph tensors (one broadcast) and a constant
    return n.model(n.gemm(n.op("Concat", top, low, n.op("Max", c), axis=1), 11, 3))


@case("reduce_max_min")
def _():
    n = Net([1, 2, 3, 4])
    h = n.conv("x", 2, 3, k=1)
    top = n.op("ReduceMax", h, axes=[1, 3], keepdims=0)  # [1, 3]
    low = n.op("Flatten", n.op("ReduceMin", h, axes=[-1], keepdims=1), axis=1)  # [1, 9]
    return n.model(n.gemm(n.op("Concat", top, low, axis=1), 12, 3))


# ---------------------------------------------------------------------------------------- older opsets


@case("opset8_matmul_sub_flatten")
def _():
    n = Net([1, 1, 1, 5])
    h = n.op("Flatten", n.op("Sub", "x", n.rand(1, 1, 1, 5)), axis=1)
    h = n.op("Relu", n.op("Add", n.op("MatMul", h, n.rand(5, 6)), n.rand(6)))
    return n.model(n.op("Add", n.op("MatMul", h, n.rand(6, 3)), n.rand(3)), opset=8)


@case("opset9_gemm_slice")
def _():
    n = Net([1, 6])
    h = n.op("Mul", n.op("Relu", n.gemm("x", 6, 6)), n.rand(6))
    return n.model(n.op("Slice", h, starts=[1], ends=[5], axes=[1]), opset=9)


@case("opset11_squeeze_unsqueeze_attrs")
def _():
    n = Net([1, 3, 1, 2])
    h = n.op("Unsqueeze", n.op("Squeeze", n.op("Relu", "x"), axes=[2]), axes=[3])
    return n.model(n.op("Reshape", h, n.ints(1, 6)), opset=11)


@case("opset13_conv_maxpool_reshape")
def _():
    n = Net([1, 1, 6, 6])
    h = n.op("MaxPool", n.op("Relu", n.conv("x", 1, 2)), kernel_shape=[2, 2], strides=[2, 2])
    return n.model(n.gemm(n.op("Reshape", h, n.ints(1, 8)), 8, 3), opset=13)


@case("opset18_split_num_outputs")
def _():
    """Split-18 with ``num_outputs`` over an axis it does not divide (chunks of 3, 3, 1)."""
    n = Net([1, 7, 2])
    a, b, c = "pa", "pb", "pc"
    n.nodes.append(
        helper.make_node("Split", [n.op("Relu", "x")], [a, b, c], axis=1, num_outputs=3, name="/split")
    )
    h = n.op("Concat", n.op("Neg", c), a, axis=1)
    return n.model(
        n.op("Add", n.op("Flatten", h), n.op("ReduceSum", n.op("Flatten", b), n.ints(1))), opset=18
    )


@case("opset19_constants")
def _():
    n = Net([1, 4])
    scale = n.op("Constant", value=numpy_helper.from_array(np.array([0.5, -1.0, 2.0, 0.25], np.float32)))
    shift = n.op("Constant", value_float=0.3)
    return n.model(n.op("Relu", n.op("Add", n.op("Mul", n.gemm("x", 4, 4), scale), shift)), opset=19)


# -------------------------------------------------------------------------------------------------- tests


class Built:
    """One case written to disk, loaded, with its onnxruntime session and a box around a random point."""

    def __init__(self, name: str, folder: Path):
        self.proto = CASES[name]()
        self.path = folder / f"{name}.onnx"
        onnx.save(self.proto, self.path)
        self.runner = OnnxRunner(self.path)
        self.model = verifier.load(self.path)
        self.name = name

    def generator(self, purpose: str) -> torch.Generator:
        """Seeded by case and purpose, so a test draws the same numbers however the run is filtered."""
        return torch.Generator().manual_seed(zlib.crc32(f"{self.name}/{purpose}".encode()))

    def random_box(self, batch: int = 1) -> verifier.Box:
        gen, shape = self.generator(f"box{batch}"), (batch, *self.model.input_shape)
        centre = torch.randn(shape, generator=gen)
        radius = 0.5 * torch.rand(shape, generator=gen)
        return verifier.Box(centre - radius, centre + radius)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_ops")
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name, folder)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_loads_with_onnxruntime_shapes(name, built):
    case_ = built(name)
    declared = tuple(d.dim_value or 1 for d in case_.proto.graph.input[0].type.tensor_type.shape.dim)
    assert case_.model.has_batch_dim
    assert (1, *case_.model.input_shape) == declared
    assert case_.model.output_shape == tuple(case_.runner(torch.zeros(1, *case_.model.input_shape)).shape[1:])


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_onnxruntime(name, built):
    case_ = built(name)
    x = torch.randn(1, *case_.model.input_shape, generator=case_.generator("forward"))
    np.testing.assert_allclose(case_.model(x).numpy(), case_.runner(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_bounds_contain_sampled_outputs(name, built):
    case_ = built(name)
    assert_sound(case_.model, case_.random_box(), case_.runner)


@pytest.mark.parametrize("name", list(CASES))
def test_batch_of_three_boxes(name, built):
    case_ = built(name)
    assert_sound(case_.model, case_.random_box(batch=3), case_.runner, n=20)


def test_every_supported_operator_has_a_case():
    used = {node.op_type for build in CASES.values() for node in build().graph.node}
    missing = set(verifier.supported_onnx_operators()) - used
    assert not missing, f"supported ONNX operators without a case in CASES: {sorted(missing)}"


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_crown_not_looser_than_ibp(name, built):
    """On small boxes (radius at most 0.005) CROWN's lines beat IBP's loss of correlations. (Not on every box:
    on a wide box the tangent line of a steep convex function sits far below it, and IBP is exact for an
    elementwise function of independent inputs.)"""
    case_ = built(name)
    wide = case_.random_box(batch=3)
    centre, radius = (wide.upper + wide.lower) / 2, (wide.upper - wide.lower) / 200
    box = verifier.Box(centre - radius, centre + radius)
    assert_sound(case_.model, box, case_.runner, n=20)
    ibp_lo, ibp_hi = case_.model.bounds(box, method="ibp")
    lo, hi = case_.model.bounds(box, method="crown")
    assert (lo >= ibp_lo - 1e-5).all() and (hi <= ibp_hi + 1e-5).all(), f"{name}: CROWN looser than IBP"

"""Translations into the affine operators of ``verifier.ops.linear``: Linear (nn.Linear, F.linear, Gemm,
MatMul by a constant), ScaleShift (Add/Sub/Mul/Div by a constant, Neg, inference BatchNorm), Sum (Add/Sub of
graph tensors) and the live BatchNorm; products and quotients of two graph tensors go to ``product``."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, MovesBatch, Onnx2TorchClass, converts
from verifier.graph.converters.product import matmul, product, quotient
from verifier.ops.linear import BatchNorm, LeftLinear, Linear, ScaleShift, Sum

# onnx2torch's modules, named without importing it (see ``Onnx2TorchClass``)
OnnxBatchNorm = Onnx2TorchClass("batch_norm", "OnnxBatchNorm")
OnnxBinaryMathOperation = Onnx2TorchClass("binary_math_operations", "OnnxBinaryMathOperation")
OnnxGemm = Onnx2TorchClass("gemm", "OnnxGemm")
OnnxMatMul = Onnx2TorchClass("matmul", "OnnxMatMul")
OnnxNeg = Onnx2TorchClass("neg", "OnnxNeg")


@converts(nn.Linear, onnx=("Gemm",))
def _linear_module(call) -> Linear:
    return Linear(call.param(call.target.weight), call.param(call.target.bias))


@converts(F.linear)
def _linear_function(call) -> Linear:
    return Linear(call.param(call.const(1, "weight")), call.param(call.const(2, "bias", None)))


@converts(OnnxMatMul, torch.matmul, operator.matmul, "matmul", onnx=("MatMul",))
def _matmul(call):
    """``data @ W`` with a constant matrix W; ``W @ data`` over the second-to-last dimension of a sample of
    rank 2 or more (or, for an unbatched 1-d input, W x); the product of two graph tensors is a composite
    of products (``product.matmul``)."""
    if len(call.args) == 2 and len(call.data) == 2:
        return matmul(call.in_shapes, call.out_dtype)
    if len(call.args) != 2 or len(call.data) != 1:
        raise ConversionError("MatMul needs two operands")
    w = call.args[1 - call.data_positions[0]].detach()
    if w.dim() != 2:
        raise ConversionError(f"MatMul by a constant of rank {w.dim()} (only matrices are supported)")
    if call.data_positions == [0]:
        return Linear(w.T.contiguous())
    if len(call.in_shapes[0]) >= 2:
        return LeftLinear(w.contiguous())
    if call.batched:  # W [p, 1] @ x [1, n]: the batch of one is the product's inner dimension
        raise MovesBatch("MatMul with a constant on the left of a batch of vectors")
    return Linear(w.contiguous())


@converts(OnnxGemm, onnx=("Gemm",))
def _gemm(call) -> Linear:
    gemm = call.target
    if call.data_positions != [0] or gemm.trans_a:
        raise ConversionError("Gemm needs a graph tensor as A (not transposed) and constant B, C")
    b = call.args[1].detach()
    weight = gemm.alpha * (b if gemm.trans_b else b.T)
    c = call.args[2] if len(call.args) > 2 else None
    return Linear(weight.contiguous(), None if c is None else gemm.beta * c.detach().reshape(-1))


_BINARY = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}
_OPERATORS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
              "add": "add", "sub": "sub", "mul": "mul", "div": "div"}  # fmt: skip


@converts(OnnxBinaryMathOperation, onnx=("Add", "Sub", "Mul", "Div"))
def _onnx_binary(call):
    # onnx2torch is loaded (the target is one of its modules); its own division is ONNX Div
    from onnx2torch.node_converters.binary_math_operations import _onnx_div

    function = call.target.math_op_function
    name = "div" if function is _onnx_div else _BINARY.get(function)
    if name is None or call.target.broadcast == 1:
        raise ConversionError("binary operation without bound rules")
    return _binary(call, name)


@converts(torch.add, torch.sub, torch.mul, torch.div, *_OPERATORS)
def _torch_binary(call):
    name = _BINARY.get(call.target) or _OPERATORS[call.target]
    if call.kwargs.get("alpha", 1) != 1:
        raise ConversionError("add/sub with alpha != 1")
    return _binary(call, name)


def _binary(call, name: str):
    """Add/Sub/Mul/Div with one constant operand become ScaleShift; Add/Sub of two graph tensors a Sum,
    Mul and Div of two graph tensors products (``product``)."""
    data = call.data_positions
    if len(data) == 2 and name in ("mul", "div"):
        return product(call.in_shapes) if name == "mul" else quotient(call.in_shapes, call.out_dtype)
    if len(data) == 2:
        signs = (1.0, 1.0 if name == "add" else -1.0)
        if call.in_shapes[0] == call.in_shapes[1]:
            return Sum(signs)
        out = call.out_shape
        for shape in call.in_shapes:
            padded = (1,) * (len(out) - len(shape)) + tuple(shape)
            if len(shape) > len(out) or any(p not in (1, o) for p, o in zip(padded, out)):
                raise ConversionError(
                    f"{name} of graph tensors with shapes {call.in_shapes} (broadcast over the batch)"
                )
        return Sum(signs, tuple(tuple(s) for s in call.in_shapes), tuple(out))
    const = torch.as_tensor(call.args[1 - data[0]]).detach()
    if not const.is_floating_point():
        const = const.to(torch.get_default_dtype())
    left = data[0] == 0
    if name == "add":
        return ScaleShift(shift=const)
    if name == "sub":
        return ScaleShift(shift=-const) if left else ScaleShift(scale=-torch.ones_like(const), shift=const)
    if name == "mul":
        return ScaleShift(scale=const)
    if not left:
        raise ConversionError("division by a graph tensor is not affine")
    if (const == 0).any():
        raise ConversionError("division by a constant containing zero")
    return ScaleShift(scale=1.0 / const)


@converts(OnnxNeg, torch.neg, operator.neg, "neg", onnx=("Neg",))
def _neg(call) -> ScaleShift:
    return ScaleShift(scale=-torch.ones(()))


@converts(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, onnx=("BatchNormalization",))
def _batch_norm(call) -> ScaleShift | BatchNorm:
    bn = call.target
    if bn.running_mean is None:
        raise ConversionError("BatchNorm without running statistics")
    if call.live:
        return BatchNorm(bn, len(call.in_shapes[0]))
    return _scale_shift_bn(call, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)


@converts(OnnxBatchNorm, onnx=("BatchNormalization",))
def _onnx_batch_norm(call) -> ScaleShift:
    if call.data_positions != [0]:
        raise ConversionError("BatchNorm with statistics computed in the graph")
    return _scale_shift_bn(call, *call.args[1:5], call.target.epsilon)


def _scale_shift_bn(call, gamma, beta, mean, var, eps) -> ScaleShift:
    """Inference BatchNorm: ``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel (dim 1 of the input)."""
    mean, var = mean.detach(), var.detach()
    gamma = torch.ones_like(mean) if gamma is None else gamma.detach()
    beta = torch.zeros_like(mean) if beta is None else beta.detach()
    scale = gamma / torch.sqrt(var + eps)
    shape = (-1,) + (1,) * (len(call.in_shapes[0]) - 1)
    return ScaleShift(scale=scale.reshape(shape), shift=(beta - mean * scale).reshape(shape))

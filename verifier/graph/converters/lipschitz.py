"""Translations of the Lipschitz-bounded layers of ``verifier.lipschitz.layers``: each layer is kept whole
by the fx tracer and becomes the affine maps of its current parameters (Linear, ReLU between the Sandwich's
halves); :class:`SandwichConv2d` the same, its FFT-realised convolutions materialised as dense matrices over
the flattened image (the engine has no FFT rule; a dense map is exact and sound, and affordable only for small
inputs: above ``MAX_DENSE_ENTRIES`` loading refuses, naming the node); MaxMin becomes a composite ``(b + relu(a - b), a - relu(a - b))`` of existing operators.

MaxMin's one ReLU node serves both outputs: a specification row ``c_1 max + c_2 min`` meets it with the
coefficient ``c_1 - c_2``, so ``max + min = a + b`` is bounded exactly, and a split or an alpha-CROWN slope
of that neuron acts on the pair at once. (Max and min relaxed on their own would each pick their own lines
of ``relu(a - b)`` and lose that correlation.)"""

from __future__ import annotations

import torch

from verifier.graph.converters.base import Composite, ConversionError, Steps, converts
from verifier.lipschitz.layers import AOLLinear, MaxMin, OrthogonalLinear, SandwichConv2d, SandwichLayer
from verifier.ops.activations import ReLU
from verifier.ops.linear import Linear, Sum
from verifier.ops.shape import Rearrange

MAX_DENSE_ENTRIES = 1 << 22  # per materialised matrix of a SandwichConv2d (32 MiB in float64)


def maxmin(shape: tuple[int, ...], axis: int, dtype: torch.dtype) -> Composite:
    """MaxMin over the per-sample dimension ``axis`` (of even size) of a tensor of per-sample ``shape``."""
    if shape[axis] % 2:
        raise ConversionError(f"MaxMin over a dimension of odd size {shape[axis]}")
    n = int(torch.Size(shape).numel())
    first, second = torch.arange(n).reshape(shape).chunk(2, dim=axis)
    half = tuple(first.shape)
    steps = Steps([shape], dtype)
    a = steps.add(Rearrange((n,), half, first.flatten()), 0)
    b = steps.add(Rearrange((n,), half, second.flatten()), 0)
    r = steps.add(ReLU(), steps.add(Sum((1.0, -1.0)), a, b))
    high = steps.add(Sum((1.0, 1.0)), b, r)  # max(a, b) = b + relu(a - b)
    low = steps.add(Sum((1.0, -1.0)), a, r)  # min(a, b) = a - relu(a - b)
    m = first.numel()
    joined = torch.cat([torch.arange(m).reshape(half), torch.arange(m, 2 * m).reshape(half)], dim=axis)
    steps.add(Rearrange((m, m), shape, joined.flatten()), high, low)
    return steps.done()


@converts(MaxMin)
def _maxmin(call) -> Composite:
    rank = len(call.in_shapes[0]) + call.batched
    dim = call.target.dim % rank
    if call.batched and dim == 0:
        raise ConversionError("MaxMin over the batch dimension")
    return maxmin(call.in_shapes[0], dim - call.batched, call.out_dtype)


def _constant(call, t: torch.Tensor | None) -> torch.Tensor | None:
    """A weight computed from the layer's free parameters: a constant of the graph (a live graph refuses
    it, naming the node: it would not follow the parameters)."""
    return None if t is None else t.detach().to(call.out_dtype)


@converts(SandwichLayer)
def _sandwich(call) -> Linear | Composite:
    layer = call.target
    with torch.no_grad():
        w_in, w_out = layer.weights()
    first = Linear(_constant(call, w_in), _constant(call, layer.bias))
    if w_out is None:
        return first
    steps = Steps(call.in_shapes, call.out_dtype)
    steps.add(Linear(_constant(call, w_out)), steps.add(ReLU(), steps.add(first, 0)))
    return steps.done()


@converts(SandwichConv2d)
def _sandwich_conv(call) -> Composite:
    """``[in, n, n] -> flatten -> Linear(W_in, b) -> ReLU -> Linear(W_out) -> [out, n, n]`` (the second
    Linear and the ReLU absent without activation), with the layer's current maps as dense matrices."""
    layer = call.target
    n = layer.input_size
    d_in, d_out = layer.in_channels * n * n, layer.out_channels * n * n
    if tuple(call.in_shapes[0]) != (layer.in_channels, n, n):
        raise ConversionError(
            f"input of shape {tuple(call.in_shapes[0])}, built for {(layer.in_channels, n, n)}"
        )
    if d_out * max(d_in, d_out) > MAX_DENSE_ENTRIES:
        raise ConversionError(
            f"dense maps of {d_out} x {max(d_in, d_out)} entries exceed MAX_DENSE_ENTRIES = {MAX_DENSE_ENTRIES}"
            " (the layer is loaded as explicit matrices: use a smaller input)"
        )
    with torch.no_grad():
        w_in, bias, w_out = layer.dense_weights()
    steps = Steps(call.in_shapes, call.out_dtype)
    k = steps.add(
        Linear(_constant(call, w_in), _constant(call, bias)), steps.add(Rearrange((d_in,), (d_in,)), 0)
    )
    if w_out is not None:
        k = steps.add(Linear(_constant(call, w_out)), steps.add(ReLU(), k))
    steps.add(Rearrange((d_out,), (layer.out_channels, n, n)), k)
    return steps.done()


@converts(AOLLinear)
def _aol(call) -> Linear:
    layer = call.target
    with torch.no_grad():
        return Linear(_constant(call, layer.rescaled_weight()), _constant(call, layer.bias))


@converts(OrthogonalLinear)
def _orthogonal(call) -> Linear:
    layer = call.target
    with torch.no_grad():
        return Linear(_constant(call, layer.orthogonal_weight()), _constant(call, layer.bias))

"""Translations of the Lipschitz-bounded layers of ``verifier.lipschitz.layers``: each layer is kept whole
by the fx tracer and becomes the affine maps of its current parameters (Linear, ReLU between the Sandwich's
halves); MaxMin becomes a composite ``(b + relu(a - b), a - relu(a - b))`` of existing operators.

MaxMin's one ReLU node serves both outputs: a specification row ``c_1 max + c_2 min`` meets it with the
coefficient ``c_1 - c_2``, so ``max + min = a + b`` is bounded exactly, and a split or an alpha-CROWN slope
of that neuron acts on the pair at once. (Max and min relaxed on their own would each pick their own lines
of ``relu(a - b)`` and lose that correlation.)"""

from __future__ import annotations

import torch

from verifier.graph.converters.base import Composite, ConversionError, Steps, converts
from verifier.lipschitz.layers import AOLLinear, MaxMin, OrthogonalLinear, SandwichLayer
from verifier.ops.activations import ReLU
from verifier.ops.linear import Linear, Sum
from verifier.ops.shape import Rearrange


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

"""Translations into products of two graph tensors (``verifier.ops.product``): Mul with broadcasting, Div by
a graph tensor (``x * y ** -1``) and MatMul of two graph tensors (a broadcast product summed over the shared
dimension), the last two as composites of bounded operators."""

from __future__ import annotations

import torch

from verifier.graph.converters.base import Composite, ConversionError, Steps
from verifier.ops.elementwise import Power
from verifier.ops.product import Product
from verifier.ops.reduce import Reduce
from verifier.ops.shape import Rearrange


def broadcast_shape(shapes: list[tuple[int, ...]], what: str) -> tuple[int, ...]:
    """numpy's broadcast of per-sample shapes (the batch dimension is never broadcast)."""
    try:
        return tuple(torch.broadcast_shapes(*[torch.Size(s) for s in shapes]))
    except RuntimeError as exc:
        raise ConversionError(f"{what} of graph tensors with shapes {shapes} do not broadcast") from exc


def product(shapes: list[tuple[int, ...]]) -> Product:
    """The Product of two graph tensors of these per-sample shapes."""
    out = broadcast_shape(shapes, "product")
    if all(tuple(s) == out for s in shapes):
        return Product()
    return Product(tuple(tuple(s) for s in shapes), out)


def quotient(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> Composite:
    """``x / y`` as ``x * y ** -1`` (bounded where y keeps one sign: the reciprocal refuses the rest)."""
    steps = Steps(shapes, dtype)
    inverse = steps.add(Power(-1.0), 1)
    steps.add(product([shapes[0], steps.shape(inverse)]), 0, inverse)
    return steps.done()


def matmul(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> Composite:
    """``x @ y`` of two graph tensors [..., i, k] and [..., k, j]: ``x[..., i, k, 1] * y[..., 1, k, j]``
    summed over k, each product relaxed on its own (leading dimensions broadcast)."""
    (x, y) = shapes
    if len(x) < 2 or len(y) < 2 or x[-1] != y[-2]:
        raise ConversionError(
            f"MatMul of graph tensors with per-sample shapes {x} and {y} (rank >= 2 needed)"
        )
    steps = Steps(shapes, dtype)
    size = lambda s: int(torch.Size(s).numel())
    left = steps.add(Rearrange((size(x),), (*x, 1)), 0)
    right = steps.add(Rearrange((size(y),), (*y[:-2], 1, *y[-2:])), 1)
    terms = steps.add(product([steps.shape(left), steps.shape(right)]), left, right)
    rank = len(steps.shape(terms))
    steps.add(Reduce((rank - 2,)), terms)
    return steps.done()

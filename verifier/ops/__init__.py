"""Operators, one module per family; importing this package registers every operator. No front end is
known here: their spellings in torch.fx and ONNX, and the translation, are in ``verifier.graph.converters``."""

from verifier.ops import (  # noqa: F401
    activations,
    conv,
    elementwise,
    linear,
    periodic,
    piecewise,
    pooling,
    product,
    reduce,
    resize,
    shape,
    smooth,
    steps,
)
from verifier.ops.base import OPS, Affine, Nonlinear, Op, Relaxation, RelaxConfig  # noqa: F401

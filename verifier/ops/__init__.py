"""Operators, one module per family; importing this package registers every operator and converter."""

from verifier.graph import onnx2torch_compat  # noqa: F401  (before the modules that import onnx2torch)
from verifier.ops import (  # noqa: F401
    activations,
    conv,
    elementwise,
    linear,
    normalisation,
    periodic,
    piecewise,
    pooling,
    product,
    reduce,
    resize,
    shape,
)
from verifier.ops.base import OPS, Affine, Nonlinear, Op, Relaxation, RelaxConfig  # noqa: F401

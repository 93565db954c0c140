"""Operators, one module per family; importing this package registers every operator and converter."""

from verifier.ops import activations, conv, linear, pooling, shape  # noqa: F401
from verifier.ops.base import OPS, Affine, Nonlinear, Op, Relaxation, RelaxConfig  # noqa: F401

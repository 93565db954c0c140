"""The translation table: every spelling of an operator in a front end, and the converter that turns it into
operators of ``verifier.ops``.

A spelling is a torch.fx target (a module class, a function, a method name) or an onnx2torch module class
(named by :class:`Onnx2TorchClass`, without importing onnx2torch); a converter also names the ONNX operator
types it serves, whichever onnx2torch module carries them (ONNX Exp reaches the converter of ``torch.exp``
through onnx2torch's generic ``OnnxFunction``). ``supported_onnx_operators`` is derived from these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from verifier.ops.base import Op


class ConversionError(Exception):
    """A call that names a supported operator but uses it in a way without bound rules."""


class MovesBatch(ConversionError):
    """A call that moves, merges or removes the batch dimension: a model whose batch is one is then
    translated with the whole tensor as its sample (``verifier.graph.fx_import``)."""


@dataclass(frozen=True)
class Composite:
    """One source operator translated into several graph nodes (Softmax, LayerNorm, MatMul of two graph
    tensors), each an operator with its own bound rules. Operands are numbered: the call's graph tensors
    first (0 .. d-1), then the steps in order (d, d+1, ...); the last step is the operator's output."""

    steps: tuple[tuple[Op, tuple[int, ...], tuple[int, ...]], ...]  # (op, operands, per-sample shape)


class Steps:
    """Builds a :class:`Composite`: ``add`` appends a step and returns its operand number; shapes are found by
    running each step once on a probe."""

    def __init__(self, in_shapes: list[tuple[int, ...]], dtype: torch.dtype):
        self.shapes = [tuple(s) for s in in_shapes]
        self.dtype = dtype
        self.steps: list[tuple[Op, tuple[int, ...], tuple[int, ...]]] = []

    def add(self, op: Op, *operands: int) -> int:
        probes = [torch.ones((1, *self.shapes[k]), dtype=self.dtype) for k in operands]
        shape = tuple(op.forward(*probes).shape[1:])
        self.steps.append((op, tuple(operands), shape))
        self.shapes.append(shape)
        return len(self.shapes) - 1

    def shape(self, k: int) -> tuple[int, ...]:
        return self.shapes[k]

    def done(self) -> Composite:
        return Composite(tuple(self.steps))


Converter = Callable[..., object]
CONVERTERS: dict[object, Converter] = {}
ONNX_OPERATORS: set[str] = set()  # ONNX operator types some converter serves

# ONNX operator types the loader folds into constants when they touch only constants and shapes (torch.fx
# import evaluates every node that does not depend on the input's values); on graph tensors they have no
# rules, and loading names the node
FOLDED_ONNX_OPERATORS = frozenset({"Constant", "ConstantOfShape", "Equal", "Shape", "Where"})


@dataclass(frozen=True)
class Onnx2TorchClass:
    """An onnx2torch module class as a converter target, named by its defining module (under
    ``onnx2torch.node_converters``) and class name, so that registering converters does not import
    onnx2torch (which imports torchvision: over a second) when a cached graph needs no conversion.
    A class is the only object carrying its module's name and its own, so matching by them is exact."""

    module: str
    name: str

    @staticmethod
    def of(kind: type) -> Onnx2TorchClass:
        return Onnx2TorchClass(kind.__module__.removeprefix("onnx2torch.node_converters."), kind.__qualname__)


def converter_for(target: object) -> Converter | None:
    """The converter of an fx target: a module by its class (or its ``Onnx2TorchClass``), else the
    function or method name itself."""
    if isinstance(target, torch.nn.Module):
        kind = type(target)
        return CONVERTERS.get(kind) or CONVERTERS.get(Onnx2TorchClass.of(kind))
    return CONVERTERS.get(target)


def converts(*targets: object, onnx: tuple[str, ...] = ()) -> Callable[[Converter], Converter]:
    """Register a translator from torch.fx targets (module classes, functions, method names, onnx2torch
    classes) to an Op; ``onnx``: the ONNX operator types that reach it through onnx2torch.

    A converter is called as ``conv(call)`` with a :class:`verifier.graph.fx_import.Call` and returns an Op
    (whose inputs are the call's data arguments, in order), a :class:`Composite`, or ``None`` to alias its
    single data input.
    """

    def deco(fn: Converter) -> Converter:
        for t in targets:
            if t in CONVERTERS:
                raise ValueError(f"converter for {t!r} registered twice")
            CONVERTERS[t] = fn
        ONNX_OPERATORS.update(onnx)
        return fn

    return deco


def supported_onnx_operators() -> frozenset[str]:
    """ONNX operator types with bound rules, or folded at load time."""
    return frozenset(ONNX_OPERATORS) | FOLDED_ONNX_OPERATORS

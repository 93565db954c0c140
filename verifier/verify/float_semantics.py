"""Queries declaring ``float32`` or ``float64`` variables: ``unsat`` must hold for the network evaluated in
that format, not only for its real-arithmetic function the engine bounds.

For every float input ``x`` of a case's box (float inputs inside the real box are points of it), the
computed outputs satisfy ``|y^ - y| <= e`` (``engine.rounding.forward_error``), so every row obeys

    (C y^)_s >= (C y)_s - (|C| e)_s,

and evaluating that row itself in the format (any order, constants as given) adds at most
``gamma_{k+1} ((|C| |y^|)_s + |d_s|)`` for a row of ``k`` nonzero coefficients. ``row_widening`` is the sum
of the two; ``Bounder`` subtracts it from every lower bound before excluding a row (root bounds and
every branch-and-bound domain alike, through ``Bounder.decide_tol``). It is computed once per case on
the case's whole box: every sub-domain of a branch and bound lies in that box, so it holds there too.

The rules model the file's operators through the loaded graph; operators whose constants the loader
combines in ways that can cancel (BatchNormalization folded into one scale and shift, Gemm with alpha or
beta other than 1, an Add folded into a Gemm's bias) and fused kernels translated into other operators
(Softmax, LogSoftmax, LayerNormalization) are refused (``check_foldings``).
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.engine.rounding import SAFETY, forward_error
from verifier.errors import InputError
from verifier.ops.rounding import FORMATS, FloatFormat, magnitude
from verifier.spec.property import Property
from verifier.verify.spec_batch import SpecBatch


def declared_format(prop: Property, model_type: str) -> FloatFormat | None:
    """The format whose evaluation the query asks about: None when every variable is ``real`` (analysis in
    real arithmetic), else the single declared float type, which must be the model's (``model_type``).
    Raises ``InputError`` for other or mixed types."""
    types = set(prop.element_types)
    if types <= {"real"}:
        return None
    if len(types) != 1 or not types <= set(FORMATS):
        raise InputError(f"declared element types {', '.join(sorted(types))}: this tool analyses real, "
                         f"or one of {', '.join(FORMATS)} for every variable")  # fmt: skip
    (name,) = types
    if name != model_type:
        raise InputError(f"the query declares {name} but the model computes in {model_type}")
    return FORMATS[name]


# Fused kernels the loader translates into several operators, which the runtime computes by another
# algorithm (Softmax as exp(x - max) / sum, LayerNormalization's variance possibly as mean(x^2) - mean(x)^2,
# which cancels where the mean is large): the translation's rounding bound does not describe the kernel's. The
# same functions spelled as their primitive operators (Exp, ReduceSum, Div, ...) are modelled one by one.
_FUSED = frozenset({"Softmax", "LogSoftmax", "LayerNormalization"})


def check_foldings(onnx_path: str) -> None:
    """Refuse (``InputError``, naming the nodes) ONNX operators whose constants the loader folds into
    others, and fused kernels it translates into other operators (``_FUSED``): the rounding model would
    describe the translated arithmetic, not the file's."""
    import onnx  # here: only float queries need it

    model = onnx.load(str(onnx_path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    name = lambda node: f"{node.op_type} (node {node.name or node.output[0]})"
    folded = [name(node) for node in model.graph.node if _folds(node, producers)]
    fused = [name(node) for node in model.graph.node if node.op_type in _FUSED]
    reasons = [(folded, "their constants are folded at load time"),
               (fused, "fused kernels: spell them as their primitive operators")]  # fmt: skip
    found = [f"{', '.join(nodes)} ({why})" for nodes, why in reasons if nodes]
    if found:
        raise InputError(f"{onnx_path}: the floating-point rounding of these operators is not modelled: "
                         f"{'; '.join(found)}")  # fmt: skip


def _folds(node, producers: dict) -> bool:
    if node.op_type == "BatchNormalization":
        return True
    if node.op_type == "Gemm":
        scales = {a.name: a.f for a in node.attribute if a.name in ("alpha", "beta")}
        return any(v != 1.0 for v in scales.values())
    if node.op_type == "Add":  # a shift after a Gemm with a bias is fused into it (``fuse_bias``)
        sources = [producers.get(name) for name in node.input]
        return any(s is not None and s.op_type == "Gemm" and len(s.input) > 2 and s.input[2] for s in sources)
    return False


def row_widening(model, spec: SpecBatch, fmt: FloatFormat) -> np.ndarray:
    """``(B, S)``: for every case's box, ``(C y)_s - (C y^)_s`` plus the rounding of the row's own
    evaluation is at most this (module docstring); ``inf`` where the output may overflow."""
    shape = (-1,) + tuple(model.input_shape)
    lo = torch.as_tensor(spec.lower, dtype=torch.float64).reshape(shape)
    hi = torch.as_tensor(spec.upper, dtype=torch.float64).reshape(shape)
    with torch.no_grad():
        bounds, error = forward_error(model.graph, lo, hi, fmt)
    n = len(spec.lower)
    e = error.reshape(n, -1).numpy()
    size = magnitude(bounds, error).reshape(n, -1).numpy()
    abs_c = np.abs(spec.C)
    gamma = np.vectorize(fmt.gamma, otypes=[np.float64])((spec.C != 0).sum(axis=-1) + 1)
    own = gamma * (_abs_product(abs_c, size) + np.abs(spec.d))
    return (_abs_product(abs_c, e) + own) * SAFETY


def _abs_product(abs_c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``|C| v`` per case, ``(B, S)``, where a zero coefficient contributes 0 even against ``v = inf``."""
    with np.errstate(invalid="ignore"):
        return np.where(abs_c > 0, abs_c * v[:, None, :], 0.0).sum(axis=-1)

"""Counterexample checking on the original ONNX file with onnxruntime, independent of the bound engine.

A ``sat`` verdict is only ever reported for a point that passed ``OnnxChecker.check``:

1. the point is cast to the model's input element type (float32 for every benchmark) and must lie in
   the case's box, compared exactly with the file's bounds (attacks search the box rounded inwards to
   that type, ``spec_batch.rounded_box``), so a written counterexample is inside the box exactly;
2. onnxruntime evaluates the model on exactly that point;
3. ``C @ y <= d`` is decided in exact rational arithmetic on the returned outputs (``Fraction`` of the
   float values), for every row of at least one disjunct. No tolerance is granted: a point that misses
   the unsafe set by a rounding error is rejected, and the search goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnxruntime as ort

from verifier.errors import ModelLoadError
from verifier.spec.property import Case, Disjunct

# onnxruntime's type strings -> (VNN-LIB / ONNX Set 1 element type name, numpy type)
_ORT_TYPES = {
    "tensor(float)": ("float32", np.float32),
    "tensor(double)": ("float64", np.float64),
    "tensor(float16)": ("float16", np.float16),
}


@dataclass(frozen=True)
class Counterexample:
    """A checked violation: input ``x`` (flat, model input type) and onnxruntime's outputs ``y`` (flat)."""

    x: np.ndarray
    y: np.ndarray
    case: int
    disjunct: int


def in_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> bool:
    """Whether every ``x[i]`` (any float type, compared exactly as float64) lies in ``[lower, upper]``."""
    values = np.asarray(x).astype(np.float64)
    return bool(np.all(values >= lower) and np.all(values <= upper))


def disjunct_holds(disjunct: Disjunct, y: np.ndarray) -> bool:
    """Whether ``C @ y <= d`` holds on every row, decided exactly on the float values of ``C, d, y``."""
    exact_y = [Fraction(float(v)) for v in np.asarray(y, dtype=np.float64)]
    for row, rhs in zip(disjunct.C, disjunct.d):
        lhs = sum((Fraction(float(c)) * v for c, v in zip(row, exact_y) if c != 0.0), Fraction(0))
        if not lhs <= Fraction(float(rhs)):
            return False
    return True


def violated_disjunct(case: Case, y: np.ndarray) -> int | None:
    """Index of the first disjunct of ``case`` that ``y`` satisfies exactly, else ``None``."""
    if not np.all(np.isfinite(y)):
        return None
    for index, disjunct in enumerate(case.disjuncts):
        if disjunct_holds(disjunct, y):
            return index
    return None


class OnnxChecker:
    """Evaluates the ONNX model with onnxruntime on single flat inputs and checks candidate points."""

    def __init__(self, path: str):
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {error}") from error
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelLoadError(f"{path}: expected one model input, found {len(inputs)} ({names})")
        first, output = inputs[0], self.session.get_outputs()[0]
        self.input_name = first.name
        if first.type not in _ORT_TYPES:
            raise ModelLoadError(f"{path}: unsupported input element type {first.type}")
        self.input_type, self.dtype = _ORT_TYPES[first.type]
        self.output_type = _ORT_TYPES.get(output.type, (output.type, None))[0]
        # Symbolic dimensions (a free batch size) are fed as 1: a counterexample is one sample.
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in first.shape)
        self.n_inputs = int(np.prod(self.input_shape))
        probe = self.run(np.zeros(self.n_inputs, dtype=self.dtype))
        self.n_outputs = probe.size

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output, flattened, at the flat input ``x`` (cast to the input type)."""
        feed = np.asarray(x).astype(self.dtype).reshape(self.input_shape)
        return np.asarray(self.session.run(None, {self.input_name: feed})[0]).reshape(-1)

    def check(self, cases: tuple[Case, ...], case_index: int, x: np.ndarray) -> Counterexample | None:
        """Return a ``Counterexample`` if ``x`` (cast to the input type) is in the box of ``cases[case_index]``
        and onnxruntime's output lies exactly in one of that case's disjuncts; otherwise ``None``."""
        case = cases[case_index]
        point = np.asarray(x).astype(self.dtype).reshape(-1)
        if not in_box(point, case.lower, case.upper):
            return None
        y = self.run(point)
        disjunct = violated_disjunct(case, y)
        if disjunct is None:
            return None
        return Counterexample(point, y, case_index, disjunct)

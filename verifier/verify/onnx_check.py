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

from verifier.errors import ModelLoadError
from verifier.spec.property import Case, Disjunct

# onnxruntime's type strings -> VNN-LIB / ONNX Set 1 element type names -> numpy types
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}
_NUMPY_TYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


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


@dataclass(frozen=True)
class OnnxSignature:
    """The model's inputs and first output as onnxruntime sees them (what the checks need to know before
    any evaluation): per input, in order, its name, element type and shape, symbolic dimensions as 1 (a
    counterexample is one sample). A flat point is the concatenation of the inputs flattened row-major."""

    input_names: tuple[str, ...]
    input_types: tuple[str, ...]
    output_type: str
    input_shapes: tuple[tuple[int, ...], ...]
    n_outputs: int


class OnnxChecker:
    """Evaluates the ONNX model with onnxruntime on single flat inputs and checks candidate points.

    Without ``signature`` the onnxruntime session opens at once and the signature is read from it (a
    probe at zero counts the outputs). With a signature read before from the same file (the disk
    cache, ``model_cache``), the session, and onnxruntime's import, wait for the first evaluation: most
    runs (``unsat``, ``unknown``, ``timeout``) never evaluate a candidate counterexample.

    With several inputs, ``dtype`` is the narrowest of their element types: a point in that type is
    exactly representable in every input's type, so each input's slice is cast to its own type exactly.
    """

    def __init__(self, path: str, signature: OnnxSignature | None = None):
        self.path = str(path)
        self._session = None
        self.signature = signature or self._read_signature()
        self.input_types, self.output_type = self.signature.input_types, self.signature.output_type
        self.input_type = min(self.input_types, key=lambda t: np.dtype(_NUMPY_TYPES[t]).itemsize)
        self.dtype = _NUMPY_TYPES[self.input_type]
        self.sizes = [int(np.prod(shape)) for shape in self.signature.input_shapes]
        self.n_inputs = sum(self.sizes)
        self.n_outputs = self.signature.n_outputs

    def __getstate__(self) -> dict:
        """Pickled without the onnxruntime session (it cannot be): the copy reopens the file at ``path`` on
        first use, so a process that unpickles it (a branch and bound worker) needs the file there too."""
        return self.__dict__ | {"_session": None}

    @property
    def session(self):
        """The onnxruntime session, opened on first use; ``ModelLoadError`` if onnxruntime refuses the file."""
        if self._session is None:
            import onnxruntime as ort  # here: its import costs a noticeable part of a small run

            try:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime raises several unrelated types for a bad file
                raise ModelLoadError(f"{self.path}: onnxruntime cannot load the model: {error}") from error
        return self._session

    def _read_signature(self) -> OnnxSignature:
        inputs, output = self.session.get_inputs(), self.session.get_outputs()[0]
        for value in inputs:
            if value.type not in _ORT_TYPES:
                raise ModelLoadError(
                    f"{self.path}: input {value.name!r} has unsupported element type {value.type}"
                )
        shapes = tuple(tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape) for i in inputs)
        types = tuple(_ORT_TYPES[i.type] for i in inputs)
        names = tuple(i.name for i in inputs)
        zeros = {n: np.zeros(s, dtype=_NUMPY_TYPES[t]) for n, s, t in zip(names, shapes, types)}
        n_outputs = np.asarray(self.session.run(None, zeros)[0]).size
        return OnnxSignature(names, types, _ORT_TYPES.get(output.type, output.type), shapes, n_outputs)

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """onnxruntime's inputs at the flat point ``x``: each input's slice, cast to its element type and
        shaped as it is declared."""
        flat = np.asarray(x).reshape(-1)
        starts = np.cumsum([0, *self.sizes[:-1]])
        signature = self.signature
        return {name: flat[start : start + size].astype(_NUMPY_TYPES[kind]).reshape(shape)
                for name, kind, shape, start, size in zip(signature.input_names, signature.input_types,
                                                          signature.input_shapes, starts, self.sizes)}  # fmt: skip

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's first output, flattened, at the flat input ``x`` (each slice cast to its input's type)."""
        return np.asarray(self.session.run(None, self.feed(x))[0]).reshape(-1)

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

"""Result text in the VNN-COMP format, and reading it back.

    sat
    ((X_0 0.5)
     (X_1 -0.25)
     (Y_0 1.0))

The first line is ``sat``, ``unsat``, ``unknown`` or ``timeout``. After ``sat`` come the counterexample's
inputs and onnxruntime's outputs at that point, one pair per line. Values are written with ``repr`` of
the exact float64 value of the model-typed number, so reading the text back gives the very point that
was checked.
"""

from __future__ import annotations

import re

import numpy as np

from verifier.verify.instance import VERDICTS, InstanceResult

_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def vnncomp_text(result: InstanceResult) -> str:
    """The result file's contents for ``result`` (ends with a newline)."""
    if result.verdict != "sat" or result.counterexample is None:
        return f"{result.verdict}\n"
    cex = result.counterexample
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(cex.x).reshape(-1))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.asarray(cex.y).reshape(-1))]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def parse_vnncomp(text: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Read a result file: ``(verdict, x, y)`` with empty arrays unless the verdict is ``sat``.

    Raises ``ValueError`` for an unknown verdict or an assignment with missing indices.
    """
    lines = text.strip().splitlines()
    verdict = lines[0].strip() if lines else ""
    if verdict not in VERDICTS:
        raise ValueError(f"not a VNN-COMP result: first line {verdict!r}")
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for name, index, value in _PAIR.findall("\n".join(lines[1:])):
        values[name][int(index)] = float(value)
    arrays = []
    for name in ("X", "Y"):
        found = values[name]
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"result assigns {name} indices {sorted(found)}, not 0..{len(found) - 1}")
        arrays.append(np.array([found[i] for i in range(len(found))], dtype=np.float64))
    return verdict, arrays[0], arrays[1]

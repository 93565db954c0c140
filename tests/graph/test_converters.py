"""The translation table lives in the loading layer: ``verifier/ops/`` knows no front end, importing it
populates no converter, and neither the operators nor the table import onnx2torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import verifier
from verifier.graph import onnx_import
from verifier.graph.converters import base

OPS = Path(__file__).resolve().parents[2] / "verifier" / "ops"
REPO = OPS.parents[1]
FRONT_END_NAMES = {"onnx", "onnx2torch", "converts", "converter_for", "CONVERTERS", "Onnx2TorchClass",
                   "ConversionError", "Composite", "Steps", "ParamRamp", "fx"}  # fmt: skip


def _imported_names(path: Path) -> set[str]:
    """Every module path part and name an ``import`` statement of the file mentions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {part for alias in node.names for part in alias.name.split(".")}
        elif isinstance(node, ast.ImportFrom):
            names |= set((node.module or "").split(".")) | {alias.name for alias in node.names}
    return names


def test_operator_modules_import_no_front_end_name():
    found = {p.name: sorted(_imported_names(p) & (FRONT_END_NAMES | {"graph"})) for p in OPS.glob("*.py")}
    assert len(found) > 10
    assert {name: hit for name, hit in found.items() if hit} == {}


def test_importing_the_operators_registers_no_converter_and_imports_no_onnx2torch():
    script = """
import json, sys
import verifier.ops
report = {"ops": len(verifier.ops.OPS), "table": "verifier.graph.converters" in sys.modules}
import verifier.api  # the loading layer too, as loading a cached graph does
report["onnx2torch"] = "onnx2torch" in sys.modules
print(json.dumps(report))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["ops"] > 10
    assert not report["table"] and not report["onnx2torch"]


def test_supported_onnx_operators_come_from_the_table():
    served = base.ONNX_OPERATORS | base.FOLDED_ONNX_OPERATORS
    assert set(verifier.supported_onnx_operators()) == served == onnx_import.SUPPORTED_ONNX_OPERATORS
    assert not base.ONNX_OPERATORS & base.FOLDED_ONNX_OPERATORS

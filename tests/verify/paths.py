"""Where the bundled and shared test instances live; ``shared`` skips a test when the benchmarks are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SPECS = REPO / "specs"
BENCHMARKS = REPO.parent / "shared" / "benchmarks"

TEST_SAT = (MODELS / "test_sat.onnx", SPECS / "test" / "test_prop.vnnlib")
TEST_UNSAT = (MODELS / "test_unsat.onnx", SPECS / "test" / "test_prop.vnnlib")
TEST_NANO = (MODELS / "test_nano.onnx", SPECS / "test" / "test_nano.vnnlib")
# CROWN alone cannot decide this one (ACAS Xu property 3 on net 1_2 is unsat, but needs splitting).
HARD = (MODELS / "ACASXU_run2a_1_2_batch_2000.onnx", SPECS / "acasxu" / "prop_3.vnnlib")


def shared(*parts: str) -> Path:
    """A path under ``../shared/benchmarks``; skips the calling test when it does not exist."""
    path = BENCHMARKS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path

"""The VNN-COMP harness scripts: argument checks, and one real run through the installed tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.verify.paths import REPO, TEST_NANO

SCRIPTS = REPO / "scripts" / "vnncomp"


def script(name: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def tool_env(tmp_path):
    """Point the scripts at this interpreter's verify-model (a wrapper when it is not installed)."""
    tool = Path(sys.executable).parent / "verify-model"
    if not tool.exists():
        tool = tmp_path / "verify-model"
        tool.write_text(f'#!/bin/bash\nexec "{sys.executable}" -m verifier.cli "$@"\n')
        tool.chmod(0o755)
    return {**os.environ, "VERIFY_MODEL": str(tool)}


def test_prepare_instance_checks_its_arguments(tool_env):
    assert script("prepare_instance.sh", "v1", "test", *TEST_NANO, env=tool_env).returncode == 0
    assert script("prepare_instance.sh", "v2", "test", *TEST_NANO, env=tool_env).returncode != 0
    missing = script("prepare_instance.sh", "v1", "test", "missing.onnx", TEST_NANO[1], env=tool_env)
    assert missing.returncode != 0 and "missing.onnx" in missing.stderr


def test_run_instance_writes_the_result_file(tmp_path, tool_env):
    result = tmp_path / "out.txt"
    done = script("run_instance.sh", "v1", "test", *TEST_NANO, result, 60, env=tool_env)
    assert done.returncode == 0, done.stderr
    assert result.read_text() == "unsat\n"
    assert script("run_instance.sh", "v1", "test", *TEST_NANO, result, env=tool_env).returncode != 0

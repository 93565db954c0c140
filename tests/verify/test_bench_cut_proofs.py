"""scripts/bench_cut_proofs.py: the cut job's task taken from a real search, HiGHS's pool, and how much of
it the proofs keep with and without cones, stored as JSON."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.verify.paths import REPO
from tests.verify.test_bab_refine import _instance
from verifier.verify.bab import mip_cuts


@pytest.mark.skipif(not mip_cuts.available(), reason="highspy (HiGHS) not installed")
def test_the_pool_of_a_hard_property_is_proven_and_recorded(tmp_path):
    instance = _instance(tmp_path)  # its root stays open after alpha-CROWN: the search starts the job
    spec = importlib.util.spec_from_file_location(
        "bench_cut_proofs", REPO / "scripts" / "bench_cut_proofs.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cuts.json"
    bench.main([instance.onnx.name, instance.vnnlib.name, "--suite", str(tmp_path), "--timeout", "30",
                "--root-seconds", "30", "--proof-seconds", "30", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["pool_rows"] > 0 and result["milp"]["rows"] > 0
    for name in ("with_cones", "without_cones"):
        assert 0 < result[name]["proven"] <= result["pool_rows"]

"""scripts/bench_bab.py: a fixed number of ReLU-split iterations on a real instance, stored as JSON."""

from __future__ import annotations

import importlib.util
import json

from tests.verify.paths import REPO, shared


def test_iterations_are_counted_and_the_search_recorded(tmp_path):
    suite = shared("mnist_fc")
    spec = importlib.util.spec_from_file_location("bench_bab", REPO / "scripts" / "bench_bab.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bab.json"
    bench.main(["onnx/mnist-net_256x2.onnx", "vnnlib/prop_6_0.03.vnnlib", "--suite", str(suite),
                "--iterations", "5", "--repeats", "2", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    first, second = result["runs"]
    assert first["iterations"] >= 1 and first["domains"] >= 2 * first["iterations"]
    # the same work every run: the search does not depend on the clock
    assert (first["iterations"], first["domains"], first["global_bound"]) == (
        second["iterations"], second["domains"], second["global_bound"])  # fmt: skip
    assert result["median_seconds"] > 0

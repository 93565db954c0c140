"""Result files, batch runs and the summary table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.verify.paths import MODELS, SPECS
from verifier.errors import InputError
from verifier.verify.bab.driver import BabConfig, physical_memory
from verifier.verify.batch import (
    BatchRow,
    Instance,
    Spread,
    budget,
    instance_config,
    read_instances,
    run_batch,
)
from verifier.verify.instance import InstanceResult, VerifyConfig
from verifier.verify.onnx_check import Counterexample
from verifier.verify.report import format_table, read_consensus, summarise
from verifier.verify.result_file import parse_vnncomp, vnncomp_text


def test_result_text_round_trips():
    x = np.array([0.1, -2.5e-8, 3.0], dtype=np.float32)
    y = np.array([1.0 / 3.0, -7.0], dtype=np.float32)
    text = vnncomp_text(InstanceResult("sat", "attack", 0.1, Counterexample(x, y, 0, 0)))
    assert text.startswith("sat\n((X_0 ") and text.endswith("(Y_1 -7.0))\n")
    verdict, x_back, y_back = parse_vnncomp(text)
    assert verdict == "sat"
    np.testing.assert_array_equal(x_back.astype(np.float32), x)
    assert np.all(x_back == x.astype(np.float64))  # the exact float32 values, not rounded decimals
    np.testing.assert_array_equal(y_back, y.astype(np.float64))
    assert vnncomp_text(InstanceResult("timeout", "", 1.0)) == "timeout\n"


def test_result_parser_rejects_malformed_text():
    with pytest.raises(ValueError, match="first line"):
        parse_vnncomp("holds\n")
    with pytest.raises(ValueError, match="indices"):
        parse_vnncomp("sat\n((X_0 1.0)\n (X_2 2.0))\n")


def test_read_instances(tmp_path):
    good = tmp_path / "bench" / "instances.csv"
    good.parent.mkdir()
    good.write_text("a.onnx,p.vnnlib,60\nb.onnx, q.vnnlib ,12.5\n")
    rows = read_instances(good)
    assert [(r.benchmark, r.onnx, r.vnnlib, r.timeout) for r in rows] == [
        ("bench", "a.onnx", "p.vnnlib", 60.0),
        ("bench", "b.onnx", "q.vnnlib", 12.5),
    ]
    assert budget(rows[0], scale=0.5) == 30.0 and budget(rows[0], cap=10) == 10
    bad = tmp_path / "bad.csv"
    bad.write_text("a.onnx,p.vnnlib\n")
    with pytest.raises(InputError, match="bad.csv:1"):
        read_instances(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_instances(tmp_path / "missing.csv")


def test_batch_run_writes_one_row_per_instance(tmp_path):
    base = SPECS
    instances = [
        Instance("specs", base, "../models/test_nano.onnx", "test/test_nano.vnnlib", 60),
        Instance("specs", base, "../models/test_sat.onnx", "test/test_prop.vnnlib", 60),
        Instance("specs", base, "../models/missing.onnx", "test/test_prop.vnnlib", 60),
    ]
    results = tmp_path / "results.csv"
    rows = run_batch(instances, VerifyConfig(), results, progress=False)
    assert [r.verdict for r in rows] == ["unsat", "sat", "error"]
    assert "missing.onnx" in rows[2].note
    with results.open() as handle:
        written = list(csv.DictReader(handle))
    assert [w["verdict"] for w in written] == ["unsat", "sat", "error"]
    assert written[1]["method"] == "attack" and float(written[1]["time_s"]) > 0


def _row(vnnlib, verdict, seconds=1.0, method=""):
    return BatchRow("b", "net.onnx", vnnlib, verdict, seconds, method, 60)


def test_searches_side_by_side_share_half_the_memory_between_their_queues():
    config = VerifyConfig(workers=4, cluster="auto")
    alone = instance_config(config, Spread(workers=1))
    assert (alone.workers, alone.cluster, alone.bab.max_queue_bytes) == (1, None, None)  # an eighth: driver
    four = instance_config(config, Spread(workers=4))
    assert four.bab.max_queue_bytes == physical_memory() // 16
    chosen = VerifyConfig(bab=BabConfig(max_queue_bytes=123))
    assert instance_config(chosen, Spread(workers=4)).bab.max_queue_bytes == 123


def test_summary_counts_agreement_and_lists_contradictions():
    reference = {
        ("net.onnx", p): r for p, r in [("p1", "sat"), ("p2", "unsat"), ("p3", "unsat"), ("p4", "unknown")]
    }
    rows = [_row("p1", "sat", method="attack"), _row("p2", "sat", 3.0, "bab-relu"), _row("p3", "unknown"),
            _row("p4", "timeout", 9.0)]  # fmt: skip
    (summary,) = summarise(rows, {"b": reference})
    assert (summary.total, summary.solved, summary.reference_solved, summary.agree) == (4, 2, 3, 1)
    assert summary.contradictions == [("net.onnx", "p2", "sat", "unsat")]
    assert summary.median_time == 2.0
    table = format_table([summary])
    assert "CONTRADICTION b: net.onnx p2: ours sat, reference unsat" in table
    header, line = table.splitlines()[:2]
    assert header.split()[:3] == ["benchmark", "total", "sat"] and line.split()[:4] == ["b", "4", "2", "0"]
    assert summary.as_dict()["wrong"] == 1
    # unknown and timeout decide nothing
    assert summary.as_dict()["decided_by"] == {"attack": 1, "bab-relu": 1}


def test_summary_without_reference_shows_dashes():
    (summary,) = summarise([_row("p1", "sat")], {})
    assert "-" in format_table([summary]).splitlines()[1].split()


def _shipped_file(card: dict) -> str:
    return card["onnx"] if "onnx" in card else card["weights"]


def test_bundled_reference_matches_bundled_instances():
    consensus = read_consensus(SPECS / "reference_results.csv")
    instances = read_instances(SPECS / "instances.csv")
    assert {(i.onnx, i.vnnlib) for i in instances} == set(consensus)
    for instance in instances:
        assert (instance.base / instance.onnx).is_file() and (instance.base / instance.vnnlib).is_file()
    # the bundled demo stays small; so does each trained model shipped with its card (models/*.json, naming
    # its ONNX file or, for the L2 models of scripts/train_lipschitz.py, its state dict)
    cards = {f.with_name(_shipped_file(json.loads(f.read_text()))) for f in MODELS.glob("*.json")}
    demo = [f for f in MODELS.iterdir() if f.suffix != ".json" and f not in cards]
    assert (
        sum(f.stat().st_size for f in demo) + sum(f.stat().st_size for f in SPECS.rglob("*") if f.is_file())
        < 5e6
    )
    assert all(f.stat().st_size < 2e6 for f in cards)

"""Branch and bound inside ``verify-model --method auto`` on ACAS Xu instances CROWN alone leaves open."""

from __future__ import annotations

import json

import pytest

from tests.verify.paths import HARD, MODELS, SPECS
from verifier.cli import main
from verifier.verify.bab.driver import BabConfig
from verifier.verify.batch import Instance, run_one
from verifier.verify.deadline import Deadline
from verifier.verify.instance import ModelCache, VerifyConfig, verify_instance

# ACAS Xu property 4 on net 1_2: unsat, a few hundred input splits.
OPEN_TO_CROWN = (MODELS / "ACASXU_run2a_1_2_batch_2000.onnx", SPECS / "acasxu" / "prop_4.vnnlib")


def test_crown_alone_leaves_it_open_and_auto_decides_it_by_input_splitting(capsys):
    alone = verify_instance(*OPEN_TO_CROWN, VerifyConfig(method="alpha-crown", extra_attack_seconds=0))
    assert alone.verdict == "unknown"
    assert main([str(p) for p in OPEN_TO_CROWN] + ["--json", "--timeout", "120"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["verdict"], result["method"]) == ("unsat", "bab-input")
    assert result["stats"]["domains"] > 0
    assert {"attack", "crown", "alpha-crown", "bab-input"} <= set(result["stats"]["seconds"])


def test_an_exhausted_domain_budget_falls_back_to_attack_then_unknown():
    config = VerifyConfig(extra_attack_seconds=0.2, bab=BabConfig(max_domains=0))
    result = verify_instance(*OPEN_TO_CROWN, config)
    assert (result.verdict, result.stats["domains"]) == ("unknown", 0)
    assert "extra attack" in result.stats["seconds"]


def test_a_search_stopped_by_its_memory_budget_says_so_in_the_result_and_the_suite_row():
    config = VerifyConfig(extra_attack_seconds=0.2, bab=BabConfig(max_queue_bytes=1))
    result = verify_instance(*OPEN_TO_CROWN, config)
    assert result.verdict == "unknown" and "budget" in result.stats["bab_stopped"]
    assert result.stats["bab_bound"] <= 0  # where it stood
    base = MODELS.parent
    onnx, vnnlib = (str(p.relative_to(base)) for p in OPEN_TO_CROWN)
    row = run_one(Instance("suite", base, onnx, vnnlib, 60.0), Deadline(60), config, ModelCache())
    assert row.verdict == "unknown" and row.note.startswith("branch and bound gave up:")
    assert f"lowest open score {result.stats['bab_bound']:.3g}" in row.note


@pytest.mark.slow
def test_property_3_on_net_1_2_is_proved_by_input_splitting():
    result = verify_instance(*HARD, VerifyConfig(timeout=300))
    assert (result.verdict, result.method) == ("unsat", "bab-input")

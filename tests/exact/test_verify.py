"""``verify-model`` against the exact answer of random ReLU networks (MILP oracle).

Soundness: never ``unsat`` when a counterexample exists, never ``sat`` when none does, and every ``sat``
comes with a real counterexample. Completeness: on tiny networks and with a generous budget the answer is
the exact one, never ``unknown``, including properties whose true margin is only 1e-3 either side of
zero. Completeness needs branch and bound; without it the near-zero ``unsat`` properties stay ``unknown``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from tests.exact.properties import MARGINS, ROWS, Instance, exact_case, write_instance
from verifier.verify.bab.input_split import InputSplitConfig
from verifier.verify.instance import VERDICTS, InstanceResult, VerifyConfig, verify_instance

# A sat answer's counterexample is checked by verify-model on onnxruntime's float32 outputs; our float64
# evaluation of the same point may differ by float32 rounding of outputs of size ~1.
OUTPUT_ROUNDING = 1e-5
# Soundness is also asked just below zero, within the bounds' rounding allowance: an ``unsat`` there would
# mean the safety margin is too thin. (Not just above zero: a float32 evaluation may then legitimately
# land in the unsafe set, which verify-model's onnxruntime check accepts as a counterexample.)
SOUNDNESS_MARGINS = (*MARGINS, -1e-6)
QUICK = VerifyConfig(timeout=1.0, extra_attack_seconds=0.2)
GENEROUS = VerifyConfig(timeout=60.0, extra_attack_seconds=1.0)
# These nets have few inputs, so verify-model splits inputs; with input splitting off it splits ReLUs.
RELU_SPLITTING = dataclasses.replace(GENEROUS, input_split=InputSplitConfig(max_inputs=0))


def _cases(seeds, size: str, margins=MARGINS, rows=range(ROWS)) -> list:
    """``(seed, size, row, margin)`` for the given rows of each network and every margin."""
    return [(s, size, r, m) for s, r, m in itertools.product(seeds, rows, margins)]


def _run(case, directory, config: VerifyConfig) -> tuple[Instance, InstanceResult]:
    seed, size, row, margin = case
    instance = write_instance(exact_case(seed, size), row, margin, directory)
    return instance, verify_instance(instance.onnx, instance.vnnlib, config)


def _assert_sound(instance: Instance, result: InstanceResult) -> None:
    """No wrong answer, and a ``sat`` answer's counterexample lies in the box and in the unsafe set."""
    assert result.verdict in VERDICTS
    wrong = {"sat": "unsat", "unsat": "sat"}[instance.expected]
    assert result.verdict != wrong, f"answered {wrong}; the exact answer is {instance.expected}"
    if result.verdict == "sat":
        x = result.counterexample.x.astype(np.float64)
        net = instance.net
        assert np.all(net.lo <= x) and np.all(x <= net.hi), "counterexample outside the box"
        value = float(net.evaluate(x[None])[0] @ instance.c)
        assert value <= instance.d + OUTPUT_ROUNDING, (
            f"counterexample misses the unsafe set: {value} > {instance.d}"
        )


def _assert_exact(instance: Instance, result: InstanceResult) -> None:
    _assert_sound(instance, result)
    assert result.verdict == instance.expected, (
        f"answered {result.verdict} ({result.seconds:.1f} s); the exact answer is {instance.expected} "
        f"with true margin {instance.margin:+g}"
    )


def _id(case) -> str:
    seed, size, row, margin = case
    return f"{size}{seed}-row{row}-margin{margin:+g}"


@pytest.mark.parametrize("case", _cases((0,), "small", SOUNDNESS_MARGINS, rows=(0,)), ids=_id)
def test_never_a_wrong_answer(case, tmp_path):
    _assert_sound(*_run(case, tmp_path, QUICK))


@pytest.mark.parametrize("case", _cases((3,), "tiny"), ids=_id)
def test_exact_answer_on_tiny_networks(case, tmp_path):
    """Network tiny3's optima are also confirmed by pattern enumeration (``test_oracle``)."""
    _assert_exact(*_run(case, tmp_path, GENEROUS))


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(range(200, 220), "small", SOUNDNESS_MARGINS), ids=_id)
def test_never_a_wrong_answer_sweep(case, tmp_path):
    _assert_sound(*_run(case, tmp_path, VerifyConfig(timeout=5.0, extra_attack_seconds=0.5)))


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(range(300, 310), "tiny") + _cases(range(310, 320), "medium"), ids=_id)
def test_exact_answer_sweep(case, tmp_path):
    _assert_exact(*_run(case, tmp_path, GENEROUS))


@pytest.mark.parametrize("case", _cases((3,), "tiny"), ids=_id)
def test_exact_answer_by_relu_splitting_on_tiny_networks(case, tmp_path):
    instance, result = _run(case, tmp_path, RELU_SPLITTING)
    _assert_exact(instance, result)
    assert result.method != "bab-input"


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(range(300, 310), "tiny") + _cases(range(310, 320), "medium"), ids=_id)
def test_exact_answer_by_relu_splitting_sweep(case, tmp_path):
    _assert_exact(*_run(case, tmp_path, RELU_SPLITTING))

"""Whole instances: verdicts on the bundled models, the time budget, and loud failure on unsound bounds."""

from __future__ import annotations

import numpy as np
import pytest

import verifier
from tests.helpers import CountdownDeadline
from tests.verify.paths import HARD, MODELS, SPECS, TEST_NANO, TEST_SAT, TEST_UNSAT
from verifier.errors import InputError, ModelLoadError
from verifier.spec.property import VnnlibError
from verifier.verify.bab.driver import BabConfig
from verifier.verify.bounding import UnsoundBoundError
from verifier.verify.deadline import Deadline
from verifier.verify.instance import (
    LoadedInstance,
    VerifyConfig,
    bound_methods,
    decide,
    load_instance,
    verify_instance,
)


@pytest.mark.parametrize(
    ("pair", "verdict", "method"),
    [(TEST_NANO, "unsat", "ibp"), (TEST_SAT, "sat", "attack"), (TEST_UNSAT, "unsat", "crown")],
)
def test_verdicts_on_bundled_instances(pair, verdict, method):
    result = verify_instance(*pair, VerifyConfig(timeout=60))
    assert (result.verdict, result.method) == (verdict, method)
    assert (result.counterexample is not None) == (verdict == "sat")


def test_a_single_method_is_used_alone():
    assert verify_instance(*TEST_UNSAT, VerifyConfig(method="crown")).method == "crown"
    assert (
        verify_instance(*TEST_UNSAT, VerifyConfig(method="ibp", extra_attack_seconds=0)).verdict == "unknown"
    )


@pytest.mark.parametrize("expires_on", [1, 30, 66], ids=["at_start", "in_the_attack", "in_the_bounds"])
def test_timeout_is_honoured(expires_on):
    """A run of this instance looks at the clock ~70 times (before the attack, 60 PGD steps, then between
    bound methods); wherever the budget runs out, the verdict is timeout, not a 100 s extra attack."""
    deadline = CountdownDeadline(expires_on)
    result = verify_instance(*HARD, VerifyConfig(extra_attack_seconds=100), deadline)
    assert result.verdict == "timeout" and deadline.polls >= expires_on
    # the stages run until then keep their seconds (``--json`` says where the time went)
    assert set(result.stats.get("seconds", {})) >= ({"attack"} if expires_on > 1 else set())
    if expires_on == 66:
        assert len(result.stats["seconds"]) >= 2, result.stats


def test_unknown_when_bounds_and_attack_budget_are_exhausted():
    """Within a 60 s budget, with no domain to spare for branch and bound, the 0.5 s extra attack ends
    first: unknown (a timeout if it overran)."""
    config = VerifyConfig(timeout=60, extra_attack_seconds=0.5, bab=BabConfig(max_domains=0))
    result = verify_instance(*HARD, config)
    assert result.verdict == "unknown"


def test_method_names_are_checked():
    assert bound_methods("auto") == ("ibp", "crown", "alpha-crown")
    assert bound_methods("alpha-crown") == ("alpha-crown",)
    with pytest.raises(InputError, match="not implemented yet"):
        bound_methods("beta-crown")
    with pytest.raises(InputError, match="unknown method"):
        bound_methods("magic")


def test_input_errors_are_verifier_errors(tmp_path):
    with pytest.raises(ModelLoadError):
        verify_instance(tmp_path / "missing.onnx", TEST_SAT[1])
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(assert (<= X_0")
    with pytest.raises(VnnlibError):
        verify_instance(TEST_SAT[0], broken)
    with pytest.raises(VnnlibError, match="does not match the model"):
        verify_instance(MODELS / "test_nano.onnx", SPECS / "test" / "test_prop.vnnlib")


class _Overconfident:
    """A model whose bounds are raised by 10: unsound, which the bounder must notice."""

    def __init__(self, model):
        self.model, self.input_shape = model, model.input_shape

    def __call__(self, x):
        return self.model(x)

    def bounds(self, region, method, C, upper=True, stop=None):
        lower, upper = self.model.bounds(region, method=method, C=C)
        return verifier.Bounds(lower + 10.0, upper)


def test_unsound_bounds_raise_instead_of_unsat():
    loaded = load_instance(*TEST_UNSAT)
    broken = LoadedInstance(loaded.prop, loaded.checker, _Overconfident(loaded.model))
    with pytest.raises(UnsoundBoundError):
        decide(broken, ("crown",), VerifyConfig(), Deadline(60))
    assert decide(loaded, ("crown",), VerifyConfig(), Deadline(60)).verdict == "unsat"


def test_counterexample_values_are_the_checked_point():
    result = verify_instance(*TEST_SAT)
    cex = result.counterexample
    again = load_instance(*TEST_SAT).checker.run(cex.x)
    np.testing.assert_array_equal(again, cex.y)


def test_optimisation_does_not_import_torch_dynamo():
    """torch's optimisers import ``torch._dynamo`` on first use (about 1.2 s per process); alpha-CROWN and
    branch and bound use ``alpha.Adam``, so a run that needs both stays clear of it."""
    import subprocess
    import sys

    script = (
        "import sys; from verifier.verify.instance import verify_instance, VerifyConfig; "
        f"r = verify_instance({str(HARD[0])!r}, {str(HARD[1])!r}, VerifyConfig(timeout=60)); "
        "print(r.verdict, r.stats['seconds'].get('alpha-crown', 0) > 0, 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["unsat", "True", "False"]

"""One ``verify-model MODEL PROPERTY`` run inside its worker process: settings, verdict, rendered output.

Kept out of ``verifier.cli`` because it imports torch and the engine, which the waiting parent must not
(it reports a timeout at the deadline even while these imports are still running). For the same reason
what goes back to the parent is plain text, whose unpickling imports nothing.
"""

from __future__ import annotations

import json

import torch

from verifier.errors import InputError
from verifier.verify import distributed
from verifier.verify.deadline import Deadline
from verifier.verify.instance import (
    InstanceResult,
    VerifyConfig,
    bound_methods,
    check_device,
    verify_instance,
)
from verifier.verify.result_file import vnncomp_text


def settings(ns) -> VerifyConfig:
    """The ``VerifyConfig`` of parsed command-line arguments; sets torch's thread count.

    Raises ``InputError`` for an unknown or unimplemented method, an unusable device, or a cluster
    without Ray installed.
    """
    torch.set_num_threads(ns.threads)
    bound_methods(ns.method)
    check_device(ns.device)
    if ns.cluster is not None:
        distributed.import_ray()  # a missing Ray is a usage error now, not after the bound methods
    return VerifyConfig(method=ns.method, timeout=ns.timeout, device=ns.device,
                        extra_attack_seconds=ns.attack_seconds, seed=ns.seed, workers=ns.workers,
                        cluster=ns.cluster)  # fmt: skip


def report_margin(seconds: float) -> float:
    """How long before the parent's deadline the work stops itself: a tenth of the budget, at most 1 s.
    A run that stops itself reports its timeout with its stats (seconds per stage, domains); the parent
    still kills a worker that overruns its own deadline, and then reports a timeout without them."""
    return min(1.0, 0.1 * seconds)


def decide(ns, deadline: Deadline) -> tuple[str, str, str]:
    """Decide ``ns.model`` against ``ns.property`` within ``deadline``.

    Returns ``(usage_error, stdout, result_file)``: a bad setting as a message for the parent's usage
    error (and empty texts), else what to print (VNN-COMP text or JSON) and the result file's text.
    The work stops ``report_margin`` before ``deadline``.
    Raises ``VerifierError`` for unusable input.
    """
    try:
        config = settings(ns)
    except InputError as error:
        return str(error), "", ""
    result = verify_instance(ns.model, ns.property, config, deadline.early(report_margin(deadline.seconds)))
    text = vnncomp_text(result)
    return "", json.dumps(as_json(result)) + "\n" if ns.json else text, text


def as_json(result: InstanceResult) -> dict:
    """The ``--json`` form of a result; a ``timeout`` reported by the parent has the same keys, without
    ``stats`` (the worker that kept them was killed)."""
    out = {"verdict": result.verdict, "method": result.method, "time_s": round(result.seconds, 3)}
    if result.stats:
        seconds = {stage: round(t, 3) for stage, t in result.stats.get("seconds", {}).items()}
        out["stats"] = result.stats | {"seconds": seconds}
    if result.counterexample is not None:
        out["counterexample"] = {"x": result.counterexample.x.tolist(), "y": result.counterexample.y.tolist()}
    return out

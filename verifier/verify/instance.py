"""One verification instance (ONNX model + VNN-LIB property) to one sound verdict.

Verdicts (VNN-COMP semantics: the property describes the *unsafe* set):

- ``sat``: a counterexample was found by the attack and re-checked on the ONNX file with onnxruntime
  (``onnx_check``); it is returned with the result.
- ``unsat``: every disjunct of every case is excluded by a sound bound with a safety margin
  (``bounding``), on the whole box or on every sub-box of a branch and bound (``bab``).
- ``unknown``: the bound methods are exhausted and the extra attack budget found nothing.
- ``timeout``: the time budget (loading, attack and bounding together) ran out first.

Stages: load; one attack round; one bound pass per method (cheap to tight) until every case is
excluded; with ``method="auto"`` and a small input, branch and bound by input splitting on the cases
still open; then more attack rounds for at most ``extra_attack_seconds``. Every stage polls the
deadline; a single engine call is not interruptible, so overruns are bounded by one call.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import verifier
from verifier.errors import InputError
from verifier.spec.property import Property, check_against_model
from verifier.spec.vnnlib import load_property
from verifier.verify import float_semantics
from verifier.verify.attack import Attack, AttackConfig
from verifier.verify.bab import driver, shards
from verifier.verify.bab.input_split import InputSplit, InputSplitConfig
from verifier.verify.bab.relu_split import ReluSplit, ReluSplitConfig
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.disk_cache import cached_model
from verifier.verify.onnx_check import Counterexample, OnnxChecker
from verifier.verify.spec_batch import spec_batch

VERDICTS = ("sat", "unsat", "unknown", "timeout")
AUTO_METHODS = ("ibp", "crown", "alpha-crown")
NOT_IMPLEMENTED = ("beta-crown",)


@dataclass(frozen=True)
class VerifyConfig:
    """How to decide one instance. ``method`` is ``auto`` (attack, IBP, CROWN, alpha-CROWN, branch and
    bound) or one engine method."""

    method: str = "auto"
    timeout: float = 60.0
    device: str = "cpu"
    attack: AttackConfig = field(default_factory=AttackConfig)
    extra_attack_seconds: float = 5.0
    seed: int = 0
    bab: driver.BabConfig = field(default_factory=driver.BabConfig)
    input_split: InputSplitConfig = field(default_factory=InputSplitConfig)
    relu_split: ReluSplitConfig = field(default_factory=ReluSplitConfig)
    workers: int = 1  # processes that share branch and bound's domains (1: this process alone)
    cluster: str | None = None  # a Ray cluster's address (or "auto") for those workers, else local ones


@dataclass(frozen=True)
class InstanceResult:
    """``method`` names what decided the verdict (``attack``, a bound method or ``bab-input``; empty if
    undecided). ``stats``: ``seconds`` per stage and, after branch and bound, ``domains`` bounded (and
    ``bab_stopped``: why it gave up, when it did before the deadline)."""

    verdict: str
    method: str
    seconds: float
    counterexample: Counterexample | None = None
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedInstance:
    prop: Property
    checker: OnnxChecker
    model: object


class ModelCache:
    """Keeps the most recently loaded model (onnxruntime session and engine model) for reuse by the
    next instance on the same file, as in benchmark suites that list one model's properties in a row."""

    def __init__(self):
        self._key, self._value = None, None

    def get(self, onnx_path: str | Path, device: str) -> tuple[OnnxChecker, object]:
        key = (str(Path(onnx_path).resolve()), device)
        if key != self._key:
            self._key, self._value = None, None
            self._value, self._key = load_model(onnx_path, device), key
        return self._value


def bound_methods(method: str) -> tuple[str, ...]:
    """The engine methods ``method`` stands for; ``InputError`` for an unknown or unimplemented one."""
    if method == "auto":
        return AUTO_METHODS
    if method in NOT_IMPLEMENTED:
        raise InputError(
            f"method {method!r} is not implemented yet; choose auto or one of {verifier.METHODS}"
        )
    if method not in verifier.METHODS:
        raise InputError(f"unknown method {method!r}; choose auto or one of {verifier.METHODS}")
    return (method,)


def check_device(device: str) -> None:
    """``InputError`` unless ``device`` names a torch device that is usable here."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but CUDA is not available")


def load_model(onnx_path: str | Path, device: str = "cpu") -> tuple[OnnxChecker, object]:
    """Open the model in onnxruntime and in the bound engine (through the disk cache, ``disk_cache``);
    ``ModelLoadError`` (or a subclass) if not."""
    checker, model = cached_model(onnx_path)
    model = model.to(device=device)
    sizes = [int(np.prod(shape)) for shape in model.input_shapes]
    if sizes != checker.sizes:
        raise InputError(
            f"{onnx_path}: engine input shapes {model.input_shapes} do not match the ONNX inputs"
        )
    return checker, model


def load_instance(onnx_path, vnnlib_path, device: str = "cpu", cache: ModelCache | None = None):
    """Parse the property, load the model (through ``cache`` if given) and check that they fit.

    Raises ``VnnlibError``, ``ModelLoadError`` / ``UnsupportedOperatorError`` or ``InputError``.
    """
    prop = load_property(vnnlib_path)
    checker, model = cache.get(onnx_path, device) if cache is not None else load_model(onnx_path, device)
    check_against_model(prop, checker.n_inputs, checker.n_outputs, str(vnnlib_path))
    return LoadedInstance(prop, checker, model)


def verify_instance(
    onnx_path,
    vnnlib_path,
    config: VerifyConfig = VerifyConfig(),
    deadline=None,
    cache: ModelCache | None = None,
) -> InstanceResult:
    """Decide one instance within ``config.timeout`` seconds (or the given ``Deadline``).

    Returns an ``InstanceResult``. Errors in the inputs (unreadable files, unsupported operators,
    mismatched shapes, bad method) raise ``VerifierError`` subclasses instead.
    """
    deadline = deadline or Deadline(config.timeout)
    bound_methods(config.method)
    loaded = load_instance(onnx_path, vnnlib_path, config.device, cache)
    return verify_loaded(loaded, config, deadline)


def verify_loaded(loaded: LoadedInstance, config: VerifyConfig, deadline: Deadline) -> InstanceResult:
    """``decide`` on a loaded instance, turning a spent budget into a ``timeout`` result that keeps the
    stats gathered until then (where the time went)."""
    stats: dict = {}
    try:
        deadline.check()
        return decide(loaded, bound_methods(config.method), config, deadline, stats)
    except DeadlineReached:
        return InstanceResult("timeout", "", deadline.elapsed(), stats=stats)


class StageClock:
    """Seconds spent per stage, accumulated (``seconds``: stage name -> seconds)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start


def decide(loaded: LoadedInstance, methods: tuple[str, ...], config: VerifyConfig, deadline: Deadline,
           stats: dict | None = None):  # fmt: skip
    """The attack / bound / branch-and-bound schedule of the module docstring on a loaded instance.
    ``stats`` (the result's) is filled as the stages run, so a caller still has it if the deadline cuts
    the schedule short."""
    spec = spec_batch(loaded.prop, loaded.checker.dtype)
    model = loaded.model
    widening = rounding_widening(loaded, spec)
    attack = Attack(model, model.input_shape, spec, loaded.checker, loaded.prop, config.attack,
                    seed=config.seed, device=config.device)  # fmt: skip
    clock = StageClock()
    stats = {} if stats is None else stats
    stats["seconds"] = clock.seconds

    def done(verdict: str, method: str, found: Counterexample | None = None) -> InstanceResult:
        return InstanceResult(verdict, method, deadline.elapsed(), found, stats)

    with clock.stage("attack"):
        found = attack.run_round(deadline)
    if found is not None:
        return done("sat", "attack", found)
    bounder = Bounder(model, spec, attack.best_x, device=config.device, widening=widening)
    brancher = _brancher(model, bounder, config)
    if isinstance(brancher, ReluSplit):  # its roots run alpha-CROWN and keep what it learns
        methods = tuple(m for m in methods if m != "alpha-crown")
    for method in methods:
        deadline.check()
        with clock.stage(method), torch.no_grad():
            if bounder.run(method, deadline):
                return done("unsat", method)
    if brancher is not None:
        with clock.stage(brancher.name):
            outcome = _branch_and_bound(brancher, loaded, bounder, attack, config, deadline)
        stats["domains"] = outcome.domains
        if getattr(brancher, "refined", 0):
            stats["refined_leaves"] = brancher.refined
        cuts = getattr(brancher, "root_cuts", None)
        if cuts is not None and cuts.cuts is not None:
            stats["cuts"] = cuts.cuts.count
        if cuts is not None and cuts.seconds is not None:  # HiGHS's root ended, with cuts or without
            stats["cut_seconds"] = round(cuts.seconds, 1)
        if outcome.stopped:
            stats["bab_stopped"] = outcome.stopped
        if outcome.bound is not None:
            stats["bab_bound"] = outcome.bound
        if outcome.verdict in ("sat", "unsat"):
            # proved at the roots (no split needed): that was the roots' alpha-CROWN
            roots = (
                outcome.domains == 0 and outcome.verdict == "unsat" and not getattr(brancher, "refined", 0)
            )
            stage = "alpha-crown" if roots else brancher.name
            return done(outcome.verdict, stage, outcome.counterexample)
    with clock.stage("extra attack"):
        found = _extra_attack(attack, config, deadline)
    if found is not None:
        return done("sat", "attack", found)
    deadline.check()
    return done("unknown", "")


def rounding_widening(loaded: LoadedInstance, spec) -> np.ndarray | None:
    """For a query declaring float32 / float64 variables, the ``(B, S)`` widening of every row's exclusion
    margin by the rounding of the network's evaluation in that format (``float_semantics``); None for a
    query in real arithmetic (nothing changes). Raises ``InputError`` for what cannot be analysed soundly."""
    fmt = float_semantics.declared_format(loaded.prop, loaded.checker.output_type)
    if fmt is None:
        return None
    float_semantics.check_foldings(loaded.checker.path)
    return float_semantics.row_widening(loaded.model, spec, fmt)


def _brancher(model, bounder: Bounder, config: VerifyConfig):
    """The branching rule for ``--method auto``: input splitting for few inputs, else ReLU splitting
    where the model has ReLU-like neurons; None otherwise (or for any other method)."""
    if config.method != "auto":
        return None
    if InputSplit.applies(model, config.input_split):
        return InputSplit(bounder, config.input_split)
    if ReluSplit.applies(model):
        return ReluSplit(bounder, config.relu_split)
    return None


def _branch_and_bound(brancher, loaded: LoadedInstance, bounder: Bounder, attack: Attack,
                      config: VerifyConfig, deadline: Deadline) -> driver.BabResult:  # fmt: skip
    """Branch and bound on the cases the bound methods left open, in this process or, for several
    ``workers`` or a ``cluster``, shared between workers (``shards``)."""
    problem = driver.Problem(bounder, loaded.checker, loaded.prop, attack)
    cases = np.flatnonzero(~bounder.case_excluded())

    def search(roots, until: Deadline) -> driver.BabResult:
        if config.workers > 1 or config.cluster is not None:
            return shards.run(brancher, roots, problem, config.bab, until, config.workers, config.cluster)
        return driver.run(brancher, roots, problem, config.bab, until)

    if not (isinstance(brancher, ReluSplit) and brancher.can_refine(cases)):
        return search(brancher.roots(cases, deadline), deadline)
    try:  # the roots may start a cut job (``mip_cuts.RootCuts``)
        roots = brancher.roots(cases, deadline)
        # a first search on a short budget; if it gives no answer, refined roots and a second search
        first = search(roots, deadline.sub(config.relu_split.probe_share * deadline.remaining()))
        if first.verdict in ("sat", "unsat") or deadline.expired():
            return first
        second = search(brancher.roots(cases, deadline, refined=True), deadline)
        return dataclasses.replace(second, domains=first.domains + second.domains)
    finally:
        brancher.root_cuts.close()


def _extra_attack(attack: Attack, config: VerifyConfig, deadline: Deadline) -> Counterexample | None:
    """Attack rounds for at most ``config.extra_attack_seconds`` (never past ``deadline``)."""
    extra = deadline.sub(config.extra_attack_seconds)
    try:
        while not extra.expired():
            found = attack.run_round(extra)
            if found is not None:
                return found
    except DeadlineReached:
        pass  # the extra attack budget is spent; the caller's deadline check tells a real timeout apart
    return None

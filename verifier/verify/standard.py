"""The VNN-LIB 2.0 standard command line (chapter 5): ``verify``, ``supports``, ``--name``, ``--version``.

    verify-model verify QUERY --network NAME=MODEL.onnx [--timeout S]
    verify-model supports --onnx-operators          (one capability flag per call)

``verify`` prints exactly one of ``sat``, ``unsat``, ``unknown``, ``timed-out`` on stdout and, after
``sat``, the assignment block as the ``vnnlib-test-solver`` package renders it: for each declared
variable in declaration order a header ``NAME TYPE [d1,d2]`` then its values row-major, one per line.
Everything else goes to stderr. Errors (section 5.3.2 conditions and usage mistakes alike) exit
with status 1 and print nothing on stdout.

Capabilities are answered from what the code does, not from configuration:
- element types: ``real`` only. Bounds are computed in real arithmetic with a floating-point safety
  margin (``bounding``), which is not a proof of soundness under float32 semantics; so a query must
  declare ``real`` (the standard's consent to real-valued analysis). A query declaring an ONNX type
  is refused with an error, as section 5.3.2 requires.
- one network, one input and one output tensor, no hidden nodes (``SNET``, ``SIO``, ``NH``); input
  constraints are bounds on single inputs and output constraints may compare outputs of the one
  output node (``SNC``; ``BND`` and ``OUTC``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

import verifier
from verifier.errors import InputError, VerifierError
from verifier.spec.property import check_against_model
from verifier.spec.vnnlib import load_property
from verifier.verify.deadline import Deadline, Watchdog, process_age, report_once
from verifier.verify.instance import InstanceResult, LoadedInstance, VerifyConfig, load_model, verify_loaded

COMMANDS = ("verify", "supports", "capabilities")
TOOL_NAME = "verifier (linear-relaxation bound propagation with checked PGD counterexamples)"
STANDARD_RESULTS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timeout": "timed-out"}
SOUND_ELEMENT_TYPES = ("real",)
OPSET_RANGE = ("8", "17")  # oldest opset seen loading (ACAS Xu, lifted by onnx's version converter), target
CAPABILITIES = {
    "--onnx-opset-versions": lambda: list(OPSET_RANGE),
    "--onnx-element-types": lambda: list(SOUND_ELEMENT_TYPES),
    "--onnx-operators": lambda: verifier.supported_onnx_operators(),
    "--vnnlib-versions": lambda: ["1.0", "2.0"],
    "--hidden-node-theories": lambda: ["NH"],
    "--multiple-input-output-theories": lambda: ["SIO"],
    "--multiple-network-theories": lambda: ["SNET"],
    "--multiple-node-comparison-theories": lambda: ["SNC"],
    "--arithmetic-complexity-theories": lambda: ["BND", "OUTC"],
    "--optimised-disjunctive-reasoning": lambda: ["false"],
    "--serialise-assignments": lambda: ["false"],
}
EXIT_ERROR = 1  # every refusal, usage mistakes included, as the reference test solver does


def tool_version() -> str:
    return verifier.__version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verify-model", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verify = commands.add_parser("verify", help="decide a VNN-LIB query", allow_abbrev=False)
    verify.add_argument("query", help="VNN-LIB query file")
    verify.add_argument("--network", action="append", default=[], metavar="NAME=MODEL.onnx",
                        help="the ONNX file of a declared network")  # fmt: skip
    verify.add_argument("--timeout", type=float, help="seconds for the whole run (default: none)")
    verify.add_argument("--serialise-assignments", "--assignments", dest="serialise", metavar="PATH",
                        help="not supported: the assignment is printed on stdout")  # fmt: skip
    for name in ("supports", "capabilities"):
        supports = commands.add_parser(name, help="report one capability", allow_abbrev=False)
        group = supports.add_mutually_exclusive_group(required=True)
        for flag in CAPABILITIES:
            group.add_argument(flag, dest="capability", action="store_const", const=flag)
        group.add_argument("--multiple-inputs-output-theories", dest="capability", action="store_const",
                           const="--multiple-input-output-theories", help=argparse.SUPPRESS)  # fmt: skip
    return parser


def main(args: Sequence[str], process: bool = False) -> int:
    """Run one standard command; ``process`` as in ``verifier.cli.main``."""
    ns = build_parser().parse_args(list(args))
    if ns.command != "verify":
        print("".join(f"{line}\n" for line in CAPABILITIES[ns.capability]()), end="", flush=True)
        return 0
    return _verify(ns, process)


def _verify(ns, process: bool) -> int:
    # One thread is fastest for the small batches of the attack, all the more on a busy CPU.
    torch.set_num_threads(1)
    start = time.monotonic() - process_age() if process else None
    deadline = Deadline(ns.timeout, start=start)
    if ns.timeout is not None and ns.timeout < 0:
        return _error("--timeout must be zero or more seconds")
    if ns.serialise:
        print("verify-model: warning: --serialise-assignments is not supported; the assignment goes to stdout",
              file=sys.stderr)  # fmt: skip
    watchdog = Watchdog(deadline, lambda: _emit("timed-out\n")) if process else None
    try:
        loaded = _load(ns.query, ns.network)
    except VerifierError as error:
        message = str(error).splitlines()[0]
        report_once(watchdog, lambda: _error(message))
        return EXIT_ERROR
    result = verify_loaded(loaded, VerifyConfig(timeout=deadline.seconds), deadline)
    text = answer_text(result, loaded)
    report_once(watchdog, lambda: _emit(text))
    return 0


def _load(query: str, networks: list[str]) -> LoadedInstance:
    """Parse the query, map its network to a model file, then check section 5.3.2's conditions in the
    order it lists them: files for the declared networks, matching element types, sound types."""
    prop = load_property(query)
    path = network_path(prop.networks, networks, query)
    checker, model = load_model(path)
    check_model_types(prop, checker, query, path)
    check_declared_types(prop, query)
    check_against_model(prop, checker.n_inputs, checker.n_outputs, query)
    return LoadedInstance(prop, checker, model)


def network_path(declared: Sequence[str], mappings: list[str], query: str) -> str:
    """The model file of the query's single network from ``--network NAME=PATH`` arguments.

    A VNN-LIB 1.0 file declares no network; then exactly one mapping (any name) is needed.
    """
    pairs = []
    for token in mappings:
        name, sep, path = token.partition("=")
        if not (sep and name and path):
            raise InputError(f"--network takes NAME=MODEL.onnx, got {token!r}")
        pairs.append((name, path))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"--network maps a name more than once: {', '.join(names)}")
    if declared:
        unknown = [n for n in names if n not in declared]
        missing = [n for n in declared if n not in names]
        if unknown or missing:
            raise InputError(f"{query}: declares network(s) {', '.join(declared)}; "
                             f"--network given for {', '.join(names) or 'none'}")  # fmt: skip
        return dict(pairs)[declared[0]]
    if len(pairs) != 1:
        raise InputError(f"{query} declares no network: give exactly one --network NAME=MODEL.onnx")
    return pairs[0][1]


def check_model_types(prop, checker, query: str, path: str) -> None:
    """Section 5.3.2: every declared type must be the model's, unless the query is written all in ``real``."""
    if all(t == "real" for t in prop.element_types):
        return
    for variable in prop.variables:
        exposed = checker.output_type if variable.is_output else checker.input_type
        if variable.element_type != exposed:
            raise InputError(
                f"{query}: declares {variable.name} as {variable.element_type}, but {path} uses {exposed}"
            )


def check_declared_types(prop, query: str) -> None:
    """Section 5.3.2: refuse element types whose analysis this tool does not claim to be sound for,
    unless the query is written entirely in ``real`` (the user's consent to real-valued analysis)."""
    types = prop.element_types
    if all(t == "real" for t in types):
        return
    unsound = [t for t in types if t not in SOUND_ELEMENT_TYPES]
    raise InputError(
        f"{query}: declares {', '.join(unsound)}, which this tool does not analyse soundly (it claims "
        f"{', '.join(SOUND_ELEMENT_TYPES)}); declare every variable real to accept real-valued analysis"
    )


def answer_text(result: InstanceResult, loaded: LoadedInstance) -> str:
    """The result line and, after ``sat``, the assignment block (module docstring)."""
    line = f"{STANDARD_RESULTS[result.verdict]}\n"
    if result.verdict != "sat" or result.counterexample is None:
        return line
    return line + assignment_block(loaded.prop.variables, result.counterexample.x, result.counterexample.y)


def assignment_block(variables, x: np.ndarray, y: np.ndarray) -> str:
    """Every declared variable with its values: inputs are consecutive slices of ``x``, outputs of ``y``."""
    flat = {False: np.asarray(x).reshape(-1), True: np.asarray(y).reshape(-1)}
    offsets = {False: 0, True: 0}
    lines = []
    for variable in variables:
        size = math.prod(variable.shape)
        start = offsets[variable.is_output]
        values = flat[variable.is_output][start : start + size]
        offsets[variable.is_output] = start + size
        lines.append(f"{variable.name} {variable.element_type} [{','.join(map(str, variable.shape))}]")
        lines.extend(repr(float(v)) for v in values)
    return "".join(f"{line}\n" for line in lines)


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _error(message: str) -> int:
    print(f"verify-model: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR

"""The VNN-LIB 2.0 standard command line (chapter 5): ``verify``, ``supports``, ``--name``, ``--version``.

    verify-model verify QUERY --network NAME=MODEL.onnx [--timeout S]
    verify-model supports --onnx-operators          (one capability flag per call)

``verify`` prints exactly one of ``sat``, ``unsat``, ``unknown``, ``timed-out`` on stdout and, after
``sat``, the assignment block as the ``vnnlib-test-solver`` package renders it: for each declared
variable in declaration order a header ``NAME TYPE [d1,d2]`` then its values row-major, one per line.
Everything else goes to stderr. Errors (section 5.3.2 conditions and usage mistakes alike) exit
with status 1 and print nothing on stdout.

Capabilities are answered from what the code does, not from configuration:
- element types: ``real``, ``float32`` and ``float64``. ``real`` is analysed in real arithmetic (with the
  floating-point safety margin of ``bounding``); a float type asks about the network evaluated in that
  format, and ``unsat`` then also covers the rounding of that evaluation (``float_semantics``). Other
  types (float16, bfloat16) are refused with an error, as section 5.3.2 requires.
- one network, one output tensor, no hidden nodes (``SNET``, ``SIO``, ``NH``); several input tensors are
  accepted when declared in the model's input order (their concatenation is the model's flat input); input
  constraints are bounds on single inputs and output constraints may compare outputs of the one
  output node (``SNC``; ``BND`` and ``OUTC``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import verifier
from verifier.errors import VerifierError
from verifier.verify.deadline import Deadline, DeadlineReached, process_age
from verifier.verify.worker import WorkerCrash, run_once

COMMANDS = ("verify", "supports", "capabilities")
TOOL_NAME = "verifier (linear-relaxation bound propagation with checked PGD counterexamples)"
STANDARD_RESULTS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timeout": "timed-out"}
SOUND_ELEMENT_TYPES = ("real", "float32", "float64")
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
    start = time.monotonic() - process_age() if process else None
    deadline = Deadline(ns.timeout, start=start)
    if ns.timeout is not None and ns.timeout < 0:
        return _error("--timeout must be zero or more seconds")
    if ns.serialise:
        print("verify-model: warning: --serialise-assignments is not supported; the assignment goes to stdout",
              file=sys.stderr)  # fmt: skip
    try:
        text = run_once(_decide_in_worker, ns.query, ns.network, deadline, deadline=deadline)
    except DeadlineReached:  # killed at the deadline by the worker, or stopped there by itself
        text = f"{STANDARD_RESULTS['timeout']}\n"
    except VerifierError as error:
        return _error(str(error).splitlines()[0])
    except WorkerCrash as crash:  # a bug, never a verdict: the child's traceback goes to stderr
        return _error(str(crash))
    _emit(text)
    return 0


def _decide_in_worker(query: str, networks: list[str], deadline: Deadline) -> str:
    # Imported here, in the worker only: this process waits and enforces the deadline, and must not
    # spend it importing torch (see ``verifier.cli``).
    from verifier.verify import query as query_module

    return query_module.decide_query(query, networks, deadline)


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _error(message: str) -> int:
    print(f"verify-model: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR

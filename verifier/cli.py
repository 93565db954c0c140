"""verify-model: the command line. Parses arguments, calls ``verifier.verify``, prints; no logic here.

    verify-model MODEL.onnx PROPERTY.vnnlib [--timeout S] [--out RESULT.txt] [--method M] [--json]
    verify-model --instances DIR/instances.csv [...] [--results results.csv] [--timeout-scale F]
                 [--workers N | --cluster ADDRESS] [--rerun unknown,timeout,error]
    verify-model verify QUERY --network NAME=MODEL.onnx [--timeout S]      (VNN-LIB 2.0 standard)
    verify-model supports --onnx-operators | ...                           (VNN-LIB 2.0 standard)
    verify-model --name | --version
    verify-model --serve | --stop-server [--server SOCKET]                  (the warm server)

Exit status 0 for every verdict; 1 for unusable input (unreadable or unsupported model or property);
2 for a usage error. Errors are one line on stderr.

A run's work happens in a forked worker (``verifier.verify.worker``); this process only waits for it,
kills it at the deadline and prints a ``timeout`` itself. It therefore imports nothing heavy (torch,
the engine): the worker does, so the deadline holds even while those imports are still running.
With ``--server SOCKET`` or ``$VERIFIER_SERVER``, a single run's worker is a child of a warm server
instead (``verifier.verify.server``), which has paid those imports already; see ``verifier.verify.client``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from verifier.errors import InputError, VerifierError
from verifier.verify import client, standard
from verifier.verify.deadline import Deadline, DeadlineReached, process_age
from verifier.verify.worker import WorkerCrash, run_once

PROG = "verify-model"
EXIT_INPUT, EXIT_USAGE = 1, 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Decide VNN-LIB properties of ONNX networks soundly.",
                     epilog="Commands of the VNN-LIB 2.0 standard: 'verify-model verify --help', "
                            "'verify-model supports --help'.")  # fmt: skip
    parser.add_argument("model", nargs="?", help="ONNX model file")
    parser.add_argument("property", nargs="?", help="VNN-LIB property file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole run (default 60)")
    parser.add_argument("--out", help="write the VNN-COMP result file here")
    parser.add_argument("--method", default="auto", help="auto (ibp then crown) or a bound method")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--attack-seconds",
        type=float,
        default=5.0,
        help="extra attack time once bounds are exhausted (default 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the attack")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads per run (default: the cores this process may use, shared "
                             "among --workers; 1 per task with --cluster)")  # fmt: skip
    batch = parser.add_argument_group("batch mode")
    batch.add_argument("--instances", nargs="+", metavar="CSV", help="instances.csv file(s) to run")
    batch.add_argument("--results", help="write per-instance results to this CSV")
    batch.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every instance's timeout")
    batch.add_argument("--timeout-cap", type=float, help="cap every instance's timeout at this many seconds")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--rerun", default="error", metavar="VERDICTS",
                       help="an existing --results file is resumed: its instances are not run again, but "
                            "those whose verdict is in this comma list (default error; e.g. "
                            "unknown,timeout,error)")  # fmt: skip
    spread = parser.add_argument_group("parallel runs")
    spread.add_argument("--workers", type=int, default=1,
                        help="worker processes on this machine: batch mode runs instances in parallel (each "
                             "with --threads torch threads: keep workers x threads within the cores), a "
                             "single run shares its branch-and-bound domains (default 1)")  # fmt: skip
    spread.add_argument("--cluster", metavar="ADDRESS",
                        help="run on a Ray cluster (its address, or 'auto'); needs verifier[distributed]; "
                             "batch mode runs each instance as a Ray task, as many at a time as the "
                             "cluster has CPUs (or --workers, if above 1)")  # fmt: skip
    warm = parser.add_argument_group("warm server (single runs)")
    warm.add_argument("--server", metavar="SOCKET",
                      help=f"run through the server on SOCKET if one listens there (default "
                           f"${client.ENV_SERVER}; unset: no server); with --serve / --stop-server, that "
                           f"server (default {client.default_socket()})")  # fmt: skip
    ident = parser.add_mutually_exclusive_group()
    ident.add_argument("--name", action="store_true", help="print the tool's name")
    ident.add_argument("--version", action="store_true", help="print the tool's version")
    ident.add_argument("--serve", action="store_true", help="start a warm server in the foreground")
    ident.add_argument("--stop-server", action="store_true", help="stop the warm server")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. ``argv=None`` means a real process (``sys.argv``): only then does start-up time count
    against ``--timeout``, and does the process end with ``os._exit`` once its output is flushed
    (interpreter shutdown with torch and onnxruntime loaded takes seconds, which would overrun the
    budget). Either way the work runs in a forked ``Worker``, killed at the deadline."""
    process = argv is None
    status = _dispatch(list(sys.argv[1:] if argv is None else argv), process)
    if process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _dispatch(args: list[str], process: bool) -> int:
    if args and args[0] in standard.COMMANDS:
        return standard.main(args, process=process)
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.name or ns.version:
        if ns.model or ns.instances:
            parser.error("--name and --version take no other arguments")
        print(standard.TOOL_NAME if ns.name else standard.tool_version())
        return 0
    if ns.serve or ns.stop_server:
        if ns.model or ns.instances:
            parser.error("--serve and --stop-server take no other arguments but --server")
        return _server_command(ns)
    if ns.instances:
        return _batch(ns, parser, process)
    if not (ns.model and ns.property):
        parser.error("give MODEL.onnx PROPERTY.vnnlib, or --instances CSV, or a command")
    return _single(ns, parser, process)


def _check_numbers(ns, parser, process: bool) -> None:
    if ns.timeout is not None and ns.timeout < 0:
        parser.error("--timeout must be >= 0")
    if ns.threads is not None and ns.threads < 1:
        parser.error("--threads must be >= 1")
    if ns.workers < 1:
        parser.error("--workers must be >= 1")
    if ns.threads is None:
        ns.threads = default_threads(ns.workers, ns.cluster is not None, process)


def default_threads(workers: int, cluster: bool, process: bool = True) -> int:
    """Torch threads per run when ``--threads`` is not given: the cores this process may use, shared among
    the local workers (1 per Ray task, which runs one per cluster CPU). Branch and bound's batches fill
    them: 2 threads against 1 on this 2-core machine took 80 ReLU-split iterations of mnist_fc 256x4 from
    29.1 to 15.6 s, and ACAS Xu 1_1 prop_5's input splitting from 5.2 to 4.0 s. Several processes started
    at once each take all the cores: pass ``--threads`` then.

    1 when ``main`` is called inside another program (``process`` False): the work runs in a forked child,
    and a child of a process that has used torch's OpenMP thread pool can hang as soon as it uses several
    threads itself (a real ``verify-model`` process imports no torch before it forks)."""
    if cluster or not process:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def _single(ns, parser, process: bool) -> int:
    deadline = Deadline(ns.timeout, start=_start(process))
    _check_numbers(ns, parser, process)
    try:
        usage_error, stdout, result_file = _decide(ns, deadline)
    except DeadlineReached:  # the worker was killed at the deadline, or stopped there itself
        usage_error, result_file = "", "timeout\n"
        # the keys of ``single.as_json``, for a result the worker could not give
        timed_out = {"verdict": "timeout", "method": "", "time_s": round(deadline.elapsed(), 3)}
        stdout = json.dumps(timed_out) + "\n" if ns.json else result_file
    except VerifierError as error:
        return _input_error(error)
    except WorkerCrash as crash:  # a bug, never a verdict: the worker's traceback goes to stderr
        print(f"{PROG}: error: {crash}", file=sys.stderr, flush=True)
        return EXIT_INPUT
    if usage_error:
        parser.error(usage_error)
    if ns.out:
        Path(ns.out).write_text(result_file)
    sys.stdout.write(stdout)
    return 0


def _decide(ns, deadline: Deadline) -> tuple[str, str, str]:
    """In a child of the chosen server if it takes the request, else in a local worker."""
    path = client.run_socket(ns.server)
    if path:
        try:
            return client.call(path, ns, deadline)
        except client.NoServer:
            pass
    return run_once(_decide_in_worker, ns, deadline, deadline=deadline)


def _decide_in_worker(ns, deadline: Deadline) -> tuple[str, str, str]:
    # Imported here, in the worker only: see the module docstring.
    from verifier.verify import single

    return single.decide(ns, deadline)


def _batch(ns, parser, process: bool) -> int:
    # Imported here, once: a worker killed at an instance's deadline is re-forked from this process,
    # which then starts without paying the imports again.
    from verifier.verify.batch import Spread, read_instances, rerun_verdicts, run_batch
    from verifier.verify.report import format_table, read_consensus, summarise
    from verifier.verify.single import settings

    _check_numbers(ns, parser, process)
    try:
        config, rerun = settings(ns), rerun_verdicts(ns.rerun)
    except InputError as error:
        parser.error(str(error))
    spread = Spread(ns.workers, ns.cluster, ns.threads)
    try:
        instances = [inst for csv_path in ns.instances for inst in read_instances(csv_path)]
        rows = run_batch(instances, config, ns.results, ns.timeout_scale, ns.timeout_cap, not ns.no_progress,
                         spread, rerun)  # fmt: skip
    except VerifierError as error:
        return _input_error(error)
    references = {
        Path(p).parent.name: read_consensus(Path(p).parent / "reference_results.csv") for p in ns.instances
    }
    summaries = summarise(rows, references)
    if ns.json:
        print(json.dumps({s.name: s.as_dict() for s in summaries}, indent=2))
    else:
        print(format_table(summaries))
    return 0


def _server_command(ns) -> int:
    path = client.server_socket(ns.server)
    if ns.stop_server:
        if client.stop(path) is None:
            return _input_error(VerifierError(f"no server listens on {path}"))
        return 0
    from verifier.verify import server  # imports nothing heavy until it serves

    try:
        return server.serve(path)
    except VerifierError as error:
        return _input_error(error)


def _start(process: bool) -> float | None:
    """When the budget started: at process start for a real process, else now."""
    return time.monotonic() - process_age() if process else None


def _input_error(error: Exception) -> int:
    """One line on stderr, exit status 1."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""A warm server whose job can be told to report its process settings, hang, crash or die (by ``--method``).

    python -m tests.cli.server_probe SOCKET

Any other method runs the real job. A separate process, started as ``verify-model --serve`` is: it only
imports before it forks, so what the probe reports is what a real server's child sees.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from verifier.verify import single

_real_decide = single.decide
_calls = []  # one entry per request this process served: a fresh fork per request keeps it at one


def _probe(ns, deadline):
    import torch

    _calls.append(ns.method)
    if ns.method == "stuck":
        time.sleep(600)  # a computation that never polls its deadline
    if ns.method == "crash":
        raise ZeroDivisionError("a bug in the work")
    if ns.method == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if ns.method != "probe":
        return _real_decide(ns, deadline)
    torch.set_num_threads(ns.threads)
    product = float((torch.ones(256, 256) @ torch.ones(256, 256)).sum())  # the thread pool works
    print("stray output of the job", file=sys.stderr, flush=True)
    seen = {"threads": torch.get_num_threads(), "product": product, "cwd": os.getcwd(), "seed": ns.seed,
            "probe_env": os.environ.get("PROBE"), "calls": len(_calls), "deadline_at": deadline.at}  # fmt: skip
    return "", json.dumps(seen) + "\n", "unknown\n"


if __name__ == "__main__":
    from verifier.cli import main

    single.decide = _probe
    main(["--serve", "--server", sys.argv[1]])

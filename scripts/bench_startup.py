"""Start-up cost of one small ``verify-model`` run: wall and CPU time, cold and warm model cache.

    .venv/bin/python scripts/bench_startup.py [--repeats 5] [--out scripts/results/bench_startup.json]

Runs ``verify-model models/test_small.onnx specs/test/test_small.vnnlib`` as its own process ``repeats``
times with an empty model cache (cold: every run loads the ONNX file) and ``repeats`` times with a filled
one (warm), and ``python -c 'import torch'`` (ended by ``os._exit`` as ``verify-model`` is) as the floor
no run can beat. Reports medians of wall time and of CPU time (user + system of the process and its
children: less sensitive to a busy machine).
The cache lives in a temporary folder (``VERIFIER_CACHE_DIR``), never the user's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, "-m", "verifier.cli", "models/test_small.onnx", "specs/test/test_small.vnnlib"]
TORCH = [
    sys.executable,
    "-c",
    "import os, torch; os._exit(0)",
]  # exits as verify-model does, skipping teardown


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(command: list[str], env: dict, repeats: int, before_each=lambda: None) -> dict:
    runs = []
    for _ in range(repeats):
        before_each()
        runs.append(timed(command, env))
    return {
        "wall_s": round(statistics.median(w for w, _ in runs), 3),
        "cpu_s": round(statistics.median(c for _, c in runs), 3),
        "runs": [[round(w, 3), round(c, 3)] for w, c in runs],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results" / "bench_startup.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, VERIFIER_CACHE_DIR=cache)
        empty = lambda: shutil.rmtree(cache, ignore_errors=True)
        report = {
            "command": " ".join(RUN[1:]),
            "load_average": os.getloadavg(),
            "import_torch": medians(TORCH, env, args.repeats),
            "cold_cache": medians(RUN, env, args.repeats, before_each=empty),
            "warm_cache": medians(RUN, env, args.repeats),
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("import_torch", "cold_cache", "warm_cache"):
        print(f"{name:13s} wall {report[name]['wall_s']:6.2f} s   cpu {report[name]['cpu_s']:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

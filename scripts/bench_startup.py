"""Start-up cost of one small ``verify-model`` run: wall and CPU time, cold and warm model cache, warm server.

    .venv/bin/python scripts/bench_startup.py [--repeats 5] [--out scripts/results/bench_startup.json]

Runs ``verify-model models/test_small.onnx specs/test/test_small.vnnlib`` as its own process ``repeats``
times with an empty model cache (cold: every run loads the ONNX file) and ``repeats`` times with a filled
one (warm), and ``python -c 'import torch'`` (ended by ``os._exit`` as ``verify-model`` is) as the floor
no run can beat without a server. Then ``repeats`` runs through a warm server (``verify-model --serve`` on
a temporary socket, warm cache; its CPU time is the client's alone, the server's child is not counted), and
the client's imports (``python -X importtime``: total, the slowest, and that torch is not among them).
Reports medians of wall time and of CPU time (user + system of the process and its children: less
sensitive to a busy machine).
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


def warm_server(env: dict, repeats: int, folder: str) -> tuple[dict, dict]:
    """Medians of runs through a server started for them, and the imports of one such client."""
    sock = os.path.join(folder, "bench.sock")
    server = subprocess.Popen(
        [*RUN[:3], "--serve", "--server", sock], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    try:
        server.stderr.readline()  # "serving on ...": it listens
        served = [*RUN, "--server", sock]
        timed(served, env)  # fills the model cache
        runs = medians(served, env, repeats)
        done = subprocess.run([served[0], "-X", "importtime", *served[1:]], cwd=REPO, env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    return runs, client_imports(done.stderr)


def client_imports(importtime: str) -> dict:
    """Summary of ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    rows = []
    for line in importtime.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line[len("import time:") :].split("|")
            rows.append((int(cumulative), name.rstrip()))
    top_level = [(us, name.strip()) for us, name in rows if not name.startswith("  ")]
    names = {name.strip() for _, name in rows}
    return {
        "modules": len(rows),
        "total_ms": round(sum(us for us, _ in top_level) / 1000, 1),
        "slowest_top_level_ms": {name: round(us / 1000, 1) for us, name in sorted(top_level)[::-1][:6]},
        "imports_torch": "torch" in names,
        "imports_numpy": "numpy" in names,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results" / "bench_startup.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as sockets:
        env = dict(os.environ, VERIFIER_CACHE_DIR=cache)
        empty = lambda: shutil.rmtree(cache, ignore_errors=True)
        report = {
            "command": " ".join(RUN[1:]),
            "load_average": os.getloadavg(),
            "import_torch": medians(TORCH, env, args.repeats),
            "cold_cache": medians(RUN, env, args.repeats, before_each=empty),
            "warm_cache": medians(RUN, env, args.repeats),
        }
        report["warm_server"], report["client_imports"] = warm_server(env, args.repeats, sockets)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("import_torch", "cold_cache", "warm_cache", "warm_server"):
        print(f"{name:13s} wall {report[name]['wall_s']:6.2f} s   cpu {report[name]['cpu_s']:6.2f} s")
    imports = report["client_imports"]
    torch = "imports torch" if imports["imports_torch"] else "no torch"
    print(f"client imports {imports['total_ms']:.1f} ms ({imports['modules']} modules, {torch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

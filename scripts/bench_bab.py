#!/usr/bin/env python
"""Time a fixed number of ReLU-splitting branch-and-bound iterations on one VNN-COMP instance, and store
the figures as JSON: the work is the same whatever the machine's speed (same pops, same splits), so the
time per run compares code, and the global lower bound at each mark shows the search is unchanged.

    .venv/bin/python scripts/bench_bab.py onnx/mnist-net_256x4.onnx vnnlib/prop_0_0.05.vnnlib
        [--suite ../shared/benchmarks/mnist_fc] [--iterations 40] [--threads 1] [--repeats 3] [--out bab.json]

Each iteration pops 256 parents, splits them and bounds the children in one call, as ``verify-model``'s
branch and bound does, without its attack rounds and deadline. The roots (full alpha-CROWN) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from verifier.spec.vnnlib import load_property
from verifier.verify.bab import disjuncts, driver
from verifier.verify.bab.queue import BOUND, DomainQueue, take
from verifier.verify.bab.relu_split import ReluSplit
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline
from verifier.verify.instance import load_model
from verifier.verify.spec_batch import spec_batch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MARKS = (5, 10, 20, 40, 80, 160, 320, 640)


def run(suite: Path, onnx: str, vnnlib: str, iterations: int) -> dict:
    """One search: seconds for ``iterations`` iterations, domains bounded, global bound at the marks."""
    checker, model = load_model(str(suite / onnx))
    bounder = Bounder(model, spec_batch(load_property(str(suite / vnnlib)), checker.dtype))
    with torch.no_grad():
        bounder.run("crown", Deadline(60))
    brancher = ReluSplit(bounder)
    problem = driver.Problem(bounder, None, None, None)
    roots = driver.settle(brancher, brancher.roots(np.flatnonzero(~bounder.case_excluded())), problem)
    roots = disjuncts.by_disjunct(take(roots, roots[BOUND] <= 0), bounder, brancher.narrow)
    queue = DomainQueue()
    queue.push(take(roots, roots[BOUND] <= 0))
    bounded, marks, start = 0, {}, time.perf_counter()
    for it in range(1, iterations + 1):
        if not len(queue):
            break
        children = driver.expand(brancher, queue.pop(brancher.max_parents), problem)
        bounded += int(children[BOUND].shape[0])
        queue.push(take(children, children[BOUND] <= 0))
        if it in MARKS:
            marks[it] = queue.global_bound() if len(queue) else None
    return {
        "seconds": time.perf_counter() - start,
        "iterations": it,
        "domains": bounded,
        "global_bound": marks,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("vnnlib")
    parser.add_argument("--suite", type=Path, default=SHARED / "benchmarks" / "mnist_fc")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_bab.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [run(args.suite, args.onnx, args.vnnlib, args.iterations) for _ in range(args.repeats)]
    result = {
        "instance": f"{args.suite.name}/{args.onnx} {args.vnnlib}",
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
        "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"} | {"last": runs[-1]}))


if __name__ == "__main__":
    main()

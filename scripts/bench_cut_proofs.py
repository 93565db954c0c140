#!/usr/bin/env python
"""Measure the cut proofs on one VNN-COMP instance and store the figures as JSON: how many of HiGHS's root
cuts ``mip_cuts.proven_rows`` proves, and in what time, with the cones and without.

    .venv/bin/python scripts/bench_cut_proofs.py onnx/cifar_deep_kw.onnx \\
        vnnlib/cifar_deep_kw-img9931-eps0.02496732026143791.vnnlib [--suite ../shared/benchmarks/oval21]
        [--root-seconds 600] [--proof-seconds 600] [--repeats 1] [--out bench_cut_proofs.json]

The cut job's task is the one ``verify-model`` hands over (``ReluSplitConfig(cuts=True)``: the single
root's box, intermediate bounds, objective row and cutoff), taken where the search would start the job;
HiGHS's root separation then runs here, in this process, and the same pool is proven ``--repeats``
times each way. The proofs use one core; HiGHS's pool differs a little from run to run (its root, timed
too, depends on where its time limits fall), so compare figures of one pool."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from verifier.verify.bab import mip_cuts
from verifier.verify.bab.input_split import InputSplitConfig
from verifier.verify.bab.milp import encode
from verifier.verify.bab.relu_split import ReluSplitConfig
from verifier.verify.instance import VerifyConfig, verify_instance

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class _Taken(Exception):
    """Ends the search once the cut job's task is taken."""


def task(suite: Path, onnx: str, vnnlib: str, timeout: float) -> tuple:
    """``(graph, box_lo, box_hi, bounds, objective, cutoff)`` as the search would hand them to its job."""
    taken = []

    class Job:
        def __init__(self, graph, box_lo, box_hi, bounds, objective, cutoff, seconds):
            taken.append((graph, box_lo, box_hi, bounds, objective, cutoff))
            raise _Taken

    # ReLU splitting whatever the input's size (a small one would get input splitting, and no cuts)
    split = ReluSplitConfig(cuts=True)
    config = VerifyConfig(timeout=timeout, input_split=InputSplitConfig(max_inputs=0), relu_split=split)
    real, mip_cuts.CutJob = mip_cuts.CutJob, Job
    try:
        verify_instance(suite / onnx, suite / vnnlib, config)
    except _Taken:
        pass
    finally:
        mip_cuts.CutJob = real
    if not taken:
        raise SystemExit("the instance was decided before a cut job would start")
    return taken[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("vnnlib")
    parser.add_argument("--suite", type=Path, default=SHARED / "benchmarks" / "oval21")
    parser.add_argument(
        "--timeout", type=float, default=720.0, help="the instance's budget (as verify-model's)"
    )
    parser.add_argument("--root-seconds", type=float, default=600.0)
    parser.add_argument("--proof-seconds", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_cut_proofs.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    graph, lo, hi, bounds, objective, cutoff = task(args.suite, args.onnx, args.vnnlib, args.timeout)
    encoding = encode(graph, lo, hi, bounds)
    start = time.monotonic()
    found = mip_cuts.root_cuts(encoding, objective, cutoff, args.root_seconds)
    result = {
        "instance": f"{args.suite.name}/{args.onnx} {args.vnnlib}",
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
        "milp": {"rows": encoding.matrix.shape[0], "columns": encoding.matrix.shape[1]},
        "root_seconds": round(time.monotonic() - start, 1),
        "pool_rows": None if found is None else found[0].shape[0],
    }
    for name, with_cones in (("with_cones", True), ("without_cones", False)):
        runs = []
        for _ in range(args.repeats if found is not None else 0):
            start = time.monotonic()
            kept = mip_cuts.proven_rows(encoding, *found, objective, cutoff, args.proof_seconds, with_cones)
            runs.append({"proven": kept[0].shape[0], "seconds": round(time.monotonic() - start, 1)})
        if runs:
            result[name] = {
                "proven": runs[-1]["proven"],
                "median_seconds": statistics.median(r["seconds"] for r in runs),
                "runs": runs,
            }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

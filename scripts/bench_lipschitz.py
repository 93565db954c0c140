"""Lipschitz estimators on the benchmark networks: each upper bound against the sampled lower bound, with
its time (median of repeats), and the layer-wise / product ratio on random depth-8 ReLU MLPs.

    .venv/bin/python scripts/bench_lipschitz.py [--repeats 3] [--out scripts/results/bench_lipschitz.json]

Networks: the mnist_fc MLPs (sampled points: the first 64 MNIST test images plus N(0, 0.1^2) noise) and
three ACAS Xu networks (points N(0, 1) in their normalised input space). Global L2 constants of the whole
output vector, on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import verifier
from verifier.datasets import read_mnist
from verifier.lipschitz.sampled import SampleConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the worktrees and the main checkout sit beside the shared folder
MNIST = [f"benchmarks/mnist_fc/onnx/mnist-net_256x{d}.onnx" for d in (2, 4, 6)]
ACAS = [f"benchmarks/acasxu/onnx/ACASXU_run2a_{a}_batch_2000.onnx" for a in ("1_1", "3_3", "5_3")]


def timed(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = float(fn())
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def bench_model(path: Path, points: torch.Tensor, scale: float, repeats: int) -> dict:
    model = verifier.load(str(path))
    points = points.reshape(len(points), *model.input_shape)
    row = {"model": path.name}
    sample = SampleConfig(n=256, scale=scale, steps=20, pairs=16)
    row["sampled"], row["sampled_s"] = timed(
        lambda: model.lipschitz(method="sampled", points=points, sample=sample), repeats
    )
    for method in ("product", "layerwise"):
        value, seconds = timed(lambda m=method: model.lipschitz(method=m), repeats)
        row[method], row[f"{method}_s"], row[f"{method}_over_sampled"] = (
            value,
            seconds,
            value / row["sampled"],
        )
    return row


def random_mlps(seeds: int = 5) -> list[dict]:
    rows = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        layers, prev = [], 20
        for _ in range(8):
            layers += [nn.Linear(prev, 64), nn.ReLU()]
            prev = 64
        model = verifier.load(nn.Sequential(*layers, nn.Linear(64, 10)), torch.zeros(1, 20))
        product, layerwise = (
            float(model.lipschitz(method="product")),
            float(model.lipschitz(method="layerwise")),
        )
        rows.append({"seed": seed, "product": product, "layerwise": layerwise, "ratio": product / layerwise})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "scripts/results/bench_lipschitz.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, _ = read_mnist(SHARED / "data/mnist")
    mnist_points = torch.from_numpy(images[:64].copy())
    rows = [bench_model(SHARED / p, mnist_points, 0.1, args.repeats) for p in MNIST]
    rows += [bench_model(SHARED / p, torch.zeros(1, 5), 1.0, args.repeats) for p in ACAS]
    mlps = random_mlps()
    result = {"networks": rows, "random_relu_mlps_depth8_width64": mlps,
              "ratio_median": statistics.median(r["ratio"] for r in mlps), "repeats": args.repeats}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'model':36} {'sampled':>10} {'product':>12} {'layerwise':>12}   seconds (s / p / l)")
    for r in rows:
        print(f"{r['model']:36} {r['sampled']:10.4g} {r['product']:12.4g} {r['layerwise']:12.4g}   "
              f"{r['sampled_s']:.3f} / {r['product_s']:.3f} / {r['layerwise_s']:.3f}")  # fmt: skip
    print("depth-8 random ReLU MLPs, product / layerwise:", [round(r["ratio"], 2) for r in mlps])


if __name__ == "__main__":
    main()

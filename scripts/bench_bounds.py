#!/usr/bin/env python
"""Time IBP / CROWN / LBP (and the hybrids) on the mnist_fc 256x6 network, the oval21 cifar_base CNN and a
vision transformer of VNN-COMP 2023 (``vit``: attention with Softmax, products of tensors, BatchNorm).

Inputs are real: MNIST test images (eps 0.03 in pixel space, clipped to [0, 1]), the input boxes of the
oval21 cifar_base properties and of the vit pgd_2_3_16 properties (tiled to the batch size). Reports the median time of repeats, the mean width
of the output bounds, and for CROWN the matrix-multiply FLOPs it ran against this machine's measured GEMM
throughput (the "floor": the time the GEMMs alone would take). The GEMM rate is measured again before
every timed repeat and the median taken, so that a machine shared with other work slows both alike; the
load average is recorded. JSON out.

    .venv/bin/python scripts/bench_bounds.py --out scripts/results/bench_bounds.json [--threads 2] [--repeats 5]
        [--methods crown alpha-crown] [--shared ../shared] [--models vit_pgd_2_3_16] [--training-only]

Training rows: one DM-small (BatchNorm) optimiser step on 128 MNIST images with the natural loss and with
the IBP and CROWN-IBP certified losses at eps 0.1 (CROWN-IBP on the 9 margin rows, and fused into the
loss: one row), and their ratios to the natural step (denormals flushed,
as the training script does), each timed in bursts of back-to-back steps as a training loop runs them
(``loop_times``). A reference row, "ibp (plain torch)", times the same IBP loss written out
directly in torch for this one architecture (BatchNorm folded into its layer, centre and radius), without
the engine: what the formulation costs when nothing is generic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import verifier
from verifier.datasets import read_mnist
from verifier.spec.vnnlib import load_property

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def mnist_regions(model, batch: int, shared: Path) -> verifier.Box:
    images, _ = read_mnist(shared / "data" / "mnist", "test")
    x = torch.from_numpy(images[:batch]).reshape(batch, *model.input_shape)
    return verifier.LinfBall(x, 0.03, clip=(0.0, 1.0))


def oval_regions(model, batch: int, shared: Path) -> verifier.Box:
    return instance_regions(model, batch, shared / "benchmarks" / "oval21", "onnx/cifar_base_kw")


def vit_regions(model, batch: int, shared: Path) -> verifier.Box:
    return instance_regions(model, batch, shared / "benchmarks-extra" / "vit", "onnx/pgd_2_3_16")


def instance_regions(model, batch: int, folder: Path, onnx_prefix: str) -> verifier.Box:
    """The input boxes of a suite's properties on one model (instances.csv rows starting with the prefix)."""
    names = sorted({line.split(",")[1] for line in (folder / "instances.csv").read_text().splitlines()
                    if line.startswith(onnx_prefix)})  # fmt: skip
    cases = [load_property(folder / n).cases[0] for n in names]
    lo = torch.stack([torch.from_numpy(c.lower).float() for c in cases])
    hi = torch.stack([torch.from_numpy(c.upper).float() for c in cases])
    reps = -(-batch // len(cases))
    lo, hi = lo.repeat(reps, 1)[:batch], hi.repeat(reps, 1)[:batch]
    return verifier.Box(lo.reshape(batch, *model.input_shape), hi.reshape(batch, *model.input_shape))


def gemm_rate(repeats: int = 20) -> float:
    """Measured float32 GEMM throughput (GFLOP/s) on shapes like CROWN's: [512 x 256] @ [256 x 256]."""
    a, b = torch.randn(512, 256), torch.randn(256, 256)
    for _ in range(5):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 512 * 256 * 256 * repeats / (time.perf_counter() - start) / 1e9


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn`` and median GEMM rate (GFLOP/s) measured just before each repeat."""
    fn()
    times, rates = [], []
    for _ in range(repeats):
        rates.append(gemm_rate())
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(rates)


MODELS = {  # name: (path under the shared folder, regions)
    "mnist_fc_256x6": ("benchmarks/mnist_fc/onnx/mnist-net_256x6.onnx", mnist_regions),
    "oval21_cifar_base": ("benchmarks/oval21/onnx/cifar_base_kw.onnx", oval_regions),
    "vit_pgd_2_3_16": ("benchmarks-extra/vit/onnx/pgd_2_3_16.onnx", vit_regions),
}


def run(name, path, make_region, args) -> list[dict]:
    model = verifier.load(args.shared / path)
    rows = []
    for batch in args.batches:
        region = make_region(model, batch, args.shared)
        for method in args.methods:
            seconds, rate = median_time(lambda r=region, m=method: model.bounds(r, method=m), args.repeats)
            b = model.bounds(region, method=method)
            row = {"model": name, "batch": batch, "method": method, "median_ms": round(1000 * seconds, 2),
                   "mean_width": float((b.upper - b.lower).mean()), "load_1min": os.getloadavg()[0]}  # fmt: skip
            if method == "crown":
                with FlopCounterMode(display=False) as counter:
                    model.bounds(region, method=method)
                gflop = counter.get_total_flops() / 1e9
                row.update(gflop=round(gflop, 3), gemm_gflops=round(rate, 1), floor_ms=round(1000 * gflop / rate, 2),
                           ratio_to_floor=round(seconds * rate / gflop, 2))  # fmt: skip
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def training_rows(args) -> list[dict]:
    """One optimiser step of DM-small (BatchNorm, training mode) on 128 real MNIST training images: the
    natural cross-entropy step, and the IBP and CROWN-IBP certified-loss steps at eps 0.1 (live bounds; the
    latter on the margins and fused into the loss), as median times and ratios to the natural step."""
    from verifier.training.loss import certified_loss
    from verifier.training.models import build

    images, labels = read_mnist(args.shared / "data" / "mnist", "train")
    x, y = torch.from_numpy(images[:128]).unsqueeze(1), torch.from_numpy(labels[:128])
    torch.manual_seed(0)
    net = build("dm-small", batch_norm=True).train()
    bounded = verifier.load(net, x, live=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = {
        "natural": lambda: torch.nn.functional.cross_entropy(net(x), y),
        "ibp": lambda: certified_loss(bounded, x, y, 0.1, "ibp").loss,
        "ibp (plain torch)": lambda: plain_ibp_loss(net, x, y, 0.1),
        "crown-ibp": lambda: certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=1.0).loss,
        "crown-ibp (fused)": lambda: (
            certified_loss(bounded, x, y, 0.1, "crown-ibp", beta=1.0, fused=True).loss
        ),
    }

    def step(loss):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    torch.set_flush_denormal(True)  # as scripts/train_certified.py trains (tiny gradients: see there)
    times = loop_times({name: lambda f=loss: step(f) for name, loss in losses.items()}, args.repeats)
    torch.set_flush_denormal(False)
    rows = [{"model": "dm-small+bn training step", "batch": 128, "method": name, "median_ms": round(1000 * t, 2),
             "ratio_to_natural": round(t / times["natural"], 2), "load_1min": os.getloadavg()[0]}
            for name, t in times.items()]  # fmt: skip
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    return rows


def loop_times(steps: dict, repeats: int, burst: int = 10) -> dict[str, float]:
    """Median seconds per call of each function in ``steps``, timed as a training loop runs it: in bursts
    of ``burst`` back-to-back calls (the median call of a burst), the functions taking turns burst by burst
    so that drift in the machine's speed reaches all alike, the median over ``repeats`` bursts. (Timing one
    call after a GEMM-rate probe, as ``median_time`` does, finds the model's weights and activations out of
    cache: that adds about the same few milliseconds to every step and flatters the ratios.)"""
    for fn in steps.values():
        for _ in range(3):
            fn()
    per_burst: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times = []
            for _ in range(burst):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            per_burst[name].append(statistics.median(times))
    return {name: statistics.median(t) for name, t in per_burst.items()}


def plain_ibp_loss(net: torch.nn.Sequential, x, y, eps: float) -> torch.Tensor:
    """The IBP certified loss (kappa 0.5) of a Conv/Linear(+BatchNorm)+ReLU stack in plain torch: the clean
    pass with batch statistics, each BatchNorm folded into its layer with them, then centre and radius
    through every layer and the margins of the last layer's rows exactly (the reference row above)."""
    F = torch.nn.functional
    h, layers, mods = x, [], list(net)
    while mods:
        m = mods.pop(0)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            h, w, b = m(h), m.weight, m.bias
            if mods and isinstance(mods[0], (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                bn, dims = mods.pop(0), [0] + list(range(2, h.dim()))
                var, mean = torch.var_mean(h, dims, unbiased=False)
                scale = bn.weight * torch.rsqrt(var + bn.eps)
                w, b = w * scale.reshape(-1, *[1] * (w.dim() - 1)), (b - mean) * scale + bn.bias
                h = F.batch_norm(h, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
            layers.append((m, w, b))
        else:
            h = m(h)
            layers.append(m)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    for layer in layers[:-1]:
        if not isinstance(layer, tuple):
            lo, hi = layer(lo), layer(hi)  # ReLU, Flatten: monotone, coordinatewise
            continue
        m, w, b = layer
        if isinstance(m, torch.nn.Conv2d):
            centre = F.conv2d(lo + hi, w * 0.5, b, m.stride, m.padding)
            radius = F.conv2d(hi - lo, w.abs() * 0.5, None, m.stride, m.padding)
        else:
            centre, radius = F.linear(lo + hi, w * 0.5, b), F.linear(hi - lo, w.abs() * 0.5)
        lo, hi = centre - radius, centre + radius
    _, w, b = layers[-1]
    rows = torch.eye(w.shape[0])[y].unsqueeze(1) - torch.eye(w.shape[0])  # [B, n, n]: f_y - f_j
    a = rows @ w
    margins = (a @ ((hi + lo) / 2).unsqueeze(2) - a.abs() @ ((hi - lo) / 2).unsqueeze(2)).squeeze(
        2
    ) + rows @ b
    return 0.5 * F.cross_entropy(h, y) + 0.5 * F.cross_entropy(-margins, y)  # margin 0 at j = y


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_bounds.json"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--methods", nargs="+", default=list(verifier.METHODS), choices=verifier.METHODS)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the folder holding benchmarks/, data/")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--training-only", action="store_true", help="only the training-step rows")
    args = parser.parse_args(argv)
    if not (args.shared / "benchmarks").is_dir():
        sys.exit(f"benchmark data not found in {args.shared}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    if not args.training_only:
        for name in args.models:
            rows += run(name, *MODELS[name], args)
    if args.training_only or set(args.models) == set(MODELS):
        rows += training_rows(args)
    result = {
        "threads": args.threads,
        "gemm_gflops": round(gemm_rate(), 1),
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Clean and certified L2 accuracy on the first N MNIST test images: Lipschitz certificates and CROWN of
Sandwich networks, randomized smoothing of noise-trained MLPs, side by side.

    PYTHONPATH=. .venv/bin/python scripts/eval_lipschitz.py --lipschitz models/mnist_sandwich_g5.json \
        --smoothed models/mnist_mlp_noise0.5.json --n 500 --radii 0.5 1.0 1.58 --plot OUT.png

Balls are ``||x' - x||_2 <= r`` in pixel space ([0, 1], 784 pixels), not clipped to [0, 1] (as is usual for
L2 certificates; a clipped ball is a subset, so every certificate below holds for it too). Per Sandwich net:

* ``lipschitz (gamma)``: radius ``min_j (f_y - f_j) / (sqrt(2) gamma)`` from the bound the network holds by
  construction (deterministic);
* ``lipschitz (estimated)``: ``model.certified_radius`` (the engine's own estimate of each margin row's
  constant from the loaded weights, tightest of product and layer-wise; deterministic);
* ``crown``, ``crown+lipschitz`` (the API's methods; the latter with the engine's estimated constants) and
  ``crown+lipschitz (gamma)`` (per margin row the tighter of CROWN and ``f_y - f_j - sqrt(2) gamma r``):
  every margin's lower bound over the ball > 0, per radius (deterministic).

Per noise-trained MLP, ``smoothing``: Cohen et al.'s CERTIFY of the *smoothed* classifier (``n0``, ``n``,
``alpha``): probabilistic, each certificate wrong with probability up to alpha; its "clean" accuracy is the
fraction certified correct at radius 0 (abstentions count as errors). Certified accuracy at r: correct
and certified radius > r. Output: a table, JSON (``--json``) and a PNG (``--plot``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

import verifier
from verifier import smoothing
from verifier.api import margin_rows
from verifier.datasets import read_mnist
from verifier.training.evaluate import margin
from verifier.training.l2 import check_rows, lipschitz_radius, load_net, radius_accuracy

REPO = Path(__file__).resolve().parents[1]
GRID = [k / 50 for k in range(126)]  # radii of the plotted curves, 0 .. 2.5
# plot styles: a colour per model, a line per radius certificate, a marker per bound method
LINES = {"lipschitz (gamma)": "-", "lipschitz (estimated)": ":", "smoothing": "--"}
MARKERS = {"crown": "x", "crown+lipschitz": "s", "crown+lipschitz (gamma)": "o"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lipschitz", type=Path, nargs="*", default=[], help="cards of Sandwich networks")
    p.add_argument("--smoothed", type=Path, nargs="*", default=[], help="cards of noise-trained MLPs")
    p.add_argument("--n", type=int, default=500, help="the first N test images")
    p.add_argument("--radii", type=float, nargs="+", default=[0.5, 1.0, 1.58])
    p.add_argument("--n0", type=int, default=100, help="smoothing: selection samples")
    p.add_argument("--samples", type=int, default=1000, help="smoothing: estimation samples n")
    p.add_argument("--alpha", type=float, default=0.001, help="smoothing: failure probability")
    p.add_argument("--batch-size", type=int, default=100, help="images per CROWN pass")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=REPO / "scripts" / "results" / "eval_lipschitz_mnist.json")
    p.add_argument("--plot", type=Path, help="PNG of certified accuracy against the radius")
    return p.parse_args(argv)


def row(method: str, model: str, correct: torch.Tensor, certified: dict, seconds: float, **extra) -> dict:
    return {"method": method, "model": model, "clean": float(correct.double().mean()), "certified": certified,
            "seconds": round(seconds, 2), **extra}  # fmt: skip


def lipschitz_rows(card: Path, x, y, args) -> list[dict]:
    """The Lipschitz certificates (bound by construction, engine estimate), CROWN and crown+lipschitz."""
    net, info = load_net(card)
    model = verifier.load(net, x[:1])
    tick = time.perf_counter()
    with torch.no_grad():
        logits = copy.deepcopy(net).double()(x.double())  # float64: the radius is not eroded by float32 sums
    correct = margin(logits, y) > 0
    by_gamma = lipschitz_radius(logits, y, info["gamma"])
    t_gamma = time.perf_counter() - tick
    tick = time.perf_counter()
    estimated = model.certified_radius(x, y)
    t_est = time.perf_counter() - tick
    name, gamma = card.stem, info["gamma"]
    rows = [
        row("lipschitz (gamma)", name, correct, radius_accuracy(by_gamma, correct, args.radii), t_gamma,
            gamma=gamma, curve=radius_accuracy(by_gamma, correct, GRID), deterministic=True),
        row("lipschitz (estimated)", name, correct, radius_accuracy(estimated, correct, args.radii), t_est,
            gamma=gamma, curve=radius_accuracy(estimated, correct, GRID), deterministic=True,
            median_radius_ratio=float((estimated / by_gamma)[correct].median())),
    ]  # fmt: skip
    gamma_rows = (margin_rows(y, logits.shape[1], logits) * logits.unsqueeze(1)).sum(-1)  # f_y - f_j [B, n-1]
    methods = ("crown", "crown+lipschitz", "crown+lipschitz (gamma)")
    seconds, certified = dict.fromkeys(methods, 0.0), {m: {} for m in methods}
    for r in args.radii:
        ok = {m: torch.zeros_like(correct) for m in methods}
        for k in range(0, len(y), args.batch_size):
            part = slice(k, k + args.batch_size)
            region = verifier.L2Ball(x[part], r)
            for method in methods[:2]:
                tick = time.perf_counter()
                lower = model.margins(region, y[part], method=method)
                ok[method][part] = (lower > 0).all(1)
                seconds[method] += time.perf_counter() - tick
                if method == "crown":  # per row the tighter of CROWN and f_y - f_j - sqrt(2) gamma r
                    by_gamma = gamma_rows[part] - math.sqrt(2.0) * gamma * r
                    ok[methods[2]][part] = (torch.maximum(lower.double(), by_gamma) > 0).all(1)
        for method in methods:
            certified[method][f"{r:g}"] = float((ok[method] & correct).double().mean())
    seconds[methods[2]] = seconds["crown"] + t_gamma
    rows += [
        row(m, name, correct, certified[m], seconds[m], gamma=gamma, deterministic=True) for m in methods
    ]
    return rows


def smoothing_row(card: Path, x, y, args) -> dict:
    """CERTIFY of the smoothed noise-trained MLP at its training sigma (probabilistic)."""
    net, info = load_net(card)
    cfg = smoothing.SmoothingConfig(sigma=info["noise"], n0=args.n0, n=args.samples, alpha=args.alpha)
    tick = time.perf_counter()
    cert = smoothing.certify(net, x, cfg)
    correct = cert.label == y
    return row("smoothing", card.stem, correct, radius_accuracy(cert.radius, correct, args.radii),
               time.perf_counter() - tick, sigma=cfg.sigma, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha,
               abstained=float(cert.abstained.double().mean()), curve=radius_accuracy(cert.radius, correct, GRID),
               deterministic=False)  # fmt: skip


def format_table(rows: list[dict], radii: list[float]) -> str:
    header = ["model", "method", "clean", *(f"r={r:g}" for r in radii), "seconds"]
    lines = [header] + [
        [r["model"], r["method"] + ("" if r["deterministic"] else " *"), f"{100 * r['clean']:.1f}",
         *(f"{100 * r['certified'][f'{q:g}']:.1f}" for q in radii), f"{r['seconds']:.1f}"]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    text = ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths)))
            for line in lines]  # fmt: skip
    return "\n".join(text + ["* probabilistic (randomized smoothing): each certificate wrong w.p. <= alpha"])


def plot(rows: list[dict], out: Path, n: int) -> None:
    """Certified accuracy against the radius: curves for radius certificates, markers for CROWN."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs matplotlib, an optional extra: pip install 'verifier[plot]'")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colours = {m: f"C{k}" for k, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
    for r in rows:
        label = f"{r['model']}: {r['method']}" + ("" if r["deterministic"] else " (probabilistic)")
        if "curve" in r:
            ax.plot(GRID, [100 * r["curve"][f"{q:g}"] for q in GRID], LINES[r["method"]], color=colours[r["model"]],
                    label=label)  # fmt: skip
        else:
            radii = [float(q) for q in r["certified"]]
            ax.plot(radii, [100 * a for a in r["certified"].values()], MARKERS[r["method"]], color=colours[r["model"]],
                    fillstyle="none", markersize=8, label=label)  # fmt: skip
    ax.set(xlabel="L2 radius (pixels in [0, 1])", ylabel="certified accuracy (%)", ylim=(0, 100),
           title=f"MNIST, first {n} test images")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if not args.data_root.is_dir():
        sys.exit(f"error: {args.data_root} not found (MNIST IDX files; nothing is downloaded)")
    images, labels = read_mnist(args.data_root, "test")
    x, y = torch.from_numpy(images[: args.n]).flatten(1), torch.from_numpy(labels[: args.n])
    rows = [r for card in args.lipschitz for r in lipschitz_rows(card, x, y, args)]
    rows += [smoothing_row(card, x, y, args) for card in args.smoothed]
    print(format_table(rows, args.radii))
    problems = check_rows(rows)
    print("\n".join(problems))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"n": args.n, "radii": args.radii, "threads": args.threads,
                                     "command": "scripts/eval_lipschitz.py " + " ".join(sys.argv[1:] if argv is None else argv),
                                     "rows": rows}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot, args.n)
        print(f"wrote {args.plot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

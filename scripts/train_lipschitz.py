#!/usr/bin/env python3
"""Train an MNIST classifier for L2 certificates: a Lipschitz-bounded Sandwich network, or an ordinary MLP on
Gaussian-noise-augmented images (for randomized smoothing).

    PYTHONPATH=. .venv/bin/python scripts/train_lipschitz.py --kind sandwich --gamma 5 --name mnist_sandwich_g5
    PYTHONPATH=. .venv/bin/python scripts/train_lipschitz.py --kind mlp --noise 0.5 --name mnist_mlp_noise0.5

Inputs are flat 784-vectors with pixels in [0, 1]; widths default to 784-64-64-10 (RobustNeuralNetworks.jl's
MNIST example). The Sandwich network is ``gamma``-Lipschitz in L2 for any weights, so plain cross-entropy
(``--margin 0``) keeps the certificate; ``--margin eps`` trains with the Lipschitz-margin loss (wrong logits
raised by ``sqrt(2) gamma eps``). Adam, cosine learning-rate decay to 0 over the run. At the end: test
accuracy (clean; for noise-trained nets also under their noise), then ``models/<name>.pt`` (state dict) and
the card ``models/<name>.json`` (kind, widths, gamma / noise, accuracy, history, the command).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from verifier.datasets import read_mnist
from verifier.training.l2 import KINDS, build_net, margin_loss, save_net

REPO = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=KINDS, default="sandwich")
    p.add_argument("--widths", type=int, nargs="+", default=[784, 64, 64, 10])
    p.add_argument("--gamma", type=float, default=5.0, help="Lipschitz bound of a Sandwich network")
    p.add_argument("--margin", type=float, default=0.0, help="Lipschitz-margin loss radius (Sandwich only)")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma added to training inputs")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-n", type=int, help="first N training images only")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="output name (default mnist_<kind>)")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    args = p.parse_args(argv)
    if args.kind == "mlp" and args.margin:
        p.error("--margin needs a Lipschitz bound: --kind sandwich")
    args.name = args.name or f"mnist_{args.kind}"
    return args


def load(root: Path, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if not root.is_dir():
        sys.exit(f"error: {root} not found (MNIST IDX files; nothing is downloaded)")
    images, labels = read_mnist(root, split)
    x, y = torch.from_numpy(images).flatten(1), torch.from_numpy(labels)
    return x[:n], y[:n]


@torch.no_grad()
def accuracy(net, x: torch.Tensor, y: torch.Tensor, noise: float = 0.0, seed: int = 0) -> float:
    """Fraction of ``x`` [n, 784] classified as ``y``, each image with one draw of N(0, noise^2 I) added."""
    gen = torch.Generator().manual_seed(seed)
    hits = 0
    for k in range(0, len(y), 1000):
        xb = x[k : k + 1000]
        xb = xb + noise * torch.randn(xb.shape, generator=gen) if noise else xb
        hits += int((net(xb).argmax(1) == y[k : k + 1000]).sum())
    return hits / len(y)


def train(args, net, data) -> list[dict]:
    """Adam with cosine decay; one history row per epoch (loss, training accuracy, seconds)."""
    x, y = data
    steps = math.ceil(len(y) / args.batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps)
    offset = math.sqrt(2.0) * args.gamma * args.margin if args.kind == "sandwich" else 0.0
    gen = torch.Generator().manual_seed(args.seed)
    history, seconds = [], 0.0
    for epoch in range(args.epochs):
        tick, total, hits = time.perf_counter(), 0.0, 0
        net.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            xb, yb = x[idx], y[idx]
            if args.noise:
                xb = xb + args.noise * torch.randn(xb.shape, generator=gen)
            logits = net(xb)
            loss = margin_loss(logits, yb, offset)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(yb)
            hits += int((logits.argmax(1) == yb).sum())
        seconds += time.perf_counter() - tick
        history.append({"epoch": epoch + 1, "loss": total / len(y), "train_acc": hits / len(y),
                        "seconds": round(seconds, 1)})  # fmt: skip
        print(f"epoch {epoch + 1:3d}  loss {total / len(y):.4f}  train acc {hits / len(y):.4f}  "
              f"{seconds:.0f} s", flush=True)  # fmt: skip
    return history


def main(argv=None) -> int:
    args = parse(argv)
    command = list(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gamma = args.gamma if args.kind == "sandwich" else None
    net = build_net(args.kind, args.widths, gamma)
    train_data, test = load(args.data_root, "train", args.train_n), load(args.data_root, "test")
    torch.set_flush_denormal(True)  # training only: small gradients as denormals are very slow on x86
    history = train(args, net, train_data)
    torch.set_flush_denormal(False)
    net.eval()
    test_acc = {"clean": accuracy(net, *test)}
    if args.noise:
        test_acc[f"noise {args.noise:g}"] = accuracy(net, *test, noise=args.noise)
    print("test accuracy (10,000 images): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in test_acc.items()))
    card = {
        "dataset": "mnist",
        "kind": args.kind,
        "widths": args.widths,
        "gamma": gamma,
        "noise": args.noise,
        "margin": args.margin if args.kind == "sandwich" else None,
        "parameters": sum(p.numel() for p in net.parameters()),
        "epochs": args.epochs,
        "train_n": len(train_data[1]),
        "train_minutes": round(history[-1]["seconds"] / 60, 1),
        "threads": args.threads,
        "test_accuracy": test_acc,
        "command": "scripts/train_lipschitz.py " + shlex.join(command),
        "history": history,
    }
    path = save_net(net, card, args.models_dir, args.name)
    print(f"wrote {path.with_suffix('.pt')} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

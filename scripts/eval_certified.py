#!/usr/bin/env python3
"""Clean, PGD and verified accuracy of an ONNX classifier on MNIST / Fashion-MNIST test images, per eps.

Perturbations are L-inf balls of radius eps in pixel space ([0, 1]), clipped to [0, 1]. PGD accuracy is an
upper bound of the robust accuracy, verified accuracy (per method and best of all) a lower bound; the
expensive alpha-CROWN runs only where cheaper methods failed (see verifier.training.evaluate). JSON out,
optionally a plot (needs matplotlib: pip install 'verifier[plot]').

    .venv/bin/python scripts/eval_certified.py --model net.onnx --dataset mnist --eps 0.1 0.2 0.3
        [--methods ibp crown alpha-crown] [--n 1000] [--json OUT.json] [--plot OUT.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import verifier
from verifier.datasets import read_mnist
from verifier.training.evaluate import DEFAULT_METHODS, evaluate, format_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def plot(rows: list[dict], out: Path, title: str) -> None:
    """Verified accuracy against eps, one line per method and best, PGD accuracy dashed above them."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs matplotlib, an optional extra: pip install 'verifier[plot]'")
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    eps = [row["eps"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in rows[0]["verified"]:
        ax.plot(eps, [100 * row["verified"][key] for row in rows], marker="o", label=f"verified: {key}")
    ax.plot(eps, [100 * row["pgd"] for row in rows], "k--", marker="x", label="PGD (upper bound)")
    ax.set(xlabel="eps (L-inf, pixels in [0, 1])", ylabel="accuracy (%)", ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX classifier of 28x28 images")
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    parser.add_argument("--data-root", type=Path, help="IDX folder (default ../shared/data/<dataset>)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=verifier.METHODS)
    parser.add_argument("--n", type=int, default=10000, help="the first N test images")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="default scripts/results/eval_<model>_<dataset>.json")
    parser.add_argument("--plot", type=Path, help="PNG of verified and PGD accuracy against eps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.data_root or DATA / args.dataset
    if not root.is_dir():
        sys.exit(f"dataset folder not found: {root}")
    images, labels = read_mnist(root, "test")
    images, labels = torch.from_numpy(images[: args.n]), torch.from_numpy(labels[: args.n])
    model = verifier.load(args.model)
    rows = evaluate(
        model, images, labels, args.eps, args.methods, args.batch_size, args.pgd_steps, progress=True
    )
    print(format_table(rows))
    out = args.json or REPO / "scripts" / "results" / f"eval_{args.model.stem}_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": str(args.model), "dataset": args.dataset, "threads": args.threads, "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.plot:
        plot(rows, args.plot, f"{args.model.stem} on {args.dataset} (n = {len(images)})")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()

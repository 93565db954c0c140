#!/usr/bin/env python3
"""Train a provably robust classifier on MNIST or Fashion-MNIST with a certified loss, then ship it.

    .venv/bin/python scripts/train_certified.py --dataset mnist --model dm-small --eps 0.1 --train-eps 0.2 \
        --method ibp --epochs 60 --name mnist_dm-small_eps0.1

Epsilon is 0 for ``--warmup`` epochs, then follows the smooth ramp of Shi et al. 2021 over ``--ramp``
epochs up to ``--train-eps`` (the training radius; a little above the test radius ``--eps`` helps). The
natural-loss weight kappa goes from 1 to ``--kappa`` and CROWN-IBP's beta from 1 to 0 over the ramp; the
warm-up regularisers of Shi et al. fade out as eps reaches its target; the learning rate decays by
``--lr-decay`` at the ``--milestones`` (fractions of the epochs). Every epoch is checkpointed
(``--checkpoint``, resumed with ``--resume``). At the end the model (inference BatchNorm) is exported to
ONNX under ``models/<name>.onnx``, reloaded from that file, evaluated on the test set (clean, PGD and
verified accuracy at ``--eps``: best of IBP, CROWN and alpha-CROWN per example, see METHODS_EVAL), and
described by the card ``models/<name>.json`` (data, eps, method, accuracies, the command that made it).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

import verifier
from verifier.datasets import read_mnist
from verifier.training.init import ibp_init
from verifier.training.loss import METHODS, certified_loss
from verifier.training.models import build, names
from verifier.training.regularisers import warmup_regulariser
from verifier.training.schedules import LinearRamp, SmoothRamp

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion-mnist")
CHECK_N = 100  # test images of the card's reproducible check
# verified = best of these per example; each lazy one runs only where the ones before it failed
METHODS_EVAL = ("ibp", "crown", "alpha-crown-final")
LAZY_EVAL = ("crown", "alpha-crown-final")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument(
        "--data-root", type=Path, help="folder of the IDX files (default ../shared/data/<dataset>)"
    )
    p.add_argument("--model", choices=names(), default="dm-small")
    p.add_argument("--no-batch-norm", action="store_true", help="no BatchNorm after each layer")
    p.add_argument("--eps", type=float, default=0.1, help="test radius (L-inf, pixels in [0, 1])")
    p.add_argument("--train-eps", type=float, help="training radius (default: --eps)")
    p.add_argument("--method", choices=METHODS, default="ibp")
    p.add_argument(
        "--fused",
        action="store_true",
        help="CROWN part bounds the cross-entropy itself: one backward row, not n - 1 (loss fusion)",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--minutes", type=float, help="training time budget: fewer epochs when they do not fit")
    p.add_argument("--warmup", type=float, default=1, help="epochs at eps 0")
    p.add_argument("--ramp", type=float, default=10, help="epochs of the eps ramp")
    p.add_argument("--kappa", type=float, default=0.0, help="final natural-loss weight")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--milestones", type=float, nargs="*", default=[0.7, 0.9], help="lr decay, fractions")
    p.add_argument("--lr-decay", type=float, default=0.2)
    p.add_argument("--grad-clip", type=float, default=10.0)
    p.add_argument("--reg", type=float, default=0.5, help="weight of the warm-up regularisers (0: none)")
    p.add_argument("--no-ibp-init", action="store_true")
    p.add_argument("--train-n", type=int, help="first N training images only")
    p.add_argument("--eval-n", type=int, default=10000, help="test images evaluated at the end")
    p.add_argument("--val-n", type=int, default=1000, help="test images checked (IBP) after every epoch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="output name (default <dataset>_<model>_eps<eps>)")
    p.add_argument("--models-dir", type=Path, default=REPO / "models")
    p.add_argument("--checkpoint", type=Path, help="default scripts/results/checkpoints/<name>.pt")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--no-export", action="store_true", help="train (and checkpoint) only")
    args = p.parse_args(argv)
    if args.fused and args.method == "ibp":
        p.error("--fused bounds the loss in the CROWN pass: choose a --method other than ibp")
    args.train_eps = args.eps if args.train_eps is None else args.train_eps
    args.name = args.name or f"{args.dataset}_{args.model}_eps{args.eps:g}"
    args.data_root = args.data_root or REPO.parent / "shared" / "data" / args.dataset
    args.checkpoint = args.checkpoint or REPO / "scripts" / "results" / "checkpoints" / f"{args.name}.pt"
    return args


def load_data(root: Path, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not root.exists():
        sys.exit(f"error: {root} not found (the IDX files of the dataset; nothing is downloaded)")
    images, labels = read_mnist(root, split)
    x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    return (x, y) if n is None else (x[:n], y[:n])


def schedules(args, steps_per_epoch: int):
    warmup, ramp = round(args.warmup * steps_per_epoch), max(1, round(args.ramp * steps_per_epoch))
    eps = SmoothRamp(args.train_eps, warmup, ramp)
    kappa = LinearRamp(1.0, args.kappa, warmup, ramp)
    beta = LinearRamp(1.0, 0.0, warmup, ramp)
    return eps, kappa, beta


def train_epoch(args, net, bounded, opt, data, epoch: int, scheds) -> dict:
    x, y = data
    gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    order = torch.randperm(len(y), generator=gen)
    steps = math.ceil(len(y) / args.batch_size)
    eps_s, kappa_s, beta_s = scheds
    totals = {"loss": 0.0, "natural": 0, "verified": 0, "n": 0}
    net.train()
    bar = tqdm(
        range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True, mininterval=2
    )
    for i in bar:
        step = epoch * steps + i
        idx = order[i * args.batch_size : (i + 1) * args.batch_size]
        xb, yb = x[idx].to(args.device), y[idx].to(args.device)
        eps = eps_s(step)
        terms = certified_loss(
            bounded, xb, yb, eps, args.method, kappa=kappa_s(step), beta=beta_s(step), fused=args.fused
        )
        loss = terms.loss
        if args.reg > 0 and terms.input_bounds is not None and eps < args.train_eps:
            loss = loss + warmup_regulariser(terms.input_bounds, terms.pre_activation, eps, args.train_eps,
                                             weight=args.reg)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        opt.step()
        totals["loss"] += loss.item() * len(yb)
        totals["natural"] += (terms.logits.argmax(1) == yb).sum().item()
        totals["verified"] += terms.verified.sum().item()
        totals["n"] += len(yb)
        bar.set_postfix(eps=f"{eps:.3f}", loss=f"{totals['loss'] / totals['n']:.3f}",
                        nat=f"{totals['natural'] / totals['n']:.3f}", ver=f"{totals['verified'] / totals['n']:.3f}")  # fmt: skip
    n = totals["n"]
    return {"epoch": epoch + 1, "eps": eps, "loss": totals["loss"] / n, "train_natural_acc": totals["natural"] / n,
            "train_verified_acc": totals["verified"] / n}  # fmt: skip


@torch.no_grad()
def validate(args, bounded, test) -> dict:
    """Clean and IBP-verified accuracy at the test eps on the first ``--val-n`` test images."""
    x, y = (t[: args.val_n].to(args.device) for t in test)
    clean = verified = 0
    for k in range(0, len(y), 500):
        terms = certified_loss(bounded, x[k : k + 500], y[k : k + 500], args.eps, "ibp", batch_norm="running")
        clean += (terms.logits.argmax(1) == y[k : k + 500]).sum().item()
        verified += terms.verified.sum().item()
    return {"val_clean_acc": clean / len(y), "val_ibp_verified_acc": verified / len(y)}


def fit_budget(args, lr_sched, done: int, seconds: float) -> None:
    """Shorten the run to the epochs that fit in ``--minutes`` at the mean epoch time so far (never
    lengthen it); the learning-rate milestones move with the end. The eps ramp is not rescaled: the run
    must still have time to train at the final eps."""
    fits = done + int((args.minutes * 60 - seconds) / (seconds / done))
    if fits < args.epochs:
        args.epochs = max(done, fits)
        future = [m for m in (round(f * args.epochs) for f in args.milestones) if m > done]
        lr_sched.milestones = collections.Counter(future + [m for m in lr_sched.milestones if m <= done])
        print(f"time budget: {args.epochs} epochs fit in {args.minutes:g} minutes", flush=True)


def save_checkpoint(path: Path, net, opt, lr_sched, epoch: int, history: list, args, command: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "lr": lr_sched.state_dict(),
             "epoch": epoch, "history": history, "args": vars(args), "argv": command}  # fmt: skip
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a broken checkpoint


def export(args, net, example: torch.Tensor) -> Path:
    """ONNX of the inference model (BatchNorm with running statistics); opset 17 (later opsets make the
    exporter emit Identity nodes the ONNX converter does not take)."""
    args.models_dir.mkdir(parents=True, exist_ok=True)
    path = args.models_dir / f"{args.name}.onnx"
    net.eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; the new one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, example, path, input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)  # fmt: skip
    return path


def main(argv=None) -> int:
    args = parse(argv)
    command = list(argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = load_data(args.data_root, "train", args.train_n)
    test = load_data(args.data_root, "test", None)
    net = build(args.model, tuple(train[0].shape[1:]), 10, batch_norm=not args.no_batch_norm)
    if not args.no_ibp_init:
        ibp_init(net)
    net.to(args.device)
    bounded = verifier.load(net, train[0][:1].to(args.device), live=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = math.ceil(len(train[1]) / args.batch_size)
    milestones = sorted({round(f * args.epochs) for f in args.milestones})
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, args.lr_decay)
    history, start, seconds = [], 0, 0.0
    if args.resume and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=args.device, weights_only=False)
        net.load_state_dict(state["model"])  # in place: the bounded view follows
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr"])
        history, start = state["history"], state["epoch"]
        seconds = history[-1]["seconds"] if history else 0.0
        command = state["argv"]
        if state["args"].get("minutes") and state["args"]["epochs"] < args.epochs:
            args.epochs = state["args"]["epochs"]  # the run was shortened to its time budget: keep its plan
        print(f"resumed {args.checkpoint} after epoch {start}")
    scheds = schedules(args, steps)
    # Gradients of well-classified examples' robust loss underflow to denormals, which x86 CPUs compute
    # up to ~100x slower (a CROWN-IBP step measured 3.5x faster flushed). Training only: bounds used for
    # verification below run without flushing, so no tiny term is ever rounded to zero in a certificate.
    torch.set_flush_denormal(True)
    epoch = start
    while epoch < args.epochs:
        t0 = time.perf_counter()
        row = train_epoch(args, net, bounded, opt, train, epoch, scheds)
        lr_sched.step()
        seconds += time.perf_counter() - t0
        net.eval()
        row.update(validate(args, bounded, test), seconds=round(seconds, 1))
        history.append(row)
        print(f"epoch {row['epoch']:3d}  eps {row['eps']:.3f}  loss {row['loss']:.4f}  "
              f"train nat {row['train_natural_acc']:.4f} ver {row['train_verified_acc']:.4f}  "
              f"test clean {row['val_clean_acc']:.4f} IBP-verified@{args.eps:g} {row['val_ibp_verified_acc']:.4f}  "
              f"{seconds / 60:.1f} min", flush=True)  # fmt: skip
        epoch += 1
        if args.minutes:
            fit_budget(args, lr_sched, epoch, seconds)
        save_checkpoint(args.checkpoint, net, opt, lr_sched, epoch, history, args, command)
    torch.set_flush_denormal(False)
    if args.no_export:
        return 0
    from verifier.training import evaluate as evaluation

    path = export(args, net.cpu(), train[0][:1])
    shipped = verifier.load(str(path))  # what users get: the ONNX file, through the ONNX importer
    x, y = test[0][: args.eval_n], test[1][: args.eval_n]
    rows = evaluation.evaluate(shipped, x, y, [args.eps], METHODS_EVAL, lazy=LAZY_EVAL, progress=True)
    print(evaluation.format_table(rows))
    # the first CHECK_N test images again, alone: what a test recomputes from the shipped file
    check = evaluation.evaluate(shipped, test[0][:CHECK_N], test[1][:CHECK_N], [args.eps], METHODS_EVAL,
                                lazy=LAZY_EVAL)[0]  # fmt: skip
    card = {
        "name": args.name,
        "onnx": path.name,
        "dataset": args.dataset,
        "architecture": args.model + ("" if args.no_batch_norm else " + BatchNorm"),
        "parameters": sum(p.numel() for p in net.parameters()),
        "eps": args.eps,
        "train_eps": args.train_eps,
        "method": args.method,
        "fused": args.fused,
        "epochs": len(history),
        "train_minutes": round(seconds / 60, 1),
        "threads": torch.get_num_threads(),
        "evaluation": rows[0],
        "check": check,
        "verified_means": "best of IBP, CROWN and alpha-CROWN (slopes of the output bound) per example, on "
        "the ONNX file; CROWN only where IBP failed, alpha-CROWN where both failed (per-method figures are "
        "cumulative in that order)",
        "methods": list(METHODS_EVAL),
        "lazy": list(LAZY_EVAL),
        "command": "scripts/train_certified.py " + shlex.join(command),
        "history": history,
    }
    (args.models_dir / f"{args.name}.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

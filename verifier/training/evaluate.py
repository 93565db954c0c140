"""Robustness of a classifier to L-inf perturbations clipped to the data range, per radius eps.

Two bracketing numbers per eps: PGD accuracy (examples on which the attack found no misclassified point)
is an *upper* bound of the true robust accuracy; verified accuracy (examples whose certified margins
``f_y - f_j`` are all > 0 over the whole clipped ball) is a *lower* bound. Every verified example must
resist the attack: a contradiction means an unsound bound, and ``evaluate`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from verifier.api import BoundedModel
from verifier.spec.regions import Box, LinfBall

DEFAULT_METHODS = ("ibp", "crown", "alpha-crown-final")
# Run only on correctly classified examples that no method listed before them verified (see verified_mask),
# in chunks of LAZY_BATCH: full alpha-CROWN on a small IBP-trained CNN (DM-small, MNIST, eps 0.1) took
# 1.8 s and ~90 MB per example on 2 cores (CROWN: 0.015 s, IBP: 0.0003 s); at eps 0.3, 4.2 s per example
# (1 core), against 0.22 s for alpha-CROWN on the output bound only, which verified the same examples.
LAZY_METHODS = ("alpha-crown", "alpha-crown-final")
LAZY_BATCH = 16


def clipped_ball(x: Tensor, eps: float, lower: float = 0.0, upper: float = 1.0) -> Box:
    """``{x' : ||x' - x||_inf <= eps, lower <= x' <= upper}`` per row of ``x`` [B, *input_shape]."""
    return LinfBall(x, eps, clip=(lower, upper))


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``f_y - max_{j != y} f_j`` per row [B] of ``logits`` [B, n_classes]; <= 0 iff misclassified (or tied)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], -torch.inf)
    return true - others.amax(1)


def pgd_attack(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, eps: float, steps: int = 20,
               restarts: int = 1, step_size: float | None = None, lower: float = 0.0, upper: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Projected gradient descent on the margin ``f_y - max_{j != y} f_j`` inside the clipped L-inf ball.

    Each restart starts at a uniform random point of the ball and takes ``steps`` signed-gradient steps of
    ``step_size`` (default ``2.5 eps / steps``, Madry et al. 2018), each projected back onto the ball.
    The clean point and every iterate are candidates: per example, the one of lowest margin is returned.

    Args:
        model: any callable x -> logits [B, n_classes] (a ``BoundedModel``, an ``nn.Module`` in eval mode).
        x: inputs [B, *input_shape] inside ``[lower, upper]``; y: labels [B] (int64).
        generator: the random starts' source (CPU); default a fresh one seeded with 0, so runs repeat.

    Returns:
        Points [B, *input_shape] with ``|adv - x| <= eps`` and ``lower <= adv <= upper`` element-wise.
    """
    box = clipped_ball(x, eps, lower, upper)
    lo, hi = box.lower.to(x.dtype), box.upper.to(x.dtype)
    step = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    with torch.no_grad():
        best, best_margin = x.clone(), margin(model(x), y)
    for _ in range(restarts):
        adv = lo + torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * (hi - lo)
        for k in range(steps + 1):
            with torch.enable_grad():
                adv.requires_grad_(True)
                m = margin(model(adv), y)
                (grad,) = torch.autograd.grad(m.sum(), adv) if k < steps else (None,)
            adv, m = adv.detach(), m.detach()
            better = m < best_margin
            best[better], best_margin = adv[better], torch.where(better, m, best_margin)
            if grad is not None:
                adv = torch.minimum(torch.maximum(adv - step * grad.sign(), lo), hi)
    return best


def verified_mask(bounded: BoundedModel, x: Tensor, y: Tensor, eps: float,
                  methods: Sequence[str] = DEFAULT_METHODS, lower: float = 0.0, upper: float = 1.0,
                  lazy: Sequence[str] = LAZY_METHODS, seconds: dict[str, float] | None = None,
                  ) -> dict[str, Tensor]:  # fmt: skip
    """Which examples each method proves robust on the clipped L-inf ball of radius ``eps``.

    An example counts as verified by a method when every certified lower bound of ``f_y - f_j`` (j != y)
    is > 0; a misclassified example (clean margin <= 0) is never verified and no bound is computed for it.
    Methods run in the order given. A method not in ``lazy`` is computed on every correctly classified
    example, so its mask is exactly its own result. A method in ``lazy`` (default: alpha-CROWN, the
    expensive one) is computed only where no earlier method succeeded, and its mask is "verified by it
    *or by a method listed before it*": a cumulative figure. With ``lazy=()`` every mask is the method's
    own. ``"best"`` is the OR over all methods, the same under either policy.

    Args:
        x: inputs [n, *input_shape] in ``[lower, upper]``; y: labels [n].
        seconds: when given, each method's time is added to ``seconds[method]``.

    Returns:
        ``{method: bool [n], ..., "best": bool [n]}``.
    """
    with torch.no_grad():
        correct = margin(bounded(x), y) > 0
    region = clipped_ball(x, eps, lower, upper)
    best = torch.zeros_like(correct)
    masks = {}
    for method in methods:
        todo = correct & ~best if method in lazy else correct
        mask = torch.zeros_like(correct)
        index = todo.nonzero()[:, 0]
        tick = time.perf_counter()
        for part in index.split(LAZY_BATCH if method in lazy else len(x)) if len(index) else ():
            mask[part] = (bounded.margins(region.select(part), y[part], method) > 0).all(1)
        if seconds is not None:
            seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - tick
        masks[method] = mask | best if method in lazy else mask
        best = best | mask
    return {**masks, "best": best}


def evaluate(bounded: BoundedModel, images: Tensor, labels: Tensor, eps_list: Sequence[float],
             methods: Sequence[str] = DEFAULT_METHODS, batch_size: int = 500, pgd_steps: int = 20,
             pgd_restarts: int = 1, lazy: Sequence[str] = LAZY_METHODS, progress: bool = False) -> list[dict]:  # fmt: skip
    """Clean, PGD and verified accuracy of ``bounded`` on ``images`` [n, ...] (reshaped to its input shape,
    values in [0, 1]) and ``labels`` [n], one row per eps, computed in batches of ``batch_size``.

    Returns:
        Rows ``{"eps", "n", "clean", "pgd", "verified": {method: accuracy, "best": ...}, "contradicted",
        "seconds": {"pgd": s, method: s, "total": s}}``; accuracies are fractions of n; ``contradicted``
        counts examples verified yet attacked (must be 0: anything else is an unsound bound).
        Per-method accuracies follow ``verified_mask``'s policy for ``lazy`` methods.
    """
    from tqdm import tqdm

    images = images.reshape(len(images), *bounded.input_shape)
    starts = range(0, len(images), batch_size)
    rows = []
    for eps in eps_list:
        counts = dict.fromkeys(["clean", "pgd", "contradicted", *methods, "best"], 0)
        seconds = dict.fromkeys(["pgd", *methods], 0.0)
        begin = time.perf_counter()
        for start in tqdm(starts, desc=f"eps {eps:g}", disable=not progress, leave=False):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            tick = time.perf_counter()
            adv = pgd_attack(bounded, x, y, eps, steps=pgd_steps, restarts=pgd_restarts)
            with torch.no_grad():
                correct, resists = margin(bounded(x), y) > 0, margin(bounded(adv), y) > 0
            seconds["pgd"] += time.perf_counter() - tick
            masks = verified_mask(bounded, x, y, eps, methods, lazy=lazy, seconds=seconds)
            counts["clean"] += int(correct.sum())
            counts["pgd"] += int((correct & resists).sum())
            counts["contradicted"] += int((masks["best"] & ~resists).sum())
            for key in (*methods, "best"):
                counts[key] += int(masks[key].sum())
        n = len(images)
        rows.append({
            "eps": eps, "n": n, "clean": counts["clean"] / n, "pgd": counts["pgd"] / n,
            "verified": {key: counts[key] / n for key in (*methods, "best")},
            "contradicted": counts["contradicted"],
            "seconds": {**seconds, "total": time.perf_counter() - begin},
        })  # fmt: skip
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows of ``evaluate`` as a terminal table: accuracies in percent, one line per eps."""
    methods = list(rows[0]["verified"]) if rows else []
    header = ["eps", "n", "clean", "pgd", *methods, "seconds"]
    lines = [header]
    for row in rows:
        accuracies = [row["clean"], row["pgd"], *(row["verified"][m] for m in methods)]
        lines.append([f"{row['eps']:g}", str(row["n"]), *(f"{100 * a:.2f}" for a in accuracies),
                      f"{row['seconds']['total']:.1f}"])  # fmt: skip
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    bad = [f"eps {row['eps']:g}: {row['contradicted']} verified examples attacked (unsound bound)"
           for row in rows if row["contradicted"]]  # fmt: skip
    return "\n".join(text + bad)

"""L2 robustness by training, for the three kinds of L2 certificate side by side.

* Networks (:func:`build_net`): a Lipschitz-bounded Sandwich network (``gamma``-Lipschitz by construction,
  so plain cross-entropy training keeps its certificate) or an ordinary ReLU MLP of the same widths (for
  randomized smoothing, trained on Gaussian-noise-augmented inputs). Both take flat inputs [B, widths[0]].
* The loss (:func:`margin_loss`): cross-entropy with every wrong logit raised by ``offset`` (the
  Lipschitz-margin loss of Tsuzuku et al. 2018 with ``offset = sqrt(2) gamma eps``: a zero-loss example has
  margins ``>= sqrt(2) gamma eps``, so its Lipschitz certificate covers radius ``eps``); ``offset = 0`` is
  plain cross-entropy.
* Certified accuracy (:func:`radius_accuracy`, :func:`check_rows`): the fraction of examples correctly
  classified *and* certified on the L2 ball of each radius.
* Shipping (:func:`save_net`, :func:`load_net`): a state dict beside a JSON card that says how to rebuild it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from verifier.lipschitz.models import lipschitz_mlp
from verifier.training.evaluate import margin

KINDS = ("sandwich", "mlp")


def build_net(kind: str, widths: Sequence[int], gamma: float | None = None) -> nn.Module:
    """``"sandwich"``: :func:`lipschitz_mlp` (``|f(x) - f(x')|_2 <= gamma |x - x'|_2`` for every parameter
    value); ``"mlp"``: ``Linear -> ReLU -> ... -> Linear`` (no bound; ``gamma`` must be None)."""
    if kind == "sandwich":
        if gamma is None:
            raise ValueError("a Sandwich network needs gamma")
        return lipschitz_mlp(list(widths), gamma, "sandwich")
    if kind != "mlp" or gamma is not None:
        raise ValueError(f"kind must be one of {KINDS} (gamma only for 'sandwich'), got {kind!r}, {gamma}")
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(widths):
        layers += [nn.Linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def margin_loss(logits: Tensor, labels: Tensor, offset: float = 0.0) -> Tensor:
    """``CE(z, y)`` with ``z = logits + offset (1 - onehot(y))``: logits [B, n], labels [B]; mean over B."""
    if offset:
        logits = logits + offset * (1.0 - F.one_hot(labels, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, labels)


def lipschitz_radius(logits: Tensor, labels: Tensor, gamma: float) -> Tensor:
    """Certified L2 radii [B] of a ``gamma``-Lipschitz classifier from its logits [B, n] (float64):
    ``min_{j != y} (f_y - f_j) / (sqrt(2) gamma)``, since the margin row ``e_y - e_j`` has norm ``sqrt(2)``;
    0 where misclassified. For every x' with ``|x' - x|_2 < r`` the top class stays y (given exact logits)."""
    return (margin(logits.to(torch.float64), labels) / (math.sqrt(2.0) * gamma)).clamp(min=0.0)


def radius_accuracy(radius: Tensor, correct: Tensor, radii: Sequence[float]) -> dict[str, float]:
    """``{str(r): fraction of examples correct and with certified radius > r}`` for per-example radii [n]
    (an example is certified on the closed ball of radius r only when its radius is strictly larger)."""
    return {f"{r:g}": float((correct & (radius > r)).double().mean()) for r in radii}


def check_rows(rows: Sequence[dict]) -> list[str]:
    """The inconsistencies of evaluation rows (``{"method", "clean", "certified": {radius: acc}}``): a
    certified accuracy above the clean one, or increasing with the radius. Empty when consistent."""
    problems = []
    for row in rows:
        pairs = sorted((float(r), a) for r, a in row["certified"].items())
        if any(a > row["clean"] for _, a in pairs):
            problems.append(f"{row['method']}: certified accuracy above clean accuracy")
        if any(b > a for (_, a), (_, b) in itertools.pairwise(pairs)):
            problems.append(f"{row['method']}: certified accuracy increases with the radius")
    return problems


def save_net(net: nn.Module, card: dict, models_dir: Path, name: str) -> Path:
    """``models_dir/<name>.pt`` (state dict) and ``<name>.json`` (``card`` plus the file name); the card
    must hold ``kind``, ``widths`` and ``gamma`` (None for an MLP) for :func:`load_net`."""
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), models_dir / f"{name}.pt")
    path = models_dir / f"{name}.json"
    path.write_text(json.dumps({"name": name, "weights": f"{name}.pt", **card}, indent=1) + "\n")
    return path


def load_net(card_path: str | Path) -> tuple[nn.Module, dict]:
    """The network of a card written by :func:`save_net` (in eval mode) and the card."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    net = build_net(card["kind"], card["widths"], card["gamma"])
    state = torch.load(card_path.parent / card["weights"], map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval(), card

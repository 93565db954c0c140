"""IBP initialisation (Shi et al. 2021, "Fast certified robust training with short warmup")."""

from __future__ import annotations

import math

import torch
from torch import nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def ibp_init(model: nn.Module) -> nn.Module:
    """Redraw the weights of every linear and convolutional layer but the last so that IBP bounds neither
    explode nor vanish with depth at initialisation.

    For a layer with weights ``W`` and ``n = fan_in`` inputs per output (``in_features``, or
    ``in_channels / groups * kernel elements``), the interval radius grows as ``r' = |W| r``. With
    ``W_ij ~ N(0, s^2)``, ``E|W_ij| = s sqrt(2 / pi)``, so ``E r'_i = n s sqrt(2 / pi) mean(r)``; as about half the neurons pass
    their width through the next ReLU at initialisation, keeping the radius constant needs
    ``n s sqrt(2 / pi) / 2 = 1``, i.e. ``s = sqrt(2 pi) / n``. Every ``nn.Linear`` / ``nn.Conv1d`` /
    ``nn.Conv2d`` weight but the last such layer in ``model.modules()`` order is redrawn from
    ``N(0, s^2)``; the last (the classifier, followed by no ReLU) keeps its initialisation.

    Biases are left as they are: an interval's width ``|W| (u - l)`` does not depend on the bias, so the
    argument above does not constrain it, and torch's default biases are already small
    (``U(-1/sqrt(n), 1/sqrt(n))``).

    Args:
        model: changed in place (under ``torch.no_grad()``).
    Returns:
        the same model.
    """
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    with torch.no_grad():
        for layer in layers[:-1]:
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
    return model

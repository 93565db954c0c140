"""A builder of networks whose L2 Lipschitz constant is at most ``gamma`` by construction."""

from __future__ import annotations

import itertools
import math

from torch import Tensor, nn

from verifier.lipschitz.layers import AOLLinear, MaxMin, OrthogonalLinear, SandwichConv2d, SandwichLayer

KINDS = ("sandwich", "aol", "orthogonal")
ACTIVATIONS = ("relu", "maxmin")


class LipschitzNet(nn.Module):
    """``x -> sqrt(gamma) body(sqrt(gamma) x)`` with ``body`` 1-Lipschitz in L2: the network is
    ``gamma``-Lipschitz, ``|f(x) - f(x')|_2 <= gamma |x - x'|_2`` for every parameter value."""

    def __init__(self, body: nn.Sequential, gamma: float):
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.body, self.gamma = body, float(gamma)
        self.root = math.sqrt(self.gamma)  # split between input and output: neither end is badly scaled

    def forward(self, x: Tensor) -> Tensor:
        return self.root * self.body(self.root * x)

    def lipschitz_bound(self) -> float:
        """The certified L2 Lipschitz constant ``gamma`` (holds by construction, whatever the parameters)."""
        return self.gamma


def _sandwiches(pairs: list[tuple[int, int]]) -> list[nn.Module]:
    """Dense Sandwich layers ``in -> out`` for each pair, the last without activation (an output layer)."""
    return [SandwichLayer(i, o) for i, o in pairs[:-1]] + [SandwichLayer(*pairs[-1], activation=False)]


def lipschitz_mlp(
    widths: list[int] | tuple[int, ...], gamma: float, kind: str = "sandwich", activation: str = "relu"
) -> LipschitzNet:
    """A ``gamma``-Lipschitz (L2) network ``widths[0] -> ... -> widths[-1]`` of 1-Lipschitz layers.

    ``kind``: ``"sandwich"`` (each hidden layer a :class:`SandwichLayer` with its ReLU inside, the last a
    Sandwich without activation), ``"aol"`` or ``"orthogonal"`` (:class:`AOLLinear` /
    :class:`OrthogonalLinear` with ``activation`` between them: ``"relu"`` or ``"maxmin"``, whose hidden
    widths must be even). The Sandwich's guarantee needs an elementwise activation with slopes in [0, 1]:
    it takes ``"relu"`` only."""
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output width, got {list(widths)}")
    if kind not in KINDS or activation not in ACTIVATIONS:
        raise ValueError(f"kind must be one of {KINDS} and activation one of {ACTIVATIONS}")
    pairs = list(itertools.pairwise(widths))
    if kind == "sandwich":
        if activation != "relu":
            raise ValueError("the Sandwich layer's proof needs an elementwise activation: activation='relu'")
        return LipschitzNet(nn.Sequential(*_sandwiches(pairs)), gamma)
    if activation == "maxmin" and any(w % 2 for w in widths[1:-1]):
        raise ValueError(f"MaxMin needs even hidden widths, got {list(widths[1:-1])}")
    linear = AOLLinear if kind == "aol" else OrthogonalLinear
    layers: list[nn.Module] = []
    for k, (i, o) in enumerate(pairs):
        layers.append(linear(i, o))
        if k < len(pairs) - 1:
            layers.append(nn.ReLU() if activation == "relu" else MaxMin(dim=-1))
    return LipschitzNet(nn.Sequential(*layers), gamma)


def lipschitz_cnn(
    in_channels: int,
    input_size: int,
    channels: list[int] | tuple[int, ...],
    widths: list[int] | tuple[int, ...],
    gamma: float,
    kernel_size: int = 3,
) -> LipschitzNet:
    """A ``gamma``-Lipschitz (L2) network on ``[in_channels, input_size, input_size]`` inputs: a
    :class:`SandwichConv2d` (ReLU inside) to each of ``channels``, a flatten (an isometry), then
    :class:`SandwichLayer` s to each of ``widths``, the last without activation. Every part is 1-Lipschitz,
    so the composition is, and :class:`LipschitzNet` scales it to ``gamma``."""
    if not widths:
        raise ValueError("widths needs at least the output width")
    convs = [
        SandwichConv2d(i, o, kernel_size, input_size) for i, o in itertools.pairwise([in_channels, *channels])
    ]
    pairs = list(itertools.pairwise([(channels[-1] if channels else in_channels) * input_size**2, *widths]))
    return LipschitzNet(nn.Sequential(*convs, nn.Flatten(), *_sandwiches(pairs)), gamma)

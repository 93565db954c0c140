"""Random small fully-connected ReLU networks with seeded weights: the subjects of the exact tests.

A ``ReluNet`` holds float32 weights (the network *is* those float32 numbers, whatever precision evaluates
it) and an input box with float32 end points, so the box a VNN-LIB file states, the box the engine bounds
and the box the MILP searches are the same set. It gives the network as a torch module, as an ONNX file
(Gemm, or MatMul + Add, and Relu) and as a float64 evaluator, which the oracles treat as exact.

Outputs are normalised: the last layer is scaled and shifted so that over the box every output spans
about 1 and is centred near 0. A margin of 1e-3 is then small against the output scale, as the
near-zero properties need, and ``verify-model``'s relative safety margin stays far below it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tests.graph.graph_testing import Net


@dataclass(frozen=True)
class Sizes:
    """Inclusive ranges from which a network's shape is drawn."""

    inputs: tuple[int, int] = (2, 10)
    depth: tuple[int, int] = (1, 3)  # hidden layers
    width: tuple[int, int] = (4, 16)
    outputs: tuple[int, int] = (2, 5)


SMALL = Sizes()
MEDIUM = Sizes(inputs=(2, 5), depth=(1, 2), width=(4, 8), outputs=(2, 4))
TINY = Sizes(inputs=(2, 3), depth=(1, 2), width=(3, 5), outputs=(2, 3))


@dataclass(frozen=True, eq=False)
class ReluNet:
    """``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` on the box ``[lo, hi]``.

    ``layers`` are ``(W, b)`` pairs of float32 arrays, ``W`` of shape ``(out, in)``; ``lo``, ``hi`` are
    float32 arrays of shape ``(n_in,)``. ``seed`` names the network in test ids.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    lo: np.ndarray
    hi: np.ndarray
    seed: int

    @property
    def n_in(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def n_out(self) -> int:
        return self.layers[-1][0].shape[0]

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """``f(x)`` in float64 for ``x`` of shape ``(K, n_in)``; returns ``(K, n_out)``."""
        w, b = self.layers[-1]
        return _features(self.layers[:-1], x) @ w.astype(np.float64).T + b.astype(np.float64)

    def module(self) -> nn.Sequential:
        """The network as a float32 ``nn.Sequential`` of ``Linear`` and ``ReLU`` (eval mode)."""
        parts: list[nn.Module] = []
        for w, b in self.layers:
            linear = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            parts += [linear, nn.ReLU()]
        return nn.Sequential(*parts[:-1]).eval()

    def box(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``lo`` and ``hi`` as tensors of shape ``(1, n_in)``."""
        return tuple(torch.from_numpy(v).to(dtype)[None] for v in (self.lo, self.hi))

    def save_onnx(self, path: Path, matmul: bool = False) -> Path:
        """Write the network as an ONNX file with input shape ``[1, n_in]``: each affine layer one Gemm
        (``transB=1``), or with ``matmul`` a MatMul by ``W^T`` followed by an Add of ``b``."""
        graph = Net([1, self.n_in])
        t = "x"
        for k, (w, b) in enumerate(self.layers):
            if k:
                t = graph.op("Relu", t)
            if matmul:
                t = graph.op(
                    "Add", graph.op("MatMul", t, graph.const(np.ascontiguousarray(w.T))), graph.const(b)
                )
            else:
                t = graph.op("Gemm", t, graph.const(w), graph.const(b), transB=1)
        onnx.save(graph.model(t), str(path))
        return path


def _features(layers, x: np.ndarray) -> np.ndarray:
    """The last hidden layer's activations (float64) after the affine + ReLU ``layers``."""
    h = np.asarray(x, dtype=np.float64)
    for w, b in layers:
        h = np.maximum(h @ w.astype(np.float64).T + b.astype(np.float64), 0.0)
    return h


def _draw(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def random_net(seed: int, sizes: Sizes = SMALL) -> ReluNet:
    """A network and box drawn from ``seed`` (He-scaled Gaussian weights, box of half-width 0.1 to 1 around
    a Gaussian centre), its last layer normalised as the module docstring says."""
    rng = np.random.default_rng(seed)
    widths = [_draw(rng, sizes.inputs)]
    widths += [_draw(rng, sizes.width) for _ in range(_draw(rng, sizes.depth))]
    widths.append(_draw(rng, sizes.outputs))
    layers = [
        (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in), 0.5 * rng.standard_normal(n_out))
        for n_in, n_out in itertools.pairwise(widths)
    ]
    centre = rng.standard_normal(widths[0])
    radius = rng.uniform(0.1, 1.0, widths[0])
    lo, hi = (centre - radius).astype(np.float32), (centre + radius).astype(np.float32)
    hidden = tuple((w.astype(np.float32), b.astype(np.float32)) for w, b in layers[:-1])
    features = _features(hidden, lo + (hi - lo) * rng.uniform(size=(2048, widths[0])))
    w, b = layers[-1]
    outputs = features @ w.T + b
    scale = 1.0 / max(float((outputs.max(0) - outputs.min(0)).max()), 1e-3)
    w, b = w * scale, (b - outputs.mean(0)) * scale
    return ReluNet(hidden + ((w.astype(np.float32), b.astype(np.float32)),), lo, hi, seed)


def random_direction(net: ReluNet, rng: np.random.Generator) -> np.ndarray:
    """A specification row ``c`` (float64 holding float32 values, so every front end reads it exactly):
    Gaussian, scaled to a largest entry of 1."""
    c = rng.standard_normal(net.n_out)
    return (c / np.abs(c).max()).astype(np.float32).astype(np.float64)

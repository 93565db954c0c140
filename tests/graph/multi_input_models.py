"""Small torch models with two inputs (two vectors; an image and a vector), and their ONNX export: shared
by the loading tests (``test_multi_input``) and the verify-model tests (``tests/cli``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TwoVectors(nn.Module):
    """``f(x, y) = W3 relu(W1 x + W2 y + b)``: x [B, 4], y [B, 3] -> [B, 2]."""

    def __init__(self):
        super().__init__()
        self.x_in, self.y_in, self.out = nn.Linear(4, 8), nn.Linear(3, 8, bias=False), nn.Linear(8, 2)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.out(torch.relu(self.x_in(x) + self.y_in(y)))


class ImageAndVector(nn.Module):
    """An image through a convolution and a vector through a linear layer, summed: image [B, 1, 4, 4],
    vector [B, 3] -> [B, 2]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.image_in, self.vector_in, self.out = nn.Linear(32, 6), nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, image: Tensor, vector: Tensor) -> Tensor:
        features = self.image_in(torch.relu(self.conv(image)).flatten(1))
        return self.out(torch.relu(features + self.vector_in(vector)))


MODULES = {"two_vectors": (TwoVectors, [(4,), (3,)]), "image_and_vector": (ImageAndVector, [(1, 4, 4), (3,)])}


def export(module: nn.Module, shapes, path) -> str:
    """The module as an ONNX file (opset 17, batch dimension symbolic), inputs named ``in0``, ``in1``."""
    names = [f"in{i}" for i in range(len(shapes))]
    examples = tuple(torch.randn(1, *s) for s in shapes)
    axes = {name: {0: "batch"} for name in [*names, "out"]}
    torch.onnx.export(module, examples, str(path), opset_version=17, dynamo=False, input_names=names,
                      output_names=["out"], dynamic_axes=axes)  # fmt: skip
    return str(path)

"""Small models for the Lipschitz tests: random MLPs, a CNN with BatchNorm and max pooling, a residual
block. BatchNorm statistics are random (not the identity) so that its scaling matters."""

from __future__ import annotations

import torch
from torch import nn

import verifier


def mlp(depth: int, width: int = 32, n_in: int = 12, n_out: int = 5, act=nn.ReLU) -> nn.Sequential:
    layers, prev = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(prev, width), act()]
        prev = width
    return nn.Sequential(*layers, nn.Linear(prev, n_out))


def _randomise_batch_norm(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def cnn() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, stride=1, padding=1),  # overlapping windows: factor sqrt(9)
        nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6), nn.Tanh(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    )  # fmt: skip
    return _randomise_batch_norm(net)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1))  # fmt: skip
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.body(h))
        return self.head(h.flatten(1))


MODELS = {
    "mlp-relu": lambda: (mlp(3), (12,)),
    "mlp-tanh": lambda: (mlp(3, act=nn.Tanh), (12,)),
    "mlp-sigmoid": lambda: (mlp(2, act=nn.Sigmoid), (12,)),
    "cnn-batchnorm": lambda: (cnn(), (1, 8, 8)),
    "residual": lambda: (_randomise_batch_norm(Residual()), (1, 8, 8)),
}


def load(name: str) -> tuple[verifier.BoundedModel, tuple[int, ...]]:
    net, shape = MODELS[name]()
    return verifier.load(net, torch.zeros(1, *shape)), shape

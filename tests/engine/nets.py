"""Small random networks of every supported kind, as torch modules (loaded through torch.fx)."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.branch = nn.Sequential(nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.inp(x)
        h = torch.relu(h + self.branch(h))
        return self.out(h - 0.5 * self.branch(h))


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return bn


def networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (module in eval mode, per-sample input shape)."""
    torch.manual_seed(0)
    nets = {
        "mlp": (
            nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)),
            (5,),
        ),
        "cnn_bn_pool": (
            nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1),
                _bn(4),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 4, 3, stride=1, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(16, 3),
            ),
            (2, 8, 8),
        ),
        "residual": (Residual(), (6,)),
        "sigmoid_tanh": (
            nn.Sequential(nn.Linear(4, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 3)),
            (4,),
        ),
        "leaky_convt": (
            nn.Sequential(
                nn.ConvTranspose2d(1, 2, 3, stride=2, padding=1, output_padding=1),
                nn.LeakyReLU(0.1),
                nn.Conv2d(2, 2, 3, stride=2),
                nn.Flatten(),
                nn.Linear(8, 2),
            ),
            (1, 3, 3),
        ),
    }
    return {k: (m.eval(), s) for k, (m, s) in nets.items()}


def linear_networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Networks without activations: CROWN must be exact on them."""
    torch.manual_seed(1)
    return {
        "linear_mlp": (nn.Sequential(nn.Linear(4, 7), nn.Linear(7, 5), nn.Linear(5, 3)), (4,)),
        "conv_bn_linear": (
            nn.Sequential(nn.Conv2d(1, 2, 2), _bn(2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 2)).eval(),
            (1, 3, 3),
        ),
    }

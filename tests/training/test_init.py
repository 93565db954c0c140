import math

import pytest
import torch
from torch import nn

from verifier.training.init import ibp_init


def test_redraws_all_but_the_last_layer():
    model = nn.Sequential(
        nn.Linear(4096, 512),
        nn.Sequential(nn.Conv2d(64, 32, 5), nn.Conv1d(64, 64, 3, groups=4)),  # nested: modules() order
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert ibp_init(model) is model
    for layer, fan_in in [(model[0], 4096), (model[1][0], 64 * 25), (model[1][1], 16 * 3)]:
        w = layer.weight
        assert w.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.04)
        assert abs(w.mean().item()) < 0.1 * w.std().item()
    for name, p in model.named_parameters():
        if name.startswith("3.") or name.endswith("bias"):
            assert torch.equal(p, before[name]), name  # the classifier and all biases untouched
        else:
            assert not torch.equal(p, before[name]), name


def _ibp_radius_growth(model: nn.Sequential, radius: float = 0.01) -> float:
    """Mean IBP radius of the last hidden layer's output over the input radius."""
    gen = torch.Generator().manual_seed(1)
    centre, r = torch.randn(8, 1024, generator=gen), torch.full((8, 1024), radius)
    with torch.no_grad():
        for layer in model[:-1]:
            if isinstance(layer, nn.Linear):
                centre, r = layer(centre), r @ layer.weight.abs().T
            else:  # ReLU: [relu(l), relu(u)]
                lo, hi = torch.relu(centre - r), torch.relu(centre + r)
                centre, r = (lo + hi) / 2, (hi - lo) / 2
    return (r.mean() / radius).item()


def test_keeps_ibp_bounds_from_exploding():
    def mlp():
        layers = [m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.ReLU())]
        return nn.Sequential(*layers, nn.Linear(1024, 10))

    default = _ibp_radius_growth(mlp())  # ~ (sqrt(1024) / 4) ** 4 for torch's default init
    initialised = _ibp_radius_growth(ibp_init(mlp()))
    assert default > 1000
    assert 0.2 < initialised < 5


def test_model_without_layers_or_with_one():
    relu = nn.ReLU()
    assert ibp_init(relu) is relu
    single = nn.Linear(8, 2)
    w = single.weight.clone()
    ibp_init(single)
    assert torch.equal(single.weight, w)

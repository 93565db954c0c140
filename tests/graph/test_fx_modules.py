"""torch.nn.Module models loaded through torch.fx: the forward pass equals the module's (in eval mode) and
every method's bounds contain the module's outputs at sampled points and corners of random boxes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from graph_testing import assert_sound, violations
from torch import nn

import verifier
from verifier.nn import ParamRamp
from verifier.ops.activations import Ramp


def _bn(channels: int, kind=nn.BatchNorm2d, seed: int = 0) -> nn.Module:
    """A BatchNorm with non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    bn = kind(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen))
        bn.weight.copy_(torch.randn(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
    return bn


class Residual(nn.Module):
    """``x + f(x)`` (sign 1) or ``x - f(x)`` (sign -1), followed by a ReLU."""

    def __init__(self, sign: int):
        super().__init__()
        self.sign = sign
        self.f = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))

    def forward(self, x):
        y = x + self.f(x) if self.sign > 0 else x - self.f(x)
        return F.relu(y)


class Functional(nn.Module):
    """Activations and data movement written as functions and tensor methods."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 2)
        self.fc = nn.Linear(40, 3)

    def forward(self, x):  # x: [B, 3, 5]
        h = F.leaky_relu(self.conv(F.pad(x, (1, 0), value=0.5)), 0.2)  # [B, 4, 5]
        h = torch.cat([torch.sigmoid(h), torch.tanh(h.permute(0, 2, 1)).permute(0, 2, 1)], dim=1)  # [B, 8, 5]
        h = F.relu(h.flatten(1) * 2.0 - 0.5)  # [B, 40]
        return self.fc(h.view(h.shape[0], 8, 5).reshape(-1, 40)) / 3.0


class Slicing(nn.Module):
    """Indexing: ``x[:, 1:3]``, a stepped slice, an integer index."""

    def forward(self, x):  # x: [B, 4, 5]
        parts = [x[:, 1:3].flatten(1), x[:, :, ::2].flatten(1), x[:, 0, 1:2]]
        return F.relu(torch.cat(parts, dim=1) - 0.5)


class Arithmetic(nn.Module):
    """Python operators with constants on either side, negation, matmul by a parameter."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        h = torch.relu(1.0 - (x @ self.w) / 2.0)
        return -F.linear(h + 0.25, self.w) * 3.0


class Elementwise(nn.Module):
    """Every spelling of the convex / concave functions (functions, tensor methods, modules, ``**``);
    inputs of restricted domains go through exp and a shift."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.softplus = nn.Softplus(beta=2.0, threshold=5.0)
        self.out = nn.Linear(39, 2)

    def forward(self, x):  # x: [B, 4]
        h = self.fc(x)
        pos = torch.exp(h) + 0.5
        parts = [torch.log(pos), pos.log(), torch.sqrt(pos), pos.sqrt(), torch.reciprocal(pos)]
        parts += [pos.reciprocal(), F.softplus(h), self.softplus(h), h**2, torch.pow(pos, 3), pos.pow(-0.5)]
        parts += [h.exp(), h.pow(4)]
        return self.out(torch.cat(parts, dim=1))


class Reductions(nn.Module):
    """Sums and means over constant dimensions, every spelling, with and without keepdim."""

    def forward(self, x):  # x: [B, 2, 3, 4]
        h = F.relu(x - 0.2)
        parts = [h.sum(1).flatten(1), torch.mean(h, dim=(-1, 2)), x.mean(3, keepdim=True).flatten(1)]
        parts += [torch.sum(h, dim=[1, 2], keepdim=True).flatten(1), h.sum(dim=-2).flatten(1)]
        return torch.tanh(torch.cat(parts, dim=1))


class Resampling(nn.Module):
    """Nearest and (bi)linear resizing as functions and modules; erf as a function."""

    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.near = nn.Upsample(size=(5, 4))
        self.conv = nn.Conv2d(2, 2, 2)

    def forward(self, x):  # x: [B, 2, 3, 3]
        h = self.conv(F.relu(self.up(x)))  # [B, 2, 5, 5]
        h = (
            F.interpolate(h, size=(4, 3), mode="bilinear", align_corners=True)
            + self.near(x)[..., :3][:, :, 1:]
        )
        flat = F.interpolate(torch.erf(h).flatten(2), scale_factor=1.5, mode="linear")  # [B, 2, 18]
        return torch.special.erf(F.interpolate(flat, scale_factor=0.5, mode="nearest"))


class Pieces(nn.Module):
    """torch.split and chunk, their pieces used apart (one not at all)."""

    def forward(self, x):  # x: [B, 6, 4]
        a, b, _ = torch.split(F.relu(x), 2, dim=1)
        c, d = x.chunk(2, -1)
        return torch.cat([a - b, c.flatten(1)[:, None, :4], torch.unbind(d, 2)[1][:, None, :4]], dim=1)


def _cnn() -> nn.Module:
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _bn(4), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )
    return nn.Sequential(conv, head)


class Pools(nn.Module):
    """Pooling and convolution written as functions, and 1-d max pooling."""

    def __init__(self):
        super().__init__()
        self.pool1d = nn.MaxPool1d(2)
        self.kernel = nn.Parameter(torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(4)))

    def forward(self, x):  # x: [B, 2, 6, 6]
        h = F.max_pool2d(F.relu(x), 3, stride=1, padding=1)
        h = F.avg_pool2d(F.conv2d(h, self.kernel, padding=1), 2)  # [B, 2, 3, 3]
        return self.pool1d(h.flatten(2))  # [B, 2, 4]


def _conv_transpose() -> nn.Module:
    up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(up, nn.ReLU(), nn.Conv2d(3, 1, 2))


def _activation_modules() -> nn.Module:
    first = nn.Sequential(nn.Linear(3, 6), nn.LeakyReLU(0.1), nn.Dropout(0.3), nn.Linear(6, 6), nn.Sigmoid())
    return nn.Sequential(first, nn.Identity(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))


def _ramp(num_features: int, eta: float) -> ParamRamp:
    """A ParamRamp with breakpoints spread over [0.05, 1.5]: the boxes below hold 0, r, both or neither."""
    ramp = ParamRamp(num_features, eta=eta)
    with torch.no_grad():
        ramp.r.uniform_(0.05, 1.5)
    return ramp


def _ramp_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), _ramp(8, 0.0), nn.Linear(8, 6), _ramp(6, 0.1), nn.Linear(6, 3))


def _ramp_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3), _ramp(3, 0.05), nn.Flatten(), nn.Linear(48, 2))


class TransposedConvs1d(nn.Module):
    """nn.ConvTranspose1d and F.conv_transpose1d (stride, output padding, dilation, groups)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose1d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.weight = nn.Parameter(torch.randn(4, 1, 2))

    def forward(self, x):  # x: [B, 2, 5]
        h = F.relu(self.up(x))  # [B, 4, 10]
        return F.conv_transpose1d(h, self.weight, None, 1, 0, 0, 2, 2)  # [B, 2, 12]


class LeftMatMul(nn.Module):
    """A constant matrix on the left of each sample: ``W @ x`` (and ``torch.matmul``) over dim -2."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(5, 3)
        self.v = torch.randn(2, 5)

    def forward(self, x):  # x: [B, 3, 4]
        return torch.matmul(self.v, F.relu(self.w @ x))  # [B, 2, 4]


MODULES = {  # name -> (module builder, per-sample input shape)
    "mlp": (
        lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)),
        (4,),
    ),
    "cnn_batchnorm_pools": (_cnn, (2, 8, 8)),
    "conv1d_batchnorm1d": (
        lambda: nn.Sequential(nn.Conv1d(2, 3, 3), _bn(3, nn.BatchNorm1d), nn.ReLU()),
        (2, 6),
    ),
    "residual_add": (lambda: Residual(1), (2, 4, 4)),
    "residual_sub": (lambda: Residual(-1), (2, 4, 4)),
    "functional": (Functional, (3, 5)),
    "slicing": (Slicing, (4, 5)),
    "arithmetic": (Arithmetic, (4,)),
    "conv_transpose": (_conv_transpose, (2, 3, 3)),
    "conv_transpose_1d": (TransposedConvs1d, (2, 5)),
    "matmul_on_the_left": (LeftMatMul, (3, 4)),
    "pools": (Pools, (2, 6, 6)),
    "activation_modules": (_activation_modules, (3,)),
    "param_ramp_mlp": (_ramp_mlp, (4,)),
    "param_ramp_cnn": (_ramp_cnn, (2, 6, 6)),
    "elementwise": (Elementwise, (4,)),
    "reductions": (Reductions, (2, 3, 4)),
    "resampling": (Resampling, (2, 3, 3)),
    "pieces": (Pieces, (6, 4)),
}


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name: str):
        if name not in cache:
            build, shape = MODULES[name]
            torch.manual_seed(0)
            module = build().eval()
            cache[name] = module, verifier.load(module, torch.randn(1, *shape))
        return cache[name]

    return get


def _box(shape, batch: int, seed: int) -> verifier.Box:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, *shape, generator=gen)
    radius = 0.4 * torch.rand(batch, *shape, generator=gen)
    return verifier.Box(centre - radius, centre + radius)


@pytest.mark.parametrize("name", list(MODULES))
def test_forward_equals_the_module(name, loaded):
    module, model = loaded(name)
    x = torch.randn(5, *MODULES[name][1])
    assert model.input_shape == MODULES[name][1] and model.has_batch_dim
    with torch.no_grad():
        torch.testing.assert_close(model(x), module(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODULES))
def test_bounds_contain_the_module_outputs(name, loaded):
    module, model = loaded(name)
    with torch.no_grad():
        assert_sound(model, _box(model.input_shape, batch=2, seed=1), module)


@pytest.mark.parametrize("name", ["param_ramp_mlp", "param_ramp_cnn"])
def test_param_ramp_gets_its_own_rule(name, loaded):
    """The loader keeps ParamRamp whole (its rule is tighter than the rules of the operators inside it)."""
    _, model = loaded(name)
    assert any(isinstance(node.op, Ramp) for node in model.graph.nodes)


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm_pools", "residual_add"])
def test_an_example_batch_of_three_gives_the_same_model(name, loaded):
    module, model = loaded(name)
    again = verifier.load(module, torch.randn(3, *model.input_shape))
    x = torch.randn(4, *model.input_shape)
    torch.testing.assert_close(again(x), model(x))


class ReadsBatchSize(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


def test_an_example_batch_of_three_with_a_model_reading_the_batch_size():
    model = verifier.load(ReadsBatchSize(), torch.randn(3, 2, 2))
    torch.testing.assert_close(model(torch.ones(5, 2, 2)), torch.ones(5, 4))


def test_l2_ball_bounds_contain_points_of_the_ball(loaded):
    module, model = loaded("mlp")
    gen = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 4, generator=gen), torch.tensor([0.3, 0.8])
    direction = torch.randn(300, 2, 4, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    points = x + eps[:, None] * torch.rand(300, 2, 1, generator=gen) ** 0.25 * direction
    points = torch.cat([points, x + eps[:, None] * direction])  # the sphere too
    with torch.no_grad():
        ys = module(points)
    assert not violations(model, verifier.L2Ball(x, eps), ys)


def test_soundness_check_catches_a_shrunken_bound(loaded):
    """The oracle itself: bounds pulled 1e-2 inside the true range must be reported."""
    module, model = loaded("mlp")
    box = _box((4,), batch=1, seed=3)
    gen = torch.Generator().manual_seed(0)
    ys = module(box.lower + (box.upper - box.lower) * torch.rand(500, 1, 4, generator=gen)).detach()
    shrunk = copy.copy(model)
    true_lo, true_hi = ys.amin(0), ys.amax(0)
    shrunk.bounds = lambda region, method: verifier.Bounds(true_lo + 1e-2, true_hi - 1e-2)
    assert set(violations(shrunk, box, ys)) == set(verifier.METHODS)


def test_a_module_in_training_mode_is_loaded_with_inference_semantics():
    """Expected: ``load`` bounds the module as deployed: BatchNorm normalises with its running statistics
    (not the batch's), Dropout is the identity; the caller's module is neither switched to eval mode nor
    are its running statistics updated by the example pass."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(4, 6), _bn(6, nn.BatchNorm1d), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2)
    )
    module.train()
    stats = module[1].running_mean.clone()
    model = verifier.load(module, torch.randn(3, 4))
    assert module.training and torch.equal(module[1].running_mean, stats)
    x = torch.randn(8, 4)
    with torch.no_grad():
        expected = copy.deepcopy(module).eval()(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        batch_statistics = module(x)  # what training mode would compute: must differ
    assert not torch.allclose(model(x), batch_statistics, atol=1e-3)

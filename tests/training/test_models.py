import pytest
import torch
from torch import nn

import verifier
from verifier.training.models import build, names

SHAPES = [(1, 28, 28), (3, 32, 32)]


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# Parameter counts for n_classes = 10 without batch norm, by hand from the layer lists.
PARAMS = {
    ("mlp", SHAPES[0]): _fc(784, 256) + _fc(256, 256) + _fc(256, 10),
    ("mlp", SHAPES[1]): _fc(3072, 256) + _fc(256, 256) + _fc(256, 10),
    ("dm-small", SHAPES[0]): _conv(1, 16, 4) + _conv(16, 32, 4) + _fc(32 * 10 * 10, 100) + _fc(100, 10),
    ("dm-small", SHAPES[1]): _conv(3, 16, 4) + _conv(16, 32, 4) + _fc(32 * 12 * 12, 100) + _fc(100, 10),
}
for _shape, _side in zip(SHAPES, (7, 8)):  # the two stride-2 convolutions quarter the side
    PARAMS["dm-medium", _shape] = (
        _conv(_shape[0], 32, 3) + _conv(32, 32, 4) + _conv(32, 64, 3) + _conv(64, 64, 4)
        + _fc(64 * _side**2, 512) + _fc(512, 512) + _fc(512, 10)
    )  # fmt: skip
for _shape, _side in zip(SHAPES, (14, 16)):  # one stride-2 convolution halves it
    PARAMS["dm-large", _shape] = (
        _conv(_shape[0], 64, 3) + _conv(64, 64, 3) + _conv(64, 128, 3) + 2 * _conv(128, 128, 3)
        + _fc(128 * _side**2, 512) + _fc(512, 10)
    )  # fmt: skip


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names():
    assert names() == ["mlp", "dm-small", "dm-medium", "dm-large"]
    with pytest.raises(ValueError, match="dm-small"):
        build("resnet")


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "dm-small", "dm-medium", "dm-large"])
def test_shapes_counts_and_loading(name, in_shape):
    model = build(name, in_shape).eval()
    assert _count(model) == PARAMS[name, in_shape]
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 10)
    bounded = verifier.load(model, torch.zeros(1, *in_shape))
    assert torch.allclose(bounded(x), expected, rtol=1e-4, atol=1e-5)


def test_dm_medium_layers():
    # the padded 4x4 stride-2 convolutions halve 28 -> 14 -> 7
    convs = [m for m in build("dm-medium") if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs] == [
        (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1),
    ]  # fmt: skip
    first_fc = next(m for m in build("dm-medium") if isinstance(m, nn.Linear))
    assert first_fc.in_features == 64 * 7 * 7


@pytest.mark.parametrize("name", ["mlp", "dm-small"])
def test_batch_norm(name):
    model = build(name, (3, 32, 32), n_classes=4, batch_norm=True)
    kinds = [type(m) for m in model]
    affine = [i for i, k in enumerate(kinds) if k in (nn.Conv2d, nn.Linear)]
    for i in affine[:-1]:
        assert kinds[i + 1] == (nn.BatchNorm2d if kinds[i] is nn.Conv2d else nn.BatchNorm1d)
        assert kinds[i + 2] is nn.ReLU
    assert affine[-1] == len(model) - 1  # nothing after the classifier
    assert _count(model) > _count(build(name, (3, 32, 32), n_classes=4))
    model.train()(torch.randn(16, 3, 32, 32))  # non-trivial running statistics
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 4)
    assert torch.allclose(verifier.load(model, torch.zeros(1, 3, 32, 32))(x), expected, rtol=1e-4, atol=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError, match="channels, height, width"):
        build("dm-small", (784,))
    with pytest.raises(ValueError, match="too small"):
        build("dm-small", (1, 5, 5))
    assert build("mlp", (784,))(torch.zeros(3, 784)).shape == (3, 10)

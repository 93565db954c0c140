"""Standard architectures of certified training, as plain ``nn.Sequential`` stacks of ``Conv2d``,
``Linear``, ``ReLU``, ``Flatten`` and ``BatchNorm`` modules (so torch.fx traces them and ONNX export works).

Layers are written ``conv C kxk s S p P`` and ``fc N``; a ReLU follows every layer but the last. The DM
networks are those of the CROWN-IBP paper (Zhang et al. 2020), with padding 1 for 3x3 convolutions and
for 4x4 stride-2 convolutions after a padded layer (DM-medium).

| name      | layers                                                                    | params 1x28x28 | params 3x32x32 |
|-----------|---------------------------------------------------------------------------|----------------|----------------|
| mlp       | flatten, fc 256, fc 256, fc n                                             | 269,322        | 855,050        |
| dm-small  | conv 16 4x4 s2 p0, conv 32 4x4 s1 p0, flatten, fc 100, fc n               | 329,606        | 470,918        |
| dm-medium | conv 32 3x3 s1 p1, conv 32 4x4 s2 p1, conv 64 3x3 s1 p1,                  | 1,974,762      | 2,466,858      |
|           | conv 64 4x4 s2 p1, flatten, fc 512, fc 512, fc n                          |                |                |
| dm-large  | conv 64 3x3 s1 p1, conv 64 3x3 s1 p1, conv 128 3x3 s2 p1,                 | 13,257,290     | 17,190,602     |
|           | conv 128 3x3 s1 p1, conv 128 3x3 s1 p1, flatten, fc 512, fc n             |                |                |

(parameter counts for ``n_classes = 10`` without batch norm.)
"""

from __future__ import annotations

import math

from torch import nn

# ("conv", out_channels, kernel, stride, padding) or ("fc", out_features); None stands for n_classes.
_ARCHS = {
    "mlp": [("fc", 256), ("fc", 256), ("fc", None)],
    "dm-small": [("conv", 16, 4, 2, 0), ("conv", 32, 4, 1, 0), ("fc", 100), ("fc", None)],
    "dm-medium": [
        ("conv", 32, 3, 1, 1), ("conv", 32, 4, 2, 1), ("conv", 64, 3, 1, 1), ("conv", 64, 4, 2, 1),
        ("fc", 512), ("fc", 512), ("fc", None),
    ],
    "dm-large": [
        ("conv", 64, 3, 1, 1), ("conv", 64, 3, 1, 1), ("conv", 128, 3, 2, 1), ("conv", 128, 3, 1, 1),
        ("conv", 128, 3, 1, 1), ("fc", 512), ("fc", None),
    ],
}  # fmt: skip


def names() -> list[str]:
    """The architectures ``build`` knows."""
    return list(_ARCHS)


def build(
    name: str, in_shape: tuple[int, ...] = (1, 28, 28), n_classes: int = 10, batch_norm: bool = False
) -> nn.Sequential:
    """A freshly initialised network ``[B, *in_shape] -> [B, n_classes]`` (see the module docstring).

    ``batch_norm=True`` puts a ``BatchNorm2d`` / ``BatchNorm1d`` after every convolution / linear layer but
    the last, before its ReLU. Convolutional networks need ``in_shape = (channels, height, width)``.
    """
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    spec = _ARCHS[name]
    if spec[0][0] == "conv" and len(in_shape) != 3:
        raise ValueError(f"{name} needs in_shape (channels, height, width), got {tuple(in_shape)}")
    layers: list[nn.Module] = []
    shape = tuple(in_shape)
    for i, (kind, width, *conv) in enumerate(spec):
        last = i == len(spec) - 1
        width = n_classes if width is None else width
        if kind == "conv":
            kernel, stride, pad = conv
            channels, *spatial = shape
            spatial = [(n + 2 * pad - kernel) // stride + 1 for n in spatial]
            if min(spatial) < 1:
                raise ValueError(f"{name}: input {tuple(in_shape)} is too small for its convolutions")
            layers.append(nn.Conv2d(channels, width, kernel, stride, pad))
            shape = (width, *spatial)
        else:
            if i == 0 or spec[i - 1][0] == "conv":  # the first fully connected layer
                layers.append(nn.Flatten())
            layers.append(nn.Linear(math.prod(shape), width))
            shape = (width,)
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm2d(width) if kind == "conv" else nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)

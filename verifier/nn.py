"""Torch modules designed for certified training.

Each module is written with plain torch operators that export to standard ONNX, so a trained model ships as
an ONNX file that any LiRPA tool reads; loaded from the module itself (``verifier.load(module, example)``),
it gets its own, tighter bound rule (``verifier.ops``). This module imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_BREAKPOINT = 1e-4  # ParamRamp uses max(r, MIN_BREAKPOINT) as its breakpoint: the ramp keeps a rise


def ramp_breakpoint(r: Tensor, like: Tensor, channel_dim: int | None) -> Tensor:
    """ParamRamp's breakpoint as used: ``max(r, MIN_BREAKPOINT)`` in the dtype of ``like`` and shaped to
    broadcast against it. ``r`` is [C] with ``channel_dim`` the channel axis of ``like`` ([N, ...]), or has
    the per-sample shape of ``like`` when ``channel_dim`` is None (one breakpoint per neuron)."""
    r = r.clamp(min=MIN_BREAKPOINT).to(like.dtype)
    if channel_dim is None:
        return r
    shape = [1] * like.dim()
    shape[channel_dim] = -1
    return r.reshape(shape)


def param_ramp(x: Tensor, r: Tensor, eta: float, channel_dim: int | None) -> Tensor:
    """``eta x`` for x < 0, ``x`` on [0, r], ``r + eta (x - r)`` above r, with r the breakpoint in use
    (``ramp_breakpoint``), as ``leaky_relu(x, eta) - (1 - eta) relu(x - r)``: exact (the second term cancels
    the rise of the first above r) and exported to ONNX as LeakyRelu, Sub, Relu, Mul, Sub."""
    r = ramp_breakpoint(r, x, channel_dim)
    return F.leaky_relu(x, eta) - (1 - eta) * F.relu(x - r)


class ParamRamp(nn.Module):
    """The parameterised ramp of Lyu et al. 2021 (CVPR, arXiv 2104.00447): a ReLU that saturates above a
    learnable breakpoint ``r > 0``,

        f(x) = eta x (x < 0),   x (0 <= x <= r),   r + eta (x - r) (x > r),

    with one fixed slope ``eta`` in [0, 1) on both outer pieces (0: a clipped ReLU). Saturation lets a neuron
    be stable in three ways (below 0, on the ramp, above r), which keeps bounds tight in certified training.

    Args:
        num_features: C, the number of breakpoints along ``channel_dim`` (features after a Linear layer,
            channels after a Conv2d); with ``channel_dim=None``, the per-sample input shape (one breakpoint
            per neuron, as in the authors' code).
        init: initial breakpoint (the authors start at 1).
        eta: slope of the outer pieces, in [0, 1).
        channel_dim: axis of the input [B, ...] indexed by the breakpoints (1: [B, F] and [B, C, H, W]).

    The breakpoint used is ``max(r, 1e-4)``: the parameter ``r`` itself may go below during training (it then
    gets no gradient from the function until an update moves it back); positivity needs no other reparameter-
    isation, so ``r`` is the breakpoint itself, readable and settable directly.
    """

    def __init__(self, num_features: int | tuple[int, ...], init: float = 1.0, eta: float = 0.0,
                 channel_dim: int | None = 1):  # fmt: skip
        super().__init__()
        if not 0.0 <= eta < 1.0:
            raise ValueError(f"ParamRamp slope eta must lie in [0, 1), not {eta}")
        if init <= 0:
            raise ValueError(f"ParamRamp breakpoint must be positive, not {init}")
        self.eta, self.channel_dim = float(eta), channel_dim
        shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
        self.r = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x: Tensor) -> Tensor:
        # exported, the breakpoint goes into the file as a constant, clamped already: read through ``.data``,
        # the tracer records no Clip on the parameter (the exporter folds no Clip, and ONNX readers may lack it)
        r = self.r.data if torch.onnx.is_in_onnx_export() else self.r
        return param_ramp(x, r, self.eta, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{tuple(self.r.shape)}, eta={self.eta}, channel_dim={self.channel_dim}"

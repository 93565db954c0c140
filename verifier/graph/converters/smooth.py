"""Translations into the inflected functions of ``verifier.ops.smooth``: GELU (``nn.GELU``, ``F.gelu``,
either form; ONNX Gelu, opset 20) and SiLU (``nn.SiLU``, ``F.silu``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from verifier.graph.converters.base import ConversionError, converts
from verifier.ops.smooth import GELU, SiLU


@converts(nn.GELU, F.gelu, onnx=("Gelu",))
def _gelu(call) -> GELU:
    m = call.target
    approximate = m.approximate if isinstance(m, nn.Module) else call.const(1, "approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ConversionError(f"GELU with approximate={approximate!r}")
    return GELU(approximate)


@converts(nn.SiLU, F.silu)
def _silu(call) -> SiLU:
    return SiLU()

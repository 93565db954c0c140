"""Translations into :class:`verifier.ops.periodic.Periodic`: Sin and Cos."""

from __future__ import annotations

import torch

from verifier.graph.converters.base import converts
from verifier.ops.periodic import Periodic


@converts(torch.sin, "sin", onnx=("Sin",))
def _sin(call) -> Periodic:
    return Periodic("sin")


@converts(torch.cos, "cos", onnx=("Cos",))
def _cos(call) -> Periodic:
    return Periodic("cos")

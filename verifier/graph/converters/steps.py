"""Translations into the step functions of ``verifier.ops.steps``: Sign, Floor, Ceil and Round (torch
functions and methods, ONNX Sign, Floor, Ceil, Round)."""

from __future__ import annotations

import torch

from verifier.graph.converters.base import ConversionError, Onnx2TorchClass, converts
from verifier.ops.steps import Step

_KINDS = {torch.sign: "sign", torch.floor: "floor", torch.ceil: "ceil", torch.round: "round"}


@converts(*_KINDS, *_KINDS.values(), onnx=("Sign",))
def _step(call) -> Step:
    if call.kwargs.get("decimals", 0) != 0 or (len(call.args) > 1 and call.args[1] != 0):
        raise ConversionError("round with decimals")
    target = getattr(call.target, "function", call.target)  # onnx2torch's OnnxFunction holds torch.sign
    return Step(_KINDS.get(target, target))


@converts(Onnx2TorchClass("roundings", "OnnxRound"), onnx=("Ceil", "Floor", "Round"))
def _onnx_round(call) -> Step:
    return Step(_KINDS[call.target.round_function])

"""Graph rewrites that keep the function and shorten the passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from verifier.graph.graph import Node
from verifier.ops.conv import Conv
from verifier.ops.linear import Linear, ScaleShift


def fuse_bias(nodes: list[Node]) -> list[Node]:
    """``Linear`` followed by a constant shift along its output features (MatMul + Add exports) becomes one
    ``Linear`` with that bias, when the Linear has no other consumer. The Linear node is left without consumers, for pruning."""
    consumers = Counter(i for node in nodes for i in node.inputs)
    out = list(nodes)
    for k, node in enumerate(nodes):
        op = node.op
        if not (isinstance(op, ScaleShift) and op.scale is None and op.shift is not None):
            continue
        src = node.inputs[0]
        lin = out[src].op
        features = out[src].shape[-1:] if out[src].shape else ()
        if not isinstance(lin, Linear) or consumers.get(src) != 1 or op.shift.numel() != sum(features):
            continue
        if op.shift.dim() > 1 and any(d != 1 for d in op.shift.shape[:-1]):
            continue
        bias = op.shift.reshape(-1) if lin.bias is None else lin.bias + op.shift.reshape(-1)
        out[k] = Node(node.name, Linear(lin.weight, bias), out[src].inputs, node.shape)
    return out


def fold_scale_shift(nodes: list[Node]) -> list[Node]:
    """A per-output-channel ``ScaleShift`` (a BatchNorm map) right after a ``Conv`` or ``Linear`` that feeds
    nothing else becomes that layer with scaled weights, ``W s`` and ``b s + t``: one affine operator
    instead of two, so bound passes touch the activations once (the layer is left without consumers, for
    pruning). The folded tensors are computed from the operators' own, so gradients still reach them."""
    consumers = Counter(i for node in nodes for i in node.inputs)
    out = list(nodes)
    for k, node in enumerate(nodes):
        op, src = node.op, node.inputs[0] if node.inputs else None
        if not isinstance(op, ScaleShift) or src is None or consumers.get(src) != 1:
            continue
        layer = out[src].op
        if not isinstance(layer, (Conv, Linear)):
            continue
        channels = layer.weight.shape[0]
        per_channel = (channels,) + (1,) * (len(node.shape) - 1) if isinstance(layer, Conv) else (channels,)
        if any(t is not None and tuple(t.shape) != per_channel for t in (op.scale, op.shift)):
            continue
        scale = None if op.scale is None else op.scale.reshape(-1)
        weight = (
            layer.weight
            if scale is None
            else layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1))
        )
        bias = layer.bias if scale is None or layer.bias is None else layer.bias * scale
        if op.shift is not None:
            bias = op.shift.reshape(-1) if bias is None else bias + op.shift.reshape(-1)
        out[k] = Node(node.name, replace(layer, weight=weight, bias=bias), out[src].inputs, node.shape)
    return out

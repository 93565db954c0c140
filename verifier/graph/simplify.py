"""Graph rewrites that keep the function and shorten the passes."""

from __future__ import annotations

from verifier.graph.graph import Node
from verifier.ops.linear import Linear, ScaleShift


def fuse_bias(nodes: list[Node]) -> list[Node]:
    """``Linear`` followed by a constant shift along its output features (MatMul + Add exports) becomes one
    ``Linear`` with that bias, when the Linear has no other consumer. The Linear node is left without consumers, for pruning."""
    consumers: dict[int, int] = {}
    for node in nodes:
        for i in node.inputs:
            consumers[i] = consumers.get(i, 0) + 1
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

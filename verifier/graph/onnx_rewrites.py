"""Rewrites of an ONNX graph before onnx2torch converts it: each turns a spelling onnx2torch (or onnx's
version converter) cannot take into an equivalent one it can, exactly (same function on every input).

* ``fold_constants``: Constant nodes become initializers (onnx2torch has no Constant-19 converter).
* ``lower_opset``: onnx's version converter, with Split-18 (which it has no adapter for) held aside and
  rewritten into its opset-13 form.
* ``explicit_pads``: Conv, ConvTranspose, MaxPool and AveragePool with pads that differ at the two ends of
  an axis (onnx2torch refuses them or wraps them in a module of its own) become a symmetric operator with
  an explicit Pad before it (a Slice after it for ConvTranspose, a constant scale after it for an average
  that counts real entries only).
* ``drop_identities``, ``fill_clip_minimum``, ``softmax_rows_keep_batch``: see each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a file is read
    import onnx

_HIDDEN = "verifier.held.aside"  # the domain of nodes hidden from onnx's version converter


def _is_onnx(node) -> bool:
    return node.domain in ("", "ai.onnx")


def _attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def _ints_initializer(model, name: str, values) -> str:
    import numpy as np
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def fold_constants(model: onnx.ModelProto) -> None:
    """Every Constant node of the main graph whose value is a tensor (any ``value*`` attribute) becomes an
    initializer of the same name; one producing a graph output stays a node."""
    import numpy as np
    from onnx import helper, numpy_helper

    outputs = {o.name for o in model.graph.output}
    kept = []
    for node in model.graph.node:
        value = node.attribute[0] if len(node.attribute) == 1 else None
        if (node.op_type != "Constant" or not _is_onnx(node) or node.output[0] in outputs or value is None
                or value.name in ("sparse_value", "value_string", "value_strings")):  # fmt: skip
            kept.append(node)
            continue
        array = helper.get_attribute_value(value)
        if value.name == "value":
            array = numpy_helper.to_array(array)
        else:  # value_float(s), value_int(s)
            array = np.asarray(array, dtype=np.float32 if value.name.startswith("value_float") else np.int64)
        tensor = numpy_helper.from_array(array)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
    if len(kept) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)


def lower_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The model at opset ``target`` (below the model's) by onnx's version converter, Split nodes held
    aside in a private domain (the converter has no adapter from Split-18) and brought back in their
    opset-13 form: ``num_outputs`` becomes the ``split`` input of the chunk sizes ONNX defines
    (``ceil(n / k)``, the last one smaller), read from the inferred shape. Raises what the converter
    raises for other operators."""
    from onnx import helper, shape_inference, version_converter

    splits = [n for n in model.graph.node if n.op_type == "Split" and _is_onnx(n)]
    try:
        if splits:
            shapes = _inferred_shapes(model, shape_inference)
            model.opset_import.append(helper.make_opsetid(_HIDDEN, 1))
        for k, node in enumerate(splits):
            count = _attr(node, "num_outputs")
            if count is not None:
                dim = shapes.get(node.input[0], [None] * 32)[_attr(node, "axis", 0)]
                if dim is None:
                    raise ValueError(f"Split node {node.name!r}: num_outputs over an axis of unknown size")
                chunk = -(-dim // count)
                sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
                node.input[1:] = [_ints_initializer(model, f"{node.output[0]}_split_sizes_{k}", sizes)]
                _set_attr(node, "num_outputs", None)
            node.domain = _HIDDEN
        lowered = version_converter.convert_version(model, target)
    finally:  # the private domain never leaves this function, on either model
        _bring_back(model)
    _bring_back(lowered)
    return lowered


def _bring_back(model) -> None:
    """Return the nodes held aside by ``lower_opset`` to the default domain."""
    for node in model.graph.node:
        if node.domain == _HIDDEN:
            node.domain = ""
    kept = [o for o in model.opset_import if o.domain != _HIDDEN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _inferred_shapes(model, shape_inference) -> dict[str, list[int | None]]:
    """Dims (None where unknown) of every value whose shape onnx's shape inference finds."""
    inferred = shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values}  # fmt: skip


_POOLS_AND_CONVS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")


def explicit_pads(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Rewrite every Conv, ConvTranspose, MaxPool and AveragePool whose ``pads`` differ at the two ends of
    an axis (begin b, end e; s = min(b, e)) into a symmetric one, exactly:

    * Conv: a zero Pad of ``(b - s, e - s)`` before a Conv padded by s.
    * ConvTranspose (its pads crop the output): a ConvTranspose cropped by s, then a Slice of the rest.
    * MaxPool (padding never wins a max): an *edge* Pad of ``(b - s, e - s)`` before a MaxPool padded by s.
      A window holding a copied edge entry also holds the entry it copies (every window spans k >= b + 1
      and k >= e + 1 consecutive positions), so the copy changes no maximum. Refused with dilations or
      ceil_mode, or pads of k or more.
    * AveragePool: a zero Pad of ``(b, e)`` before an unpadded AveragePool (its divisor the kernel size k,
      what ``count_include_pad=1`` asks), then, for ``count_include_pad=0``, a constant scale
      ``k / count`` per output position (count: the window's entries inside the input). Refused with
      ceil_mode or dilations.

    Returns ``(reason, node name)`` of the nodes refused (left as they are)."""
    from onnx import helper, shape_inference

    if not any(n.op_type in _POOLS_AND_CONVS and _is_asymmetric(n) for n in model.graph.node):
        return []
    shapes = _inferred_shapes(model, shape_inference)
    refused, nodes = [], []
    for k, node in enumerate(model.graph.node):
        if not (node.op_type in _POOLS_AND_CONVS and _is_onnx(node) and _is_asymmetric(node)):
            nodes.append(node)
            continue
        pads = list(_attr(node, "pads"))
        rank = len(pads) // 2
        begin, end = pads[:rank], pads[rank:]
        low = [min(b, e) for b, e in zip(begin, end)]
        name = node.name or node.output[0]
        reason = _refusal(node, rank, begin, end)
        if reason:
            refused.append((f"{node.op_type}: {reason}", name))
            nodes.append(node)
            continue
        tag = f"{node.output[0]}_pads_{k}"
        if node.op_type == "ConvTranspose":
            _set_attr(node, "pads", low + low)
            out, node.output[0] = node.output[0], f"{tag}_uncropped"
            starts = [b - s for b, s in zip(begin, low)]
            ends = [-(e - s) if e > s else 2**62 for e, s in zip(end, low)]
            crop = [_ints_initializer(model, f"{tag}_{what}", v)
                    for what, v in (("starts", starts), ("ends", ends), ("axes", range(2, 2 + rank)))]  # fmt: skip
            nodes += [node, helper.make_node("Slice", [node.output[0], *crop], [out], name=f"{name}_crop")]
            continue
        padded = f"{tag}_padded"
        if node.op_type == "AveragePool":
            pad = helper.make_node(
                "Pad",
                [node.input[0], _ints_initializer(model, f"{tag}_pads", [0, 0, *begin, 0, 0, *end])],
                [padded],
                name=f"{name}_pad",
            )
            _set_attr(node, "pads", None)
        else:
            mode = "edge" if node.op_type == "MaxPool" else "constant"
            extra_b, extra_e = [b - s for b, s in zip(begin, low)], [e - s for e, s in zip(end, low)]
            pad = helper.make_node("Pad", [node.input[0], _ints_initializer(model, f"{tag}_pads", [0, 0, *extra_b, 0, 0, *extra_e])], [padded], mode=mode,
                                   name=f"{name}_pad")  # fmt: skip
            _set_attr(node, "pads", low + low)
        node.input[0] = padded
        nodes += [pad, node]
        if node.op_type == "AveragePool" and not _attr(node, "count_include_pad", 0):
            dims = shapes.get(pad.input[0], [])[2:]
            if len(dims) != rank or None in dims:
                refused.append(("AveragePool: pads differ at the two ends, input of unknown size", name))
                continue
            scale = _average_scale(model, tag, node, dims, begin, end)
            out, node.output[0] = node.output[0], f"{tag}_sums"
            nodes.append(helper.make_node("Mul", [node.output[0], scale], [out], name=f"{name}_count"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return refused


def _is_asymmetric(node) -> bool:
    pads = _attr(node, "pads")
    auto = _attr(node, "auto_pad", b"NOTSET")
    return (
        bool(pads)
        and auto in (b"NOTSET", "NOTSET")
        and list(pads[: len(pads) // 2]) != list(pads[len(pads) // 2 :])
    )


def _refusal(node, rank: int, begin: list[int], end: list[int]) -> str | None:
    """Why the asymmetric pads of this node cannot be rewritten, or None."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return "pads differ at the two ends, with output_shape" if _attr(node, "output_shape") else None
    kernel = list(_attr(node, "kernel_shape"))
    if _attr(node, "ceil_mode", 0) or any(d != 1 for d in _attr(node, "dilations", [1] * rank)):
        return "pads differ at the two ends, with ceil_mode or dilations"
    if node.op_type == "MaxPool" and (len(node.output) > 1 and node.output[1]):
        return "pads differ at the two ends, with indices"
    if node.op_type == "MaxPool" and any(max(b, e) >= k for b, e, k in zip(begin, end, kernel)):
        return "pads differ at the two ends, a pad as wide as the kernel"
    return None


def _average_scale(model, tag: str, node, dims, begin, end) -> str:
    """The initializer ``k / count`` of an average over windows of a padded input: [1, 1, *output]."""
    import numpy as np
    from onnx import numpy_helper

    kernel = list(_attr(node, "kernel_shape"))
    strides = list(_attr(node, "strides", [1] * len(kernel)))
    scale = np.ones([1, 1], dtype=np.float64)
    for n, k, s, b, e in zip(dims, kernel, strides, begin, end):
        starts = np.arange((n + b + e - k) // s + 1) * s - b  # first input position of each window
        count = np.minimum(starts + k, n) - np.maximum(starts, 0)
        scale = scale[..., None] * (k / count)
    name = f"{tag}_scale"
    model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name))
    return name


def fill_clip_minimum(model: onnx.ModelProto) -> None:
    """Give every Clip with a maximum but no minimum (an empty input name) the minimum -inf, which clamps
    nothing: onnx2torch reads an empty name as a dynamic bound and refuses it."""
    from onnx import TensorProto, helper

    for k, node in enumerate(model.graph.node):
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[1] == "":
            name = f"{node.output[0]}_no_minimum_{k}"
            model.graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [-math.inf]))
            node.input[1] = name


def softmax_rows_keep_batch(model: onnx.ModelProto) -> None:
    """Rewrite ``Flatten(axis >= 2) -> (Log)Softmax(last axis) -> Reshape`` (how onnx's version converter
    lifts a Softmax of opset < 13 over trailing dimensions) so that the Flatten keeps the leading
    dimensions: a Reshape to ``[d_0, ..., d_{axis-1}, -1]`` (ONNX Reshape copies a dimension given as 0).
    The softmax is row-wise either way, and the final Reshape restores the same shape from the same
    element order; the plain Flatten would merge the batch dimension into the rows."""
    import numpy as np
    from onnx import helper, numpy_helper

    attr = lambda node, name, default: next(
        (helper.get_attribute_value(a) for a in node.attribute if a.name == name), default
    )
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for k, node in enumerate(model.graph.node):
        axis = attr(node, "axis", 1)
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx") or axis < 2:
            continue
        softmaxes = users.get(node.output[0], [])
        rowwise = all(
            u.op_type in ("Softmax", "LogSoftmax") and attr(u, "axis", -1) in (-1, 1) for u in softmaxes
        )
        reshaped = all(
            [c.op_type for c in users.get(u.output[0], [])]
            and all(c.op_type == "Reshape" for c in users[u.output[0]])
            for u in softmaxes
        )
        if not (softmaxes and rowwise and reshaped):
            continue
        shape = f"{node.output[0]}_rows_shape_{k}"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([0] * axis + [-1], dtype=np.int64), shape)
        )
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(shape)
        for u in softmaxes:  # the last axis of the rows, whatever their rank now
            del u.attribute[:]
            u.attribute.append(helper.make_attribute("axis", -1))


def drop_identities(model: onnx.ModelProto) -> None:
    """Remove Identity nodes, their consumers reading the Identity's input instead (torch's exporter emits
    them from opset 19 on, where onnx2torch has no converter for them). An Identity producing a graph
    output from another node's output hands that output its name."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    sources = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.input) != 1:
            kept.append(node)
        elif node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        elif node.input[0] not in sources and node.input[0] not in outputs:
            for producer in kept:  # the producer writes the graph output directly
                producer.output[:] = [node.output[0] if o == node.input[0] else o for o in producer.output]
            for consumer in kept:
                consumer.input[:] = [node.output[0] if i == node.input[0] else i for i in consumer.input]
            rename[node.input[0]] = node.output[0]
        else:
            kept.append(node)
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)

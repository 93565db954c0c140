"""ONNX front end: file -> checked onnx model -> onnx2torch GraphModule -> Graph."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from verifier.errors import ModelLoadError
from verifier.graph.converters import supported_onnx_operators

if TYPE_CHECKING:  # onnx itself is imported where a file is read: a cached model needs no onnx at all
    import onnx

# ONNX operator types with bound rules, or folded at load time when they only touch constants and shapes
# (the converters' table: ``verifier.graph.converters``)
SUPPORTED_ONNX_OPERATORS = supported_onnx_operators()
_TARGET_OPSET = 17


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and sanity-check an ONNX file; every problem is a ModelLoadError naming the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the ONNX graph has no nodes")
    return model


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op type, node name) of every node whose type has no rules here."""
    return [(n.op_type, n.name or f"#{k}") for k, n in enumerate(model.graph.node)
            if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_ONNX_OPERATORS]  # fmt: skip


def node_names(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """onnx2torch submodule path (the ONNX name without a leading '/') -> (ONNX node name, op type)."""
    return {n.name.lstrip("/"): (n.name, n.op_type) for n in model.graph.node if n.name}


# ONNX element types a data input may have: the bound engine and the counterexample check work on floats
_FLOAT_ELEMENT_TYPES = {1: "float32", 10: "float16", 11: "float64"}  # TensorProto.FLOAT, FLOAT16, DOUBLE


def data_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int | None]]]:
    """Name and dims (None where symbolic) of every graph input that is not an initializer, in order.
    ``ModelLoadError`` naming the input for one that is not a floating-point tensor."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ModelLoadError("the ONNX graph has no data input")
    found = []
    for value in inputs:
        kind = value.type.WhichOneof("value")
        element = value.type.tensor_type.elem_type if kind == "tensor_type" else None
        if element not in _FLOAT_ELEMENT_TYPES:
            from onnx import TensorProto

            what = TensorProto.DataType.Name(element) if element else (kind or "untyped")
            raise ModelLoadError(
                f"input {value.name!r} has element type {what}: only float inputs are supported "
                "(an integer or boolean input has no box to bound over)"
            )
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value.type.tensor_type.shape.dim]  # fmt: skip
        found.append((value.name, dims))
    return found


def data_is_double(model: onnx.ModelProto) -> bool:
    """Whether every data input (``data_inputs``) is a float64 tensor."""
    names = {name for name, _ in data_inputs(model)}
    values = [i for i in model.graph.input if i.name in names]
    return all(
        v.type.tensor_type.elem_type == 11 for v in values
    )  # TensorProto.DOUBLE (onnx imported lazily)


def to_fx(model: onnx.ModelProto, path: str | Path):
    """onnx2torch conversion, after lifting old opsets (onnx2torch refuses e.g. opset-8 Flatten)."""
    import onnx2torch  # imported here: it imports torchvision, which is slow
    from onnx import version_converter

    from verifier.graph import onnx2torch_extra  # noqa: F401  (its converters for what onnx2torch lacks)

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=_TARGET_OPSET)
    if opset < _TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, _TARGET_OPSET)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot lift opset {opset} to {_TARGET_OPSET}: {exc}") from exc
    elif opset > _TARGET_OPSET:  # onnx2torch lacks converters for several newer versions (ReduceMean-18,
        # Split-18, Constant-19, ...): lower the model when onnx has the adapters (not for Split-18 or
        # Constant-19), else convert it as it is and let onnx2torch name what it cannot convert
        with contextlib.suppress(Exception):
            model = version_converter.convert_version(model, _TARGET_OPSET)
    _drop_identities(model)
    _fill_clip_minimum(model)
    _softmax_rows_keep_batch(model)
    initializers = {t.name for t in model.graph.initializer}
    if any(i.name in initializers for i in model.graph.input):  # old exporters list weights as inputs
        keep = [i for i in model.graph.input if i.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnx2torch.convert(model).eval()  # inference semantics (BatchNorm, Dropout)
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnx2torch could not convert the model: {exc}") from exc


def _fill_clip_minimum(model: onnx.ModelProto) -> None:
    """Give every Clip with a maximum but no minimum (an empty input name) the minimum -inf, which clamps
    nothing: onnx2torch reads an empty name as a dynamic bound and refuses it."""
    from onnx import TensorProto, helper

    for k, node in enumerate(model.graph.node):
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[1] == "":
            name = f"{node.output[0]}_no_minimum_{k}"
            model.graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [-math.inf]))
            node.input[1] = name


def _softmax_rows_keep_batch(model: onnx.ModelProto) -> None:
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


def _drop_identities(model: onnx.ModelProto) -> None:
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


def example_inputs(
    inputs: list[tuple[str, list[int | None]]], double: bool = False
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """A random tensor of each input's declared shape (symbolic dims as 1; float64 when ``double``, for a
    model whose inputs are) and whether the model has a batch
    dimension: dim 0 of an input is one when the input has rank >= 2 and dim 0 is 1 or symbolic. When the
    inputs disagree, the model is taken to have none: each input's whole tensor (its leading 1 included)
    is part of the one sample."""
    conventions = [len(dims) >= 2 and dims[0] in (None, 1) for _, dims in inputs]
    for (name, dims), batched in zip(inputs, conventions):
        if len(dims) >= 3 and not batched:
            where = f"input {name!r} " if len(inputs) > 1 else "input "
            raise ModelLoadError(
                f"{where}with a fixed batch of {dims[0]} (shape {dims}): export the model with batch 1"
            )
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64 if double else torch.float32
    examples = tuple(torch.randn([d or 1 for d in dims], generator=gen, dtype=dtype) for _, dims in inputs)
    return examples, all(conventions)

"""ONNX front end: file -> checked onnx model -> onnx2torch GraphModule -> Graph."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from verifier.errors import ModelLoadError

if TYPE_CHECKING:  # onnx itself is imported where a file is read: a cached model needs no onnx at all
    import onnx

# ONNX operator types with bound rules, or folded at load time when they only touch constants and shapes
# (Shape, ConstantOfShape, Equal, Where: on graph tensors they have no rules, and loading names the node).
SUPPORTED_ONNX_OPERATORS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Div", "Dropout", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "Log", "MatMul", "MaxPool",
    "Mul", "Neg", "Pad", "Pow", "Reciprocal", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape",
    "Sigmoid", "Sin", "Slice", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose",
    "Unsqueeze", "Upsample", "Where",
})  # fmt: skip
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


def data_input(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """Name and dims (None where symbolic) of the single graph input that is not an initializer."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"models with {len(inputs)} data inputs are not supported (exactly one needed)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]  # fmt: skip
    return inputs[0].name, dims


def data_is_double(model: onnx.ModelProto) -> bool:
    """Whether the data input (``data_input``) is a float64 tensor."""
    name, _ = data_input(model)
    (value,) = [i for i in model.graph.input if i.name == name]
    return value.type.tensor_type.elem_type == 11  # TensorProto.DOUBLE (onnx is imported lazily)


def to_fx(model: onnx.ModelProto, path: str | Path):
    """onnx2torch conversion, after lifting old opsets (onnx2torch refuses e.g. opset-8 Flatten)."""
    import onnx2torch  # imported here: it imports torchvision, which is slow
    from onnx import version_converter

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


def example_input(dims: list[int | None], double: bool = False) -> tuple[torch.Tensor, bool]:
    """A random input of the declared shape (symbolic dims as 1; float64 when ``double``, for a model
    whose input is) and whether dim 0 is a batch dimension: it is when the input has rank >= 2 and dim 0
    is 1 or symbolic."""
    shape = [d or 1 for d in dims]
    batched = len(dims) >= 2 and dims[0] in (None, 1)
    if len(dims) >= 3 and not batched:
        raise ModelLoadError(
            f"input with a fixed batch of {dims[0]} (shape {dims}): export the model with batch 1"
        )
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=torch.float64 if double else torch.float32), batched

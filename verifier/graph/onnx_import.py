"""ONNX front end: file -> checked onnx model -> onnx2torch GraphModule -> Graph."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from verifier.errors import ModelLoadError, UnsupportedOperatorError
from verifier.graph import onnx_rewrites
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

    onnx_rewrites.fold_constants(model)  # before lowering: onnx has no adapter from Constant-19
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=_TARGET_OPSET)
    if opset < _TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, _TARGET_OPSET)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot lift opset {opset} to {_TARGET_OPSET}: {exc}") from exc
    elif opset > _TARGET_OPSET:  # onnx2torch lacks converters for several newer versions (ReduceMean-18,
        # Split-18, ...): lower the model where onnx has the adapters (``lower_opset`` rewrites Split-18
        # itself), else convert it as it is and let onnx2torch name what it cannot convert
        with contextlib.suppress(Exception):
            model = onnx_rewrites.lower_opset(model, _TARGET_OPSET)
    onnx_rewrites.drop_identities(model)
    onnx_rewrites.fill_clip_minimum(model)
    onnx_rewrites.softmax_rows_keep_batch(model)
    refused = onnx_rewrites.explicit_pads(model)
    if refused:
        raise UnsupportedOperatorError(refused)
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

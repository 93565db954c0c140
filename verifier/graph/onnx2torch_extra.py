"""onnx2torch converters for ONNX operators it lacks, registered in its own table when the loader imports
onnx2torch (``onnx_import.to_fx``). Each produces the torch module whose spelling the translation table
(``verifier.graph.converters``) already knows, so the operator keeps its dedicated bound rule:

* Gelu (opset 20; onnx has no adapter lowering it to an older opset): ``nn.GELU`` with its
  ``approximate`` attribute ("none" or "tanh")."""

from __future__ import annotations

from onnx2torch.node_converters.registry import add_converter
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn


@add_converter(operation_type="Gelu", version=20)
def _gelu(node, graph) -> OperationConverterResult:
    approximate = node.attributes.get("approximate", "none")
    return OperationConverterResult(
        torch_module=nn.GELU(approximate=approximate), onnx_mapping=onnx_mapping_from_node(node=node)
    )

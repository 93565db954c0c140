"""Identity nodes (torch's exporter emits them from opset 19 on, where onnx2torch has no converter) are
removed before conversion: after the input, between nodes, and producing the graph output."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import verifier


def test_identity_nodes_anywhere_at_opset_19(tmp_path):
    w = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("MatMul", ["x1", "W"], ["h"]),
        helper.make_node("Identity", ["h"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    model = verifier.load(str(path))
    x = torch.rand(5, 3)
    torch.testing.assert_close(model(x), torch.relu(x @ torch.from_numpy(w)))
    b = model.bounds(verifier.LinfBall(x, 0.1), method="crown")
    assert (b.lower <= model(x)).all() and (model(x) <= b.upper).all()

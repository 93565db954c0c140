"""Helpers shared by the graph tests: the soundness oracle, a builder of small ONNX models, and an
onnxruntime reference. Bounds are tested against outputs at sampled points of the input region, never
against stored numbers, so a looser bound never fails and an unsound one always can."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

import verifier
from tests.helpers import DEEP_FLOAT32, worst_miss

MAX_CORNER_DIMS = 8  # boxes with at most this many inputs are also checked at every corner


def box_points(lo: Tensor, hi: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """[K, B, *shape] points of each box (lo, hi: [B, *shape]): the centre, ``n`` uniform samples, ``n // 4``
    random corners, and every corner when a box has at most MAX_CORNER_DIMS coordinates."""
    batch, shape = lo.shape[0], lo.shape[1:]
    u = torch.rand((n, *lo.shape), generator=gen, dtype=lo.dtype)
    corners = torch.randint(0, 2, (n // 4, *lo.shape), generator=gen).to(lo.dtype)
    parts = [((lo + hi) / 2).unsqueeze(0), lo + (hi - lo) * u, lo + (hi - lo) * corners]
    dims = int(torch.Size(shape).numel())
    if dims <= MAX_CORNER_DIMS:
        every = torch.tensor(list(itertools.product((0.0, 1.0), repeat=dims)), dtype=lo.dtype)
        every = every.reshape(-1, 1, *shape).expand(-1, batch, *shape)
        parts.append(lo + (hi - lo) * every)
    return torch.cat(parts)


def violations(model: verifier.BoundedModel, region: verifier.Region, ys: Tensor) -> dict[str, float]:
    """Methods whose bounds miss some of the outputs ``ys`` ([K, B, *output_shape]) of points in the region,
    with the worst miss beyond the allowance of deep float32 models."""
    failed = {}
    batch = region.batch
    for method in verifier.METHODS:
        lower, upper = model.bounds(region, method=method)
        assert lower.shape == upper.shape == (batch, *model.output_shape), method
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all(), method
        miss = worst_miss(ys, lower, upper, DEEP_FLOAT32)
        if miss > 0:
            failed[method] = miss
    return failed


def assert_sound(
    model, box: verifier.Box, f: Callable[[Tensor], Tensor], n: int = 200, seed: int = 0
) -> None:
    """Every method's bounds contain ``f`` (the reference: [K, *input_shape] -> [K, *output_shape]) at the
    points of ``box_points``."""
    points = box_points(box.lower, box.upper, n, torch.Generator().manual_seed(seed))
    k, batch = points.shape[:2]
    ys = f(points.reshape(k * batch, *model.input_shape)).reshape(k, batch, *model.output_shape)
    failed = violations(model, box, ys)
    assert not failed, f"bounds miss sampled outputs (method: worst miss) {failed}"


class Net:
    """Builds a one-input float32 ONNX graph node by node, with seeded random weights."""

    def __init__(self, shape: list, seed: int = 0):
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def rand(self, *shape: int, scale: float = 0.5) -> str:
        return self.const(self.rng.standard_normal(shape) * scale)

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """Append one node named like the PyTorch exporter's ("/relu_3"); returns its output's name."""
        out, name = f"t{len(self.nodes)}", f"/{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def gemm(self, x: str, n_in: int, n_out: int) -> str:
        return self.op("Gemm", x, self.rand(n_in, n_out), self.rand(n_out))

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, **attrs) -> str:
        return self.op("Conv", x, self.rand(c_out, c_in, k, k), self.rand(c_out), **attrs)

    def model(self, output: str, opset: int = 17) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "case", [x], [y], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8  # old enough for every onnxruntime that reads opset 17
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


class OnnxRunner:
    """onnxruntime on one ONNX file, fed one sample at a time in the file's declared input rank."""

    def __init__(self, path: str | Path, batched: bool = True):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.batched = batched

    def __call__(self, xs: Tensor) -> Tensor:
        """[K, *input_shape] -> [K, *output_shape]."""
        outs = []
        for x in xs.detach().to(torch.float32).numpy():
            feed = x[None] if self.batched else x
            out = self.session.run(None, {self.name: np.ascontiguousarray(feed)})[0]
            outs.append(out[0] if self.batched else out)
        return torch.from_numpy(np.stack(outs))

"""Converters name onnx2torch's classes without importing it; every name must be a real class."""

from __future__ import annotations

import importlib

from verifier.graph import fx_import
from verifier.graph.converters import CONVERTERS, Onnx2TorchClass


def test_every_onnx2torch_name_is_the_class_it_stands_for():
    names = [key for key in CONVERTERS if isinstance(key, Onnx2TorchClass)] + [fx_import._ONNX_SHAPE]
    assert len(names) > 20
    for name in names:
        module = importlib.import_module(f"onnx2torch.node_converters.{name.module}")
        kind = getattr(module, name.name)
        assert isinstance(kind, type) and Onnx2TorchClass.of(kind) == name

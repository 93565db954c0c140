"""Front ends: ONNX files (through onnx2torch) and torch.fx modules, translated into one Graph."""

from verifier.graph import onnx2torch_compat  # noqa: F401  (before the modules that import onnx2torch)

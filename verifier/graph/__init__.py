from verifier.graph import onnx2torch_compat  # noqa: F401  (before the modules that import onnx2torch)

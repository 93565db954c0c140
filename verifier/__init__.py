"""verifier: certified robustness of neural networks by linear-relaxation bound propagation.

The public names are imported on first use (PEP 562): ``import verifier`` stays cheap, so that the
``verify-model`` parent process, which only waits for its worker and enforces the deadline, never
imports torch.
"""

import importlib

from verifier.errors import InputError, ModelLoadError, UnsupportedOperatorError, VerifierError
from verifier.graph import onnx2torch_compat  # noqa: F401  (light; before anything imports onnx2torch)
from verifier.memory import on_import as _keep_freed_memory

_keep_freed_memory()  # faster bound passes: freed tensors' memory is reused (``verifier.memory``)

_LAZY = {
    "METHODS": "verifier.api", "BoundedModel": "verifier.api", "Bounds": "verifier.api", "load": "verifier.api",
    "supported_onnx_operators": "verifier.api", "Box": "verifier.spec.regions", "L2Ball": "verifier.spec.regions",
    "LinfBall": "verifier.spec.regions", "Region": "verifier.spec.regions",
}  # fmt: skip

__all__ = [
    "METHODS",
    "BoundedModel",
    "Bounds",
    "Box",
    "InputError",
    "L2Ball",
    "LinfBall",
    "ModelLoadError",
    "Region",
    "UnsupportedOperatorError",
    "VerifierError",
    "load",
    "supported_onnx_operators",
]  # fmt: skip
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'verifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

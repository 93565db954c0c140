"""verifier: certified robustness of neural networks by linear-relaxation bound propagation."""

from verifier.api import METHODS, BoundedModel, Bounds, load, supported_onnx_operators
from verifier.errors import InputError, ModelLoadError, UnsupportedOperatorError, VerifierError
from verifier.spec.regions import Box, L2Ball, LinfBall, Region

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

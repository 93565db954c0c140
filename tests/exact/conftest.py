"""The same single-torch-thread setting as ``tests/verify``."""

from tests.verify.conftest import _one_torch_thread  # noqa: F401  (an autouse fixture, used by import)

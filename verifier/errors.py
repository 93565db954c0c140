"""The project's exception types: every failure a user can cause is one of these, with a message naming
the file, node or line involved, never a bare traceback from deep inside torch or onnx."""


class VerifierError(Exception):
    """Base class of every error the project raises on purpose."""


class ModelLoadError(VerifierError):
    """The model file is unreadable, not ONNX, or its graph cannot be translated."""


class UnsupportedOperatorError(ModelLoadError):
    """The model uses operators without bound rules; the message lists all of them with node names."""

    def __init__(self, unsupported: list[tuple[str, str]]):
        self.unsupported = list(unsupported)
        items = ", ".join(f"{op} (node {name})" for op, name in self.unsupported)
        super().__init__(f"unsupported operators: {items}")


class InputError(VerifierError, ValueError):
    """Bad user input to a bound computation: wrong shape, NaN/inf, negative radius, bad method name."""


class BoundComputationError(VerifierError):
    """A bound pass failed or produced NaN at a node; the message names the node and its operator."""

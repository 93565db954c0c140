"""The loading layer's translation from front-end operators to ``verifier.ops``: one table, filled by one
module per operator family.

``base`` holds the table (``CONVERTERS``: torch.fx target or onnx2torch class -> converter, and the ONNX
operator types the converters serve, from which ``supported_onnx_operators`` is derived). The family modules
mirror ``verifier/ops/`` (``converters/conv.py`` translates into ``ops/conv.py``), so that an operator's
mathematics and its spellings sit under the same name in two layers, each module staying small; a single
table module would hold every converter (several hundred lines) and import every family anyway.
``normalisation`` has no counterpart in ``ops``: Softmax and LayerNorm are composites of bounded operators.

Adding an ONNX operator: a rule in ``verifier/ops/<family>.py`` and a ``@converts(..., onnx=("Type",))``
converter in ``verifier/graph/converters/<family>.py``. Importing this package registers every converter;
it does not import onnx2torch (its classes are named by ``Onnx2TorchClass``).
"""

from verifier.graph.converters import (  # noqa: F401
    activations,
    conv,
    elementwise,
    linear,
    lipschitz,
    normalisation,
    periodic,
    piecewise,
    pooling,
    product,
    reduce,
    resize,
    shape,
    smooth,
    steps,
)
from verifier.graph.converters.base import (  # noqa: F401
    CONVERTERS,
    Composite,
    ConversionError,
    Onnx2TorchClass,
    converter_for,
    supported_onnx_operators,
)

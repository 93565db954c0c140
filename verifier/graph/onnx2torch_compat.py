"""Let onnx2torch import where torchvision is not installed.

onnx2torch's package ``__init__`` imports every converter module, and two of them bind torchvision at
import time (onnx2torch 1.5.15: ``node_converters/nms.py`` does ``import torchvision`` for ``ops.nms`` and
``ops.box_convert``; ``node_converters/roialign.py`` does ``from torchvision.ops import roi_align``). Nothing
else in onnx2torch uses torchvision, and neither operator has bound rules here, so the project's environment
(the CPU build of torch, beside which no torchvision release imports) goes without it.

Importing this module puts a finder on ``sys.meta_path`` that acts once, when onnx2torch itself is first
imported, and only if torchvision is absent: onnx2torch's package is then executed with a stand-in
``torchvision`` (and ``torchvision.ops``) in ``sys.modules``, whose three functions raise
:class:`ModelLoadError` naming the function, the ONNX operator and the fix. The stand-in is removed as soon
as onnx2torch is imported: the two converter modules alone keep it, and the rest of the process still finds
torchvision absent rather than a fake one. A finder, not an import done here, keeps onnx2torch's import
wherever the code puts it (it is slow); the package whose modules import onnx2torch (``verifier.graph``)
imports this module in its ``__init__``, before any of those modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable

from verifier.errors import ModelLoadError

# Each torchvision.ops function onnx2torch binds at import, and the ONNX operator whose module calls it.
_USERS = {"nms": "NonMaxSuppression", "box_convert": "NonMaxSuppression", "roi_align": "RoiAlign"}


def _torchvision_installed() -> bool:
    """Whether ``import torchvision`` finds a package (an installed but broken one fails loudly here)."""
    try:
        import torchvision  # noqa: F401  (onnx2torch imports it next anyway)
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise  # torchvision is there but misses a module of its own: a broken install, not an absent one
        return False
    return True


def _unavailable(function: str, operator: str) -> Callable:
    def stand_in(*args, **kwargs):
        raise ModelLoadError(
            f"ONNX {operator} runs torchvision.ops.{function}, and torchvision is not installed "
            "(install the torchvision release built for the installed torch)"
        )

    stand_in.__name__ = stand_in.__qualname__ = function
    return stand_in


def _stand_ins() -> dict[str, types.ModuleType]:
    """The stand-in ``torchvision`` and ``torchvision.ops`` modules, by name."""
    doc = f"Stand-in: torchvision is not installed (see {__name__})."
    package = types.ModuleType("torchvision", doc)
    ops = types.ModuleType("torchvision.ops", doc)
    for function, operator in _USERS.items():
        setattr(ops, function, _unavailable(function, operator))
    package.ops = ops
    return {"torchvision": package, "torchvision.ops": ops}


class _StandInLoader(importlib.abc.Loader):
    """Executes the onnx2torch package with the stand-in importable, through the package's own loader."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # reloads and resources see the real one
        stand_ins = _stand_ins()
        sys.modules.update(stand_ins)
        try:
            self.loader.exec_module(module)
        finally:
            for name, stand_in in stand_ins.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]


class _Onnx2torchFinder(importlib.abc.MetaPathFinder):
    """Finds onnx2torch as the path finder does, with the stand-in loader when torchvision is absent."""

    def find_spec(self, name, path=None, target=None):
        if name != "onnx2torch" or _torchvision_installed():
            return None  # the usual finders take it
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _StandInLoader(spec.loader)
        return spec


sys.meta_path.insert(0, _Onnx2torchFinder())

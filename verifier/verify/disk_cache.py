"""A disk cache of loaded models: the translated graph and the onnxruntime signature of an ONNX file.

Loading a file anew imports onnx, onnx2torch (with torchvision) and onnxruntime, converts and translates
the graph: seconds before any work. A cached entry is read in milliseconds and needs none of those
imports until a candidate counterexample has to be checked on the file.

* Where: ``$VERIFIER_CACHE_DIR``, else ``$XDG_CACHE_HOME/verifier``, else ``~/.cache/verifier``.
* Key: SHA-256 of the file's bytes, of this package's version and source code (a changed operator or
  translation makes every entry a miss) and of torch's version.
* Trust: an entry is written only for a model whose graph reproduces onnxruntime's outputs on the file
  at a fixed random input (the loader's own tolerance, ``verifier.api.reproduces``), and it keeps that
  input and those outputs. It is used only when intact and in its place (it starts with the SHA-256 of
  its key and the rest, so a damaged entry or one of another file fails) and when its graph, once
  unpickled, still reproduces the stored outputs. Anything else (missing, truncated, corrupted, stale,
  unreadable) is a miss: the model is loaded afresh and the entry rewritten.
* Concurrency: an entry is written to a temporary file in the same folder and renamed into place
  (atomic on POSIX), so concurrent readers and writers only ever see whole entries.

Entries are pickles: the cache folder must be as trusted as the code itself (it is the user's own).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

import verifier
from verifier.api import BoundedModel, reproduces
from verifier.verify.onnx_check import OnnxChecker

ENV_DIR = "VERIFIER_CACHE_DIR"
_DIGEST = hashlib.sha256().digest_size
_SEED = 0


def cache_dir() -> Path:
    """The folder of the cache (not created here)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "verifier"


def cached_model(onnx_path: str | Path) -> tuple[OnnxChecker, BoundedModel]:
    """The checker and engine model (CPU, float32) of an ONNX file, from the cache when a trusted entry
    exists (module docstring), else loaded by ``verifier.load`` and ``OnnxChecker`` and then stored.

    Raises what those raise for an unusable file.
    """
    path = Path(onnx_path)
    try:
        key = _key(path.read_bytes())
    except OSError:  # unreadable: the loader reports it, naming the file
        key = None
    entry = _read(key) if key else None
    if entry is not None:
        model = BoundedModel(entry["graph"], str(path))
        if _agrees(model, entry["x"], entry["y"]):
            return OnnxChecker(str(path), entry["signature"]), model
    model = verifier.load(str(path))
    checker = OnnxChecker(str(path))
    if key:
        _store(key, model, checker)
    return checker, model


def _key(content: bytes) -> str:
    digest = hashlib.sha256(content)
    digest.update(_code_version().encode())
    return digest.hexdigest()


@functools.cache
def _code_version() -> str:
    """This package's version, a digest of its source files, and torch's version."""
    digest = hashlib.sha256()
    package = Path(verifier.__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return f"{verifier.__version__}:{digest.hexdigest()}:{torch.__version__}"


def _entry_path(key: str) -> Path:
    return cache_dir() / "models" / f"{key}.pickle"


def _read(key: str) -> dict | None:
    try:
        data = _entry_path(key).read_bytes()
    except OSError:
        return None
    stored, payload = data[:_DIGEST], data[_DIGEST:]
    if _seal(key, payload) != stored:
        return None
    try:
        entry = pickle.loads(payload)
    except Exception:  # noqa: BLE001 (an entry of an older layout, or damaged: a miss)
        return None
    return entry if isinstance(entry, dict) and {"graph", "signature", "x", "y"} <= entry.keys() else None


def _seal(key: str, payload: bytes) -> bytes:
    """The digest an entry starts with: of its key and its payload."""
    return hashlib.sha256(key.encode() + payload).digest()


def _agrees(model: BoundedModel, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``model`` at the flat input ``x`` gives onnxruntime's outputs ``y`` (``reproduces``)."""
    try:
        with torch.no_grad():
            got = model(torch.from_numpy(x).reshape(1, *model.input_shape)).reshape(-1)
    except Exception:  # noqa: BLE001 (a graph that cannot even run is no graph of this file)
        return False
    return reproduces(got, torch.from_numpy(y).to(got.dtype))


def _store(key: str, model: BoundedModel, checker: OnnxChecker) -> None:
    """Write the entry if the model reproduces onnxruntime on a random input; silently skip on failure
    (the cache only saves time: a read-only or full disk must not fail a run)."""
    x = np.random.default_rng(_SEED).standard_normal(checker.n_inputs).astype(checker.dtype)
    y = checker.run(x)
    if not (np.all(np.isfinite(y)) and _agrees(model, x, y)):
        return
    temporary = None
    try:
        payload = pickle.dumps({"graph": model.graph, "signature": checker.signature, "x": x, "y": y})
        folder = _entry_path(key).parent
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as handle:
            temporary = Path(handle.name)
            handle.write(_seal(key, payload) + payload)
        temporary.replace(_entry_path(key))
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)  # renamed already, unless writing failed

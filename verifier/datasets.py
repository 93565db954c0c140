"""Readers for the datasets shipped beside the project (IDX files, as MNIST and Fashion-MNIST use).
Nothing is downloaded: the files must already be on disk."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from verifier.errors import VerifierError


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (optionally gzipped): magic 0x00 0x00 type ndim, big-endian dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise VerifierError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise VerifierError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise VerifierError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def read_mnist(root: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] of shape [n, 28, 28] and labels [n] from an MNIST-layout folder."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels

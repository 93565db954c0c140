"""The disk cache of loaded models: hits skip loading, changed files miss, damaged or foreign entries are
never trusted, and nothing is written outside the folder the environment names."""

from __future__ import annotations

import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch

import verifier
from tests.verify.paths import TEST_SAT, TEST_UNSAT
from verifier.verify import disk_cache
from verifier.verify.disk_cache import cached_model
from verifier.verify.onnx_check import OnnxChecker


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(disk_cache.ENV_DIR, str(folder))
    return folder


@pytest.fixture
def loads(monkeypatch):
    """Counts the fresh loads (cache misses)."""
    calls = []
    original = verifier.load

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(verifier, "load", counting)
    return calls


def _entries(folder):
    return sorted((folder / "models").glob("*.pickle"))


def _agrees_with_onnxruntime(checker, model, path, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, checker.n_inputs).astype(np.float32)
    expected = OnnxChecker(str(path)).run(x)
    got = model(torch.from_numpy(x).reshape(1, *model.input_shape)).reshape(-1).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_hit_skips_loading_and_onnxruntime(cache, loads):
    cached_model(TEST_SAT[0])
    assert len(loads) == 1 and len(_entries(cache)) == 1
    checker, model = cached_model(TEST_SAT[0])
    assert len(loads) == 1  # no second load
    assert checker._session is None  # onnxruntime waits for a candidate counterexample
    assert (checker.n_inputs, checker.n_outputs, checker.input_type) == (5, 5, "float32")
    _agrees_with_onnxruntime(checker, model, TEST_SAT[0])


def test_a_changed_file_misses(cache, loads, tmp_path):
    path = tmp_path / "net.onnx"
    shutil.copy(TEST_SAT[0], path)
    cached_model(path)
    shutil.copy(TEST_UNSAT[0], path)  # same shapes, other weights
    checker, model = cached_model(path)
    assert len(loads) == 2 and len(_entries(cache)) == 2
    _agrees_with_onnxruntime(checker, model, path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(cache, loads, damage):
    cached_model(TEST_SAT[0])
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes({"flip": bytes(data), "truncate": bytes(data[: len(data) // 2]), "empty": b""}[damage])
    checker, model = cached_model(TEST_SAT[0])
    assert len(loads) == 2
    _agrees_with_onnxruntime(checker, model, TEST_SAT[0])
    cached_model(TEST_SAT[0])  # the rewritten entry is whole again: a hit
    assert len(loads) == 2


def test_an_intact_entry_of_another_model_is_not_trusted(cache, loads):
    cached_model(TEST_SAT[0])
    (sat_entry,) = _entries(cache)
    cached_model(TEST_UNSAT[0])
    (unsat_entry,) = [e for e in _entries(cache) if e != sat_entry]
    shutil.copy(unsat_entry, sat_entry)  # a whole, valid entry under the wrong key
    checker, model = cached_model(TEST_SAT[0])
    assert len(loads) == 3  # its seal binds it to the other file's key: loaded afresh
    _agrees_with_onnxruntime(checker, model, TEST_SAT[0])


def test_the_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(disk_cache.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert disk_cache.cache_dir() == tmp_path / "xdg" / "verifier"
    monkeypatch.setenv(disk_cache.ENV_DIR, str(tmp_path / "own"))
    assert disk_cache.cache_dir() == tmp_path / "own"


def test_an_entry_whose_graph_misses_its_stored_outputs_is_not_trusted(cache, loads):
    cached_model(TEST_SAT[0])
    (entry,) = _entries(cache)
    content = pickle.loads(entry.read_bytes()[hashlib.sha256().digest_size :])
    content["y"] = content["y"] + 1.0  # as if the graph had been translated differently
    payload = pickle.dumps(content)
    entry.write_bytes(disk_cache._seal(entry.stem, payload) + payload)
    cached_model(TEST_SAT[0])
    assert len(loads) == 2

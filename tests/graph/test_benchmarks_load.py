"""Every ONNX model of the shared VNN-COMP benchmarks loads and reproduces onnxruntime; a few small ones
(at most 8 inputs) also get sound bounds from every method around random points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from graph_testing import OnnxRunner, assert_sound

import verifier

BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
if not BENCHMARKS.is_dir():
    pytest.skip(f"{BENCHMARKS} not present", allow_module_level=True)

MODELS = sorted(BENCHMARKS.rglob("*.onnx"))
SMALL_INPUT = 8


@pytest.fixture(scope="module")
def loaded():
    cache: dict[Path, tuple[verifier.BoundedModel, OnnxRunner]] = {}

    def get(path: Path):
        if path not in cache:
            model = verifier.load(path)
            cache[path] = model, OnnxRunner(path, batched=model.has_batch_dim)
        return cache[path]

    return get


def _id(path: Path) -> str:
    return str(path.relative_to(BENCHMARKS))


def test_benchmarks_are_found():
    assert len(MODELS) >= 20, MODELS


@pytest.mark.parametrize("path", MODELS, ids=_id)
def test_loads_and_matches_onnxruntime(path, loaded):
    model, runner = loaded(path)
    dims = [d if isinstance(d, int) else 1 for d in runner.session.get_inputs()[0].shape]
    assert tuple(dims[1:] if model.has_batch_dim else dims) == model.input_shape
    assert model.has_batch_dim == (len(dims) >= 2)
    gen = torch.Generator().manual_seed(0)
    shape = (3, *model.input_shape)
    for x in (torch.rand(shape, generator=gen), torch.randn(shape, generator=gen), torch.zeros(shape)):
        want = runner(x).reshape(3, *model.output_shape).numpy()
        got = model(x).numpy()
        # float32 through up to 10 layers: onnxruntime's own rounding differs by a few 1e-5 (acasxu 4_5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + np.abs(want).max()))


def _input_size(path: Path) -> int:
    """Per-sample input size from the declared input dims (symbolic ones count as 1)."""
    graph = onnx.load(path).graph
    initializers = {t.name for t in graph.initializer}
    data = next(i for i in graph.input if i.name not in initializers)
    return int(np.prod([d.dim_value or 1 for d in data.type.tensor_type.shape.dim]))


def _small_models() -> list[Path]:
    """One model per benchmark folder and input size, among those with at most SMALL_INPUT inputs."""
    chosen: dict[tuple[Path, int], Path] = {}
    for path in MODELS:
        size = _input_size(path)
        if size <= SMALL_INPUT:
            chosen.setdefault((path.parent, size), path)
    return list(chosen.values())


SMALL = _small_models()


@pytest.mark.parametrize("path", SMALL, ids=_id)
def test_small_models_have_sound_bounds(path, loaded):
    model, runner = loaded(path)
    gen = torch.Generator().manual_seed(1)
    centre = torch.rand(2, *model.input_shape, generator=gen)
    radius = 0.05 * torch.rand(centre.shape, generator=gen)
    assert_sound(model, verifier.Box(centre - radius, centre + radius), runner, n=100)

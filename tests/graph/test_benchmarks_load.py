"""Every ONNX model of the shared VNN-COMP benchmarks (and of benchmarks-extra: the vision transformers)
loads and reproduces onnxruntime; a few small ones (at most 8 inputs) also get sound bounds from every
method around random points, and the transformers IBP and CROWN bounds on their properties' input boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from graph_testing import OnnxRunner, assert_sound, box_points

import verifier
from tests.helpers import DEEP_FLOAT32, worst_miss

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BENCHMARKS, EXTRA = SHARED / "benchmarks", SHARED / "benchmarks-extra"
if not BENCHMARKS.is_dir():
    pytest.skip(f"{BENCHMARKS} not present", allow_module_level=True)

MODELS = sorted(BENCHMARKS.rglob("*.onnx")) + sorted(EXTRA.rglob("*.onnx"))
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
    return str(path.relative_to(SHARED))


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


VIT = EXTRA / "vit"
VIT_CASES = [
    ("pgd_2_3_16", "pgd_2_3_16_7732"),
    pytest.param("ibp_3_3_8", "ibp_3_3_8_4879", marks=pytest.mark.slow),
]


@pytest.mark.skipif(not VIT.is_dir(), reason=f"{VIT} not present")
@pytest.mark.parametrize(("net", "prop"), VIT_CASES)
def test_vision_transformers_have_sound_bounds_on_their_property_boxes(net, prop, loaded):
    """Attention (Softmax, products of two tensors), BatchNorm, residual sums: IBP and CROWN contain
    onnxruntime's outputs at sampled points of a real VNN-COMP input box, CROWN far tighter than IBP."""
    from verifier.spec.vnnlib import load_property

    model, runner = loaded(VIT / "onnx" / f"{net}.onnx")
    case = load_property(VIT / "vnnlib" / f"{prop}.vnnlib").cases[0]
    shape = (1, *model.input_shape)
    box = verifier.Box(
        torch.from_numpy(case.lower).float().reshape(shape),
        torch.from_numpy(case.upper).float().reshape(shape),
    )
    points = box_points(box.lower, box.upper, 40, torch.Generator().manual_seed(0))
    ys = runner(points.flatten(0, 1)).reshape(points.shape[0], 1, *model.output_shape)
    widths = {}
    for method in ("ibp", "crown"):
        lower, upper = model.bounds(box, method=method)
        assert worst_miss(ys, lower, upper, DEEP_FLOAT32) <= 0, method
        widths[method] = (upper - lower).mean().item()
    assert widths["crown"] < widths["ibp"] / 5, widths

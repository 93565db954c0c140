"""CROWN on receptive-field windows (``engine/patches.py``) against the dense backward pass: the same bounds on
random convolution geometries (stride, padding, dilation, groups), and sound on samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_inside, samples
from verifier.engine import bounds, patches
from verifier.engine.state import BoundConfig, BoundState
from verifier.graph.graph import Graph, Node
from verifier.ops.activations import ReLU, SShaped
from verifier.ops.conv import Conv
from verifier.spec.regions import Box

# (channels, kernel, stride, padding, dilation, groups) per convolution; "relu" / "sigmoid" between
GEOMETRIES = {
    "plain": [(4, 3, 1, 0, 1, 1), "relu", (4, 3, 1, 0, 1, 1), "relu"],
    "strided": [(6, 4, 2, 1, 1, 1), "relu", (4, 4, 2, 1, 1, 1), "relu"],
    "dilated_padded": [(4, 3, 1, 2, 2, 1), "relu", (6, 3, 2, 1, 1, 1), "relu"],
    "grouped": [(4, 3, 1, 1, 1, 2), "relu", (6, 3, 1, 1, 1, 2), "relu"],
    "conv_conv": [(4, 3, 2, 1, 1, 1), (4, 3, 1, 2, 1, 2), "relu", (4, 2, 1, 1, 2, 1), "relu"],
    "sigmoid": [(4, 3, 1, 1, 1, 1), "sigmoid", (4, 3, 2, 1, 1, 1), "relu"],
    "uneven": [(4, (3, 2), (2, 1), (1, 0), (1, 2), 1), "relu", (4, (2, 3), (1, 2), (0, 1), 1, 1), "relu"],
}


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _graph(layers, in_shape=(2, 11, 12), seed=0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    nodes, shape = [Node("input", None, (), in_shape)], in_shape
    for layer in layers:
        if isinstance(layer, str):
            op = ReLU() if layer == "relu" else SShaped("sigmoid")
        else:
            c, k, s, p, d, g = layer
            weight = torch.randn(c, shape[0] // g, *_pair(k), generator=gen) / 3
            op = Conv(weight, torch.randn(c, generator=gen) / 3, _pair(s), _pair(p), _pair(d), g)
            shape = tuple(op.forward(torch.zeros(1, *shape)).shape[1:])
        nodes.append(Node(f"n{len(nodes)}", op, (len(nodes) - 1,), shape))
    return Graph(tuple(nodes), len(nodes) - 1)


def _intermediate(graph, box, dense: bool, monkeypatch) -> BoundState:
    with monkeypatch.context() as m:
        if dense:
            m.setattr(patches, "plan", lambda state, k: None)
        state = BoundState(graph, box, BoundConfig(method="crown", max_elements=2**10))
        bounds.intermediate_bounds(state)
    return state


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_windows_give_the_dense_bounds_and_contain_samples(name, monkeypatch):
    graph = _graph(GEOMETRIES[name])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, *graph.input_shape, generator=gen)
    box = Box(x - 0.4, x + 0.4)
    used = []
    plan = patches.plan
    monkeypatch.setattr(patches, "plan", lambda state, k: used.append(k) or plan(state, k))
    fast = _intermediate(graph, box, False, monkeypatch)
    assert any(plan(fast, k) is not None for k in used), "no node took the window path"
    dense = _intermediate(graph, box, True, monkeypatch)
    pts = samples(box.lower, box.upper, 200, torch.Generator().manual_seed(2))
    for k in sorted(graph.needs_bounds()):
        for a, b in zip(fast.bounds[k], dense.bounds[k]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        z = (
            Graph(graph.nodes[: k + 1], k)
            .forward(pts.flatten(0, 1))
            .reshape(pts.shape[0], *fast.bounds[k][0].shape)
        )
        assert_inside(z, *fast.bounds[k], f"node {k}")


@pytest.mark.parametrize("seed", range(12))
def test_window_map_is_the_dense_transpose_on_the_window(seed):
    """A window of output coefficients at origin o, mapped by ``window_map`` and placed at ``s o - p``,
    equals ``Conv.transpose`` of the window laid out on the whole output, where it lands inside the input;
    nothing of the dense transpose lies outside the window."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda *vals: vals[int(torch.randint(len(vals), (1,), generator=gen))]
    g = pick(1, 2)
    k, s, p, d = (
        (pick(1, 2, 3), pick(1, 3)),
        (pick(1, 2, 3), pick(1, 2)),
        (pick(0, 1, 2), pick(0, 1)),
        (pick(1, 2), 1),
    )
    op = Conv(torch.randn(2 * g, 2, *k, generator=gen, dtype=torch.float64), None, s, p, d, g)
    in_shape = (2 * g, 9, 10)
    out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    size = (min(pick(1, 2, 3), out_shape[1]), min(pick(1, 2), out_shape[2]))
    origin = [int(torch.randint(n - m + 1, (1,), generator=gen)) for n, m in zip(out_shape[1:], size)]
    window = torch.randn(1, out_shape[0], *size, generator=gen, dtype=torch.float64)
    full = torch.zeros(1, *out_shape, dtype=torch.float64)
    full[:, :, origin[0] : origin[0] + size[0], origin[1] : origin[1] + size[1]] = window
    dense = op.transpose(0, full, in_shape)
    new = op.window(size)
    mapped = (window.flatten(1) @ op.window_map(size)).reshape(1, in_shape[0], *new)
    margin = 20  # the input, padded so that the window at s o - p lies inside
    top, left = (o * st - pd + margin for o, st, pd in zip(origin, s, p))
    crop = lambda t: F.pad(t, (margin,) * 4)[:, :, top : top + new[0], left : left + new[1]]
    mask = crop(torch.ones(1, 1, *in_shape[1:], dtype=torch.float64))
    torch.testing.assert_close(mapped * mask, crop(dense))
    torch.testing.assert_close(crop(dense).abs().sum(), dense.abs().sum())

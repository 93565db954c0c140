"""The rules of GELU / SiLU, odd powers across 0, the step functions and Max / Min, beyond the generic
soundness table: where their lines touch, the constants they rest on, and their torch spellings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import verifier
from tests.helpers import assert_inside, samples
from verifier.ops.base import RelaxConfig
from verifier.ops.elementwise import Power
from verifier.ops.smooth import GELU, SiLU
from verifier.ops.steps import Step

f64 = lambda *v: torch.tensor([v], dtype=torch.float64)


@pytest.mark.parametrize("op", [GELU(), GELU("tanh"), SiLU()], ids=["gelu", "gelu_tanh", "silu"])
def test_inflection_points_are_where_the_second_derivative_changes_sign(op):
    d2 = torch.func.vmap(torch.func.grad(op._df))
    for b in op._breaks:
        near = torch.tensor([b - 1e-6, b + 1e-6], dtype=torch.float64)
        assert d2(near)[0] * d2(near)[1] < 0
    far = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    values = d2(far)
    assert ((values[1:] > 0) != (values[:-1] > 0)).sum() == len(op._breaks)  # no other inflection
    assert op._df(far).abs().max() <= op._slope_bound  # the rounding rule's bound on |f'|


def test_gelu_ibp_is_exact_at_its_minimum():
    lo, hi = GELU().ibp((f64(-2.0), f64(0.5)))
    x = torch.linspace(-0.8, -0.7, 100001, dtype=torch.float64)
    true_min = GELU()._f(x).min()
    assert true_min - 1e-12 <= lo.item() <= true_min
    assert hi.item() == pytest.approx(GELU()._f(f64(0.5)).item())


@pytest.mark.parametrize("op", [GELU(), SiLU(), Power(3.0)], ids=["gelu", "silu", "cube"])
def test_lines_across_an_inflection_touch_the_function(op):
    lo, hi = f64(-1.0, -3.0, -4.0), f64(2.5, 1.0, 4.0)
    rel = op.relax(lo, hi, RelaxConfig())
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None] * (hi - lo) + lo
    y = op._f(x)
    gap_up = (rel.a_up * x + rel.b_up - y).min(0).values
    gap_lo = (y - rel.a_lo * x - rel.b_lo).min(0).values
    assert (gap_up >= -1e-12).all() and (gap_lo >= -1e-12).all()
    assert (gap_up < 1e-6).all() and (gap_lo < 1e-6).all(), "lines should touch the function"


def test_cube_across_zero_uses_the_tangent_through_the_far_end():
    rel = Power(3.0).relax(f64(-1.0), f64(1.0), RelaxConfig())  # tangent at -1/2 through (1, 1), and mirror
    for line, value in ((rel.a_up, 0.75), (rel.b_up, 0.25), (rel.a_lo, 0.75), (rel.b_lo, -0.25)):
        torch.testing.assert_close(line, f64(value))
    chord = Power(3.0).relax(f64(-0.2), f64(1.0), RelaxConfig())  # -0.2 > -1/2: the chord above
    torch.testing.assert_close(chord.a_up, f64(1.008 / 1.2))


@pytest.mark.parametrize(
    ("kind", "lo", "hi", "gap"),
    [("floor", 0.9, 1.1, 1.0), ("floor", 0.99, 2.01, 1.0), ("round", 0.2, 0.3, 0.0), ("sign", -0.5, 2.0, 2.0),
     ("ceil", 3.0, 3.0, 0.0), ("round", 2.5, 2.5, 0.0)],
)  # fmt: skip
def test_step_lines_leave_one_jump_between_them(kind, lo, hi, gap):
    rel = Step(kind).relax(f64(lo), f64(hi), RelaxConfig())
    torch.testing.assert_close(rel.a_lo, rel.a_up)
    assert (rel.b_up - rel.b_lo).item() == pytest.approx(gap, abs=1e-9)


class _Everything(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
        self.gelu_tanh, self.silu = nn.GELU("tanh"), nn.SiLU()

    def forward(self, x):
        h, g = self.a(x), self.b(x)
        parts = [torch.maximum(h, g), torch.min(h, g), torch.max(h, 1)[0][:, None], h.max(1).values[:, None],
                 h.amin(1, keepdim=True), torch.maximum(h, torch.tensor(0.3)), torch.min(g, torch.full((6,), -0.2)),
                 nn.functional.gelu(h), self.gelu_tanh(g), self.silu(g), torch.floor(3 * h), torch.sign(g),
                 torch.round(3 * h), torch.ceil(g), h**3, torch.amax(h.reshape(-1, 2, 3), dim=(1, 2))[:, None], torch.amin(g.reshape(-1, 2, 3), -1)]  # fmt: skip
        return torch.cat(parts, 1)


@pytest.mark.parametrize("method", ["ibp", "crown", "lbp", "alpha-crown"])
def test_torch_spellings_load_and_bound_soundly(method):
    torch.manual_seed(0)
    module, x = _Everything().eval(), torch.randn(2, 4)
    model = verifier.load(module, x)
    torch.testing.assert_close(model(x), module(x))
    box = verifier.Box(x - 0.3, x + 0.3)
    b = model.bounds(box, method=method)
    pts = samples(box.lower, box.upper, 500, torch.Generator().manual_seed(1))
    y = module(pts.flatten(0, 1)).reshape(pts.shape[0], 2, -1)
    assert_inside(y, b.lower, b.upper, method)


def test_argmax_indices_are_refused_by_name():
    class Indices(nn.Module):
        def forward(self, x):
            return x.max(1).indices.float()

    with pytest.raises(verifier.UnsupportedOperatorError, match="indices"):
        verifier.load(Indices(), torch.zeros(1, 3))


@pytest.mark.parametrize(
    "act", [nn.GELU(), nn.GELU("tanh"), nn.SiLU(), None], ids=["gelu", "tanh", "silu", "cube"]
)
def test_crown_not_looser_than_ibp_on_small_boxes(act):
    torch.manual_seed(2)
    lin1, lin2 = nn.Linear(4, 8), nn.Linear(8, 3)
    module = nn.Sequential(lin1, act if act is not None else _Cube(), lin2).eval()
    x = 2 * torch.randn(5, 4)
    model = verifier.load(module, x)
    box = verifier.Box(x - 0.005, x + 0.005)
    ibp, crown = model.bounds(box, method="ibp"), model.bounds(box, method="crown")
    assert (crown.lower >= ibp.lower - 1e-5).all() and (crown.upper <= ibp.upper + 1e-5).all()
    assert (crown.upper - crown.lower).sum() < (ibp.upper - ibp.lower).sum()


class _Cube(nn.Module):
    def forward(self, x):
        return x**3


def test_dedicated_gelu_is_tighter_than_the_exported_erf_product(tmp_path):
    """torch's opset-17 export spells GELU ``x * 0.5 * (1 + erf(x / sqrt 2))``, which loads as a product of
    a tensor with a function of itself (McCormick loses the correlation); the dedicated rule is tighter."""
    from tests.graph.graph_testing import Net

    n = Net([1, 4], seed=3)
    h = n.gemm("x", 4, 8)
    erf = n.op("Erf", n.op("Div", h, n.const(math.sqrt(2.0))))
    gelu = n.op("Mul", n.op("Mul", h, n.op("Add", erf, n.const(1.0))), n.const(0.5))
    n_dedicated = Net([1, 4], seed=3)
    dedicated = n_dedicated.op("Gelu", n_dedicated.gemm("x", 4, 8))
    paths = []
    for net, out, opset in ((n, gelu, 17), (n_dedicated, dedicated, 20)):
        import onnx

        paths.append(tmp_path / f"gelu{opset}.onnx")
        onnx.save(net.model(net.gemm(out, 8, 3), opset=opset), paths[-1])
    spelled, direct = (verifier.load(p) for p in paths)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spelled(x), direct(x), rtol=1e-5, atol=1e-6)
    box = verifier.Box(x - 0.5, x + 0.5)
    for method in ("ibp", "crown"):
        a, b = spelled.bounds(box, method=method), direct.bounds(box, method=method)
        assert (b.upper - b.lower).sum() < (a.upper - a.lower).sum(), method

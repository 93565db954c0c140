"""verifier.nn.ParamRamp: the function it computes, its bounds' gradient with respect to the breakpoint, and
the ONNX round trip (export, load, same outputs, sound bounds)."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import verifier
from tests.helpers import assert_inside, samples
from verifier.nn import MIN_BREAKPOINT, ParamRamp
from verifier.ops.activations import Ramp


def _reference(x, r, eta):
    """The definition, piece by piece (r broadcast against x)."""
    return torch.where(x < 0, eta * x, torch.where(x <= r, x, r + eta * (x - r)))


@pytest.mark.parametrize("eta", [0.0, 0.05])
def test_param_ramp_is_the_piecewise_function(eta):
    gen = torch.Generator().manual_seed(0)
    features = ParamRamp(4, init=0.7, eta=eta)
    channels = ParamRamp(3, eta=eta)
    neurons = ParamRamp((3, 2), eta=eta, channel_dim=None)
    with torch.no_grad():
        for m in (features, channels, neurons):
            m.r.uniform_(0.1, 2.0, generator=gen)
        features.r[0] = -1.0  # below the minimum: the breakpoint used is MIN_BREAKPOINT
    x = 3 * torch.randn(5, 4, generator=gen)
    r = features.r.detach().clamp(min=MIN_BREAKPOINT)
    torch.testing.assert_close(features(x), _reference(x, r, eta))
    x = 3 * torch.randn(5, 3, 2, 2, generator=gen)
    torch.testing.assert_close(channels(x), _reference(x, channels.r.detach()[:, None, None], eta))
    x = 3 * torch.randn(5, 3, 2, generator=gen)
    torch.testing.assert_close(neurons(x), _reference(x, neurons.r.detach(), eta))


@pytest.mark.parametrize("kwargs", [{"eta": 1.0}, {"eta": -0.1}, {"init": 0.0}])
def test_param_ramp_refuses_a_slope_outside_0_1_and_a_breakpoint_not_positive(kwargs):
    with pytest.raises(ValueError):
        ParamRamp(3, **kwargs)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), ParamRamp(6, init=0.5, eta=0.1), nn.Linear(6, 2))


def test_crown_bound_is_differentiable_in_the_breakpoint():
    """Bounds of a loaded model differentiate with respect to the Ramp operator's breakpoint."""
    x = torch.randn(2, 3)
    model = verifier.load(_mlp(), x)
    (ramp,) = [node.op for node in model.graph.nodes if isinstance(node.op, Ramp)]
    ramp.breakpoint.requires_grad_(True)
    for method in ("crown", "crown-ibp", "crown-lbp"):
        lower, _ = model.bounds(verifier.LinfBall(x, eps=0.5), method=method, grad=True)
        (grad,) = torch.autograd.grad(lower.sum(), ramp.breakpoint)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, method


def test_a_live_graph_differentiates_the_module_breakpoint_and_follows_it():
    """Loaded live, the Ramp operator holds the module's own parameter: the bound's gradient reaches
    ``module.r`` and equals central differences, which also show that the bound follows the parameter
    when it moves."""
    module, x = _mlp(), torch.randn(2, 3, dtype=torch.float64)
    model = verifier.load(module, x, live=True).to(dtype=torch.float64)  # moves the module too
    region, r = verifier.LinfBall(x, eps=0.5), module[1].r
    lower = model.bounds(region, method="crown", grad=True).lower.sum()
    (grad,) = torch.autograd.grad(lower, r)
    step, differences = 1e-6, []
    for i in range(r.numel()):
        moved = []
        for sign in (1, -1):
            with torch.no_grad():
                r[i] += sign * step
                moved.append(model.bounds(region, method="crown").lower.sum())
                r[i] -= sign * step
        differences.append((moved[0] - moved[1]) / (2 * step))
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, torch.stack(differences), rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter (no onnxscript here)
def test_onnx_round_trip(tmp_path):
    """Exported to ONNX, a ParamRamp model uses only operators the loader supports; loaded back it computes
    the module's outputs and its bounds (of the ReLU composition) contain them. The module's own rule is
    tighter: IBP through a monotone function beats IBP through its composition."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(2, 3, 3), ParamRamp(3, init=0.4, eta=0.05), nn.Flatten(), nn.Linear(48, 5), ParamRamp(5)
    ).eval()
    with torch.no_grad():
        module[1].r[1] = -1.0  # below the minimum: exported as the breakpoint in use
    x = torch.randn(3, 2, 6, 6)
    path = tmp_path / "ramp.onnx"
    torch.onnx.export(module, (x,), str(path), opset_version=13, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    kinds = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert kinds <= set(verifier.supported_onnx_operators()), kinds
    model = verifier.load(path)
    with torch.no_grad():
        expected = module(x)
        torch.testing.assert_close(model(x), expected)
    (onnxruntime_out,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnxruntime_out), expected, rtol=1e-5, atol=1e-5)

    box = verifier.Box(x - 0.2, x + 0.2)
    points = samples(box.lower, box.upper, 200, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ys = module(points.flatten(0, 1)).reshape(points.shape[0], *expected.shape)
        for method in verifier.METHODS:
            assert_inside(ys, *model.bounds(box, method=method), f"ONNX-loaded ParamRamp {method}")
        composed = model.bounds(box, method="ibp")
        own = verifier.load(module, x).bounds(box, method="ibp")
    assert (own.lower >= composed.lower - 1e-6).all() and (own.upper <= composed.upper + 1e-6).all()

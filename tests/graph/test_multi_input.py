"""Models with several inputs: the engine's input is their row-major flat concatenation (the VNN-LIB
convention), each input a range of it. Loaded through torch.fx and through ONNX, they must compute what
torch and onnxruntime compute, on the flat tensor and on the tuple of inputs alike, and every method's
bounds over a box on all inputs must contain sampled outputs, CROWN no looser than IBP."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from graph_testing import assert_sound
from multi_input_models import MODULES, export
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

import verifier
from verifier import ModelLoadError


class Runner:
    """onnxruntime on a file with several inputs, fed the flat engine input cut into the declared inputs."""

    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()

    def __call__(self, flat: Tensor) -> Tensor:
        """[K, n] -> [K, *output_shape] (symbolic dimensions fed as the batch)."""
        values = flat.detach().to(torch.float32).numpy()
        feed, start = {}, 0
        for value in self.inputs:
            shape = [d if isinstance(d, int) else len(values) for d in value.shape]
            size = int(np.prod(shape)) // len(values)
            feed[value.name] = np.ascontiguousarray(values[:, start : start + size].reshape(shape))
            start += size
        return torch.from_numpy(self.session.run(None, feed)[0])


@pytest.fixture(params=sorted(MODULES))
def case(request, tmp_path):
    """(module, per-input shapes, model loaded through torch.fx, model loaded from its ONNX export)."""
    torch.manual_seed(3)
    kind, shapes = MODULES[request.param]
    module = kind().eval()
    examples = tuple(torch.randn(2, *s) for s in shapes)
    from_fx = verifier.load(module, examples)
    from_onnx = verifier.load(export(module, shapes, tmp_path / "model.onnx"))
    return module, shapes, from_fx, from_onnx, str(tmp_path / "model.onnx")


def test_inputs_are_recorded_in_order_and_the_engine_input_is_flat(case):
    _, shapes, from_fx, from_onnx, _ = case
    n = sum(int(np.prod(s)) for s in shapes)
    for model in (from_fx, from_onnx):
        assert model.input_shapes == tuple(shapes) and model.input_shape == (n,)
    assert [name for name, _ in from_onnx.graph.inputs] == ["in0", "in1"]


def test_forward_matches_torch_and_onnxruntime_on_the_tuple_and_the_flat_input(case):
    module, shapes, from_fx, from_onnx, path = case
    xs = tuple(torch.randn(5, *s) for s in shapes)
    flat = from_fx.join_inputs(xs)
    assert flat.shape == (5, from_fx.input_shape[0])
    assert torch.equal(flat[:, : xs[0][0].numel()], xs[0].flatten(1))  # row-major, first input first
    for a, b in zip(from_fx.split_input(flat), xs):
        assert torch.equal(a, b)
    with torch.no_grad():
        expected = module(*xs)
        for model in (from_fx, from_onnx):
            torch.testing.assert_close(model(xs), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model(flat), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Runner(path)(flat), expected, rtol=1e-5, atol=1e-5)


def box_on_both_inputs(model: verifier.BoundedModel, shapes, radii=(0.2, 0.1)) -> verifier.Box:
    """A batch of two boxes, each input with its own radius, over the flat concatenation."""
    gen = torch.Generator().manual_seed(7)
    centres = [torch.randn(2, *s, generator=gen) for s in shapes]
    lower = model.join_inputs(tuple(c - r for c, r in zip(centres, radii)))
    upper = model.join_inputs(tuple(c + r for c, r in zip(centres, radii)))
    return verifier.Box(lower, upper)


def test_every_method_contains_sampled_outputs(case):
    module, shapes, from_fx, from_onnx, path = case
    box = box_on_both_inputs(from_fx, shapes)
    with torch.no_grad():
        assert_sound(from_fx, box, lambda flat: module(*from_fx.split_input(flat)))
    assert_sound(from_onnx, box, Runner(path))


def test_crown_is_no_looser_than_ibp_and_tighter_somewhere(case):
    _, shapes, from_fx, from_onnx, _ = case
    box = box_on_both_inputs(from_fx, shapes, radii=(0.5, 0.5))
    for model in (from_fx, from_onnx):
        ibp = model.bounds(box, method="ibp")
        crown = model.bounds(box, method="crown", relu_lower="zero")  # then provably no looser than IBP
        assert (crown.lower >= ibp.lower - 1e-5).all() and (crown.upper <= ibp.upper + 1e-5).all()
        assert ((crown.upper - crown.lower) < (ibp.upper - ibp.lower) - 1e-4).any()


def test_a_degenerate_box_bounds_the_point_exactly(case):
    module, shapes, from_fx, _, _ = case
    xs = tuple(torch.randn(1, *s) for s in shapes)
    flat = from_fx.join_inputs(xs)
    lower, upper = from_fx.bounds(verifier.Box(flat, flat), method="ibp")
    with torch.no_grad():
        torch.testing.assert_close(lower, module(*xs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(upper, module(*xs), rtol=1e-5, atol=1e-5)


def test_a_wrong_tuple_of_inputs_is_an_input_error(case):
    _, shapes, from_fx, _, _ = case
    with pytest.raises(verifier.InputError, match="input 1 has shape"):
        from_fx((torch.zeros(1, *shapes[0]), torch.zeros(1, 7)))
    with pytest.raises(verifier.InputError, match="3 input tensors"):
        from_fx(tuple(torch.zeros(1, *s) for s in [*shapes, (2,)]))


# ---------------------------------------------------------------------------------------------- ONNX files


def two_input_file(tmp_path, x_type=TensorProto.FLOAT, x_shape=(1, 4), y_shape=(1, 3)) -> str:
    """``relu(x W1 + y W2)`` built with onnx.helper, inputs ``x`` and ``y`` of the given types and shapes."""
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((n, 5)).astype(np.float32), k)
              for n, k in ((x_shape[-1], "w1"), (y_shape[-1], "w2")))  # fmt: skip
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="/mx"),
             helper.make_node("MatMul", ["y", "w2"], ["b"], name="/my"),
             helper.make_node("Add", ["a", "b"], ["s"], name="/add"),
             helper.make_node("Relu", ["s"], ["out"], name="/relu")]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", x_type, list(x_shape)),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))]  # fmt: skip
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "two", inputs, [out], [w1, w2]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    return str(path)


def test_an_integer_input_is_refused_naming_it(tmp_path):
    path = two_input_file(tmp_path, x_type=TensorProto.INT64)
    with pytest.raises(ModelLoadError, match="input 'x' has element type INT64"):
        verifier.load(path)


def test_inputs_with_and_without_a_batch_dimension(tmp_path):
    """x [1, 4] has a batch dimension, y [3] none: the model is taken to have none, each input whole."""
    path = two_input_file(tmp_path, y_shape=(3,))
    model = verifier.load(path)
    assert not model.has_batch_dim and model.input_shapes == ((1, 4), (3,))
    flat = torch.randn(6, 7)
    torch.testing.assert_close(model(flat), torch.stack([Runner(path)(row[None]) for row in flat]))
    lo, hi = flat - 0.3, flat + 0.3
    runner = Runner(path)
    assert_sound(model, verifier.Box(lo, hi), lambda xs: torch.stack([runner(row[None]) for row in xs]))


def test_a_model_with_both_inputs_batched_has_a_batch_dimension(tmp_path):
    model = verifier.load(two_input_file(tmp_path))
    assert model.has_batch_dim and model.input_shapes == ((4,), (3,)) and model.output_shape == (5,)


def test_a_live_model_with_two_inputs_follows_its_parameters():
    """``live=True``: the bounds of a two-input module follow an in-place change of its weights."""
    module = MODULES["two_vectors"][0]().eval()
    xs = (torch.randn(1, 4), torch.randn(1, 3))
    model = verifier.load(module, xs, live=True)
    flat = model.join_inputs(xs)
    with torch.no_grad():
        module.out.bias.add_(1.0)
        lower, _ = model.bounds(verifier.Box(flat, flat), method="crown")
        torch.testing.assert_close(lower, module(*xs), rtol=1e-5, atol=1e-5)

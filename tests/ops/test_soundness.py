"""The generic soundness test: every registered operator, on boxes of every kind, in float32 and float64.

For each case: IBP contains the true outputs at sampled points and corners; a nonlinear operator's
relaxation lines bracket it; an affine operator's backward rule satisfies the adjoint identity and its
absolute-value map is the entrywise absolute value of its matrix; and IBP, CROWN and LBP bounds of the
operator alone (run through the engine) contain the samples."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import BOX_KINDS, assert_inside, case_seed, joint_samples, make_box, samples
from tests.ops.cases import CASES
from verifier.api import BoundedModel
from verifier.engine.state import METHODS
from verifier.graph.graph import Graph, Node
from verifier.ops.base import OPS, Affine, Nonlinear, RelaxConfig
from verifier.ops.shape import Rearrange
from verifier.spec.regions import Box

DTYPES = (torch.float32, torch.float64)


def test_every_registered_operator_has_cases():
    covered = {type(case.op) for case in CASES}
    missing = [cls.__name__ for cls in OPS if cls not in covered]
    assert not missing, f"registered operators without soundness cases: {missing}"


def _inputs(case, kind, dtype, gen, batch=3):
    return case.boxes(kind, batch, dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", BOX_KINDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ibp_and_relaxation_contain_samples(case, kind, dtype):
    gen = torch.Generator().manual_seed(case_seed(case.name, kind))
    op = case.op.to(dtype=dtype)
    boxes = _inputs(case, kind, dtype, gen)
    points = joint_samples(boxes, 200, gen)
    n = points[0].shape[0]
    y = op.forward(*[p.flatten(0, 1) for p in points])
    y = y.reshape(n, -1, *y.shape[1:])
    lo, hi = op.ibp(*boxes)
    assert_inside(y, lo, hi, f"{case.name} IBP")
    if isinstance(op, Nonlinear) and len(boxes) > 1:
        rel = op.relax(*[t for box in boxes for t in box], RelaxConfig(case.relu_lower))
        xs = [op.broadcast(i, p.flatten(0, 1)).reshape(y.shape) for i, p in enumerate(points)]
        plane = lambda slopes, const: sum(a * x for a, x in zip(slopes, xs)) + const
        assert_inside(y, plane(rel.a_lo, rel.b_lo), plane(rel.a_up, rel.b_up), f"{case.name} relaxation")
    elif isinstance(op, Nonlinear):
        rel = op.relax(*boxes[0], RelaxConfig(case.relu_lower))
        v = points[0]
        if rel.index is not None:
            v = v.flatten(2).gather(2, rel.index.expand(n, -1, -1)).reshape(y.shape)
        assert_inside(y, rel.a_lo * v + rel.b_lo, rel.a_up * v + rel.b_up, f"{case.name} relaxation")


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.op, Affine)], ids=lambda c: c.name)
def test_affine_rules_are_adjoint_and_abs(case):
    gen = torch.Generator().manual_seed(1)
    op = case.op.to(dtype=torch.float64)
    xs = [torch.randn((4, *s), generator=gen, dtype=torch.float64) for s in case.in_shapes]
    zeros = [torch.zeros_like(x) for x in xs]
    offset = op.forward(*zeros)
    y = op.forward(*xs)
    linear = sum(op.linear(i, x) for i, x in enumerate(xs))
    torch.testing.assert_close(y, linear + offset)  # forward = linear part + offset
    if op.offset() is not None:
        torch.testing.assert_close(offset, torch.broadcast_to(op.offset(), offset.shape))
    a = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for i, (x, shape) in enumerate(zip(xs, case.in_shapes)):
        lhs = (a * op.linear(i, x)).flatten(1).sum(1)
        rhs = (op.transpose(i, a, shape) * x).flatten(1).sum(1)
        torch.testing.assert_close(lhs, rhs)  # <a, J x> = <J^T a, x>
        numel = x[0].numel()
        basis = torch.eye(numel, dtype=torch.float64).reshape(numel, *shape)
        torch.testing.assert_close(op.abs_linear(i, basis), op.linear(i, basis).abs())
        if op.maps_boxes_to_boxes(shape, tuple(y.shape[1:])):
            reads = op.linear(i, basis).reshape(numel, -1) != 0  # [input, output]
            one_each = (reads.sum(0) <= 1).all() and (reads.sum(1) <= 1).all()
            assert one_each, f"{case.name} claims to map boxes to boxes but mixes or copies coordinates"


SHORTCUTS = [c for c in CASES if isinstance(c.op, Affine) and type(c.op).box_form is not Affine.box_form]


@pytest.mark.parametrize("kind", BOX_KINDS)
@pytest.mark.parametrize("case", SHORTCUTS, ids=lambda c: c.name)
def test_box_shortcut_is_the_concretised_transpose(case, kind):
    """``box_lower`` on the ``box_form`` of the box (the engine's shortcut at the input) equals min over the box
    of ``<J^T a, x>``."""
    gen = torch.Generator().manual_seed(7)
    op, shape = case.op.to(dtype=torch.float64), case.in_shapes[0]
    lo, hi = make_box(kind, shape, 3, torch.float64, gen)
    a = torch.randn((2, *op.forward(lo).shape), generator=gen, dtype=torch.float64)
    transposed = op.transpose(0, a.flatten(0, 1), shape).reshape(2, 3, *shape)
    expected = Box(lo, hi).concretize(transposed, torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(op.box_lower(a, op.box_form((hi + lo) / 2, (hi - lo) / 2)), expected)


ROWS = [c for c in CASES if isinstance(c.op, Affine) and type(c.op).jacobian_rows is not Affine.jacobian_rows]


@pytest.mark.parametrize("case", ROWS, ids=lambda c: c.name)
def test_jacobian_rows_are_the_transposed_indicator_rows(case):
    """``jacobian_rows`` (the engine's start of a pass bounding the operator's neurons) equals ``J^T e_p``,
    where the operator gives it; where it declines (None), the engine pushes the indicators itself."""
    op, shape = case.op.to(dtype=torch.float64), case.in_shapes[0]
    out_shape = tuple(op.forward(torch.zeros((1, *shape), dtype=torch.float64)).shape[1:])
    numel = int(torch.Size(out_shape).numel())
    positions = torch.arange(numel).flip(0).reshape(1, numel)  # any shape of positions, any order
    rows = op.jacobian_rows(positions, out_shape)
    if rows is None:
        return
    unit = torch.eye(numel, dtype=torch.float64).flip(0).reshape(numel, *out_shape)
    expected = op.transpose(0, unit, shape).reshape(1, numel, *shape)
    torch.testing.assert_close(rows.reshape(expected.shape), expected)
    assert rows.shape == (1, numel, *shape)


def _single_op_graph(op, in_shapes) -> Graph:
    """input (all operands flattened and concatenated) -> one slice per operand -> op."""
    sizes = [int(torch.Size(s).numel()) for s in in_shapes]
    total = sum(sizes)
    nodes = [Node("input", None, (), (total,))]
    for i, (shape, size) in enumerate(zip(in_shapes, sizes)):
        index = torch.arange(sum(sizes[:i]), sum(sizes[:i]) + size)
        nodes.append(Node(f"operand{i}", Rearrange((total,), tuple(shape), index), (0,), tuple(shape)))
    y = op.forward(*[torch.zeros((1, *s), dtype=torch.float64) for s in in_shapes])
    nodes.append(Node("op", op, tuple(range(1, len(in_shapes) + 1)), tuple(y.shape[1:])))
    return Graph(tuple(nodes), len(nodes) - 1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ("mixed", "degenerate", "wide"))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_engine_bounds_of_single_operator(case, kind, method):
    gen = torch.Generator().manual_seed(case_seed(case.name, kind, method))
    op = case.op.to(dtype=torch.float64)
    model = BoundedModel(_single_op_graph(op, case.in_shapes).to(dtype=torch.float64))
    boxes = _inputs(case, kind, torch.float64, gen)
    lo = torch.cat([b[0].flatten(1) for b in boxes], 1)
    hi = torch.cat([b[1].flatten(1) for b in boxes], 1)
    bounds = model.bounds(Box(lo, hi), method=method, relu_lower=case.relu_lower)
    pts = samples(lo, hi, 200, gen)
    y = model(pts.flatten(0, 1))
    assert_inside(
        y.reshape(pts.shape[0], *bounds.lower.shape), bounds.lower, bounds.upper, f"{case.name} {method}"
    )

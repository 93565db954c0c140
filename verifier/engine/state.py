"""What one bound computation knows about a batch of B domains, kept so that it can be handed back and
refined: concrete bounds per node, split constraints, and the relaxations derived from them.

Coefficient tensors ("A") have shape [rows, batch, *node_shape] throughout the engine: ``rows`` are spec
rows (CROWN) or input coordinates (LBP); operators see the first two dimensions merged.

A method is a plan: how the intermediate bounds (inputs of nonlinear nodes) are found, and how the output
is bounded; ``PLANS`` lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from verifier.engine.cuts import Cuts
from verifier.graph.graph import Graph
from verifier.ops.base import Interval, JointRelaxation, Nonlinear, Op, Relaxation, RelaxConfig
from verifier.spec.regions import Region

# method -> (intermediate bounds, output bound); "alpha" optimises slopes (both at once when both say so)
PLANS = {
    "ibp": ("ibp", "ibp"),
    "crown": ("crown", "crown"),
    "crown-ibp": ("ibp", "crown"),
    "lbp": ("lbp", "lbp"),
    "crown-lbp": ("lbp", "crown"),
    "alpha-crown": ("alpha", "alpha"),
    "alpha-crown-final": ("crown", "alpha"),
}
METHODS = tuple(PLANS)


@dataclass(frozen=True)
class BoundConfig:
    """Options of a bound computation.

    method: one of METHODS. relu_lower: "adaptive" or "zero" (ReLU lower line on unstable neurons, and
    alpha-CROWN's start). max_elements: cap on the elements of one coefficient tensor; intermediate passes
    are chunked to it. alpha_steps / alpha_lr: projected Adam on the slopes (and split multipliers).
    max_alpha_bytes: the memory full alpha-CROWN may take (``alpha.full_fits``)."""

    method: str = "crown"
    relu_lower: str = "adaptive"
    max_elements: int = 2**18  # ~1 MB in float32: cache-sized chunks measured 2-2.5x faster at batch 64
    alpha_steps: int = 20
    alpha_lr: float = 0.25
    max_alpha_bytes: int = 4 * 2**30  # full alpha-CROWN larger than this optimises the output only

    @property
    def relax(self) -> RelaxConfig:
        return RelaxConfig(self.relu_lower)

    @property
    def intermediate(self) -> str:
        return PLANS[self.method][0]

    @property
    def output(self) -> str:
        return PLANS[self.method][1]


@dataclass
class BoundState:
    """Bounds of a batch of B domains over ``region`` (also batched by B).

    ``splits[k]`` (int8, [B, *shape_k]) constrains node k per domain: +1 means ``z_k >= 0``, -1 means
    ``z_k <= 0``, 0 free. Bounds stored through ``set_bounds`` honour them, so the relaxation of a split
    neuron is exact on its side; beta multipliers (``crown.backward``) add the constraint to the output's
    linear bound. ``best`` holds, per node, the tightest bounds seen across the iterations of an
    optimisation (each iterate is sound, so their intersection is too). ``cuts``, valid at every point of
    the region, join the output's bound with their own multipliers (``engine.cuts``)."""

    graph: Graph
    region: Region
    cfg: BoundConfig
    bounds: dict[int, Interval] = field(default_factory=dict)
    splits: dict[int, Tensor] = field(default_factory=dict)
    best: dict[int, Interval] = field(default_factory=dict)
    cuts: Cuts | None = None  # cutting planes valid on the whole region (``engine.cuts``)
    selections: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    _relaxers: dict[int, Callable[[Tensor | None], Relaxation | JointRelaxation]] = field(
        default_factory=dict, repr=False
    )
    _plain: dict[int, Relaxation | JointRelaxation] = field(default_factory=dict, repr=False)
    _first: dict[int, Relaxation | JointRelaxation] = field(default_factory=dict, repr=False)
    _box_forms: dict[int, object] = field(default_factory=dict, repr=False)

    @property
    def batch(self) -> int:
        return self.region.box()[0].shape[0]

    def set_bounds(self, k: int, bounds: Interval) -> None:
        """Store node k's bounds, intersected with its split constraints; forget relaxations built on the
        old ones."""
        lo, hi = bounds
        split = self.splits.get(k)
        if split is not None:  # z_k >= 0 on the active side, <= 0 on the inactive one: sound by definition
            lo = torch.where(split > 0, lo.clamp(min=0), lo)
            hi = torch.where(split < 0, hi.clamp(max=0), hi)
        self.bounds[k] = (lo, hi)
        for j in self.graph.nonlinear_consumers(k):
            self._relaxers.pop(j, None)
            self._plain.pop(j, None)
            self._first.pop(j, None)

    def input_bounds(self, j: int) -> list[Tensor]:
        """The bounds of node j's inputs, flattened in order (``lo_0, hi_0, lo_1, hi_1, ...``): what
        ``Nonlinear.relax`` and ``initial_param`` take."""
        return [t for i in self.graph.nodes[j].inputs for t in self.bounds[i]]

    def relaxation(self, j: int, param: Tensor | None = None) -> Relaxation | JointRelaxation:
        """The relaxation of nonlinear node j from the current bounds of its inputs, with ``param`` (its
        operator's ``relaxer`` is kept until those bounds change: what does not depend on the parameter
        is built once per bounds, not once per optimiser step, and lines that keep the first step's offset
        tensors take its test of them, ``sharing_offsets``; without a parameter, the relaxation itself is
        kept, for the chunks of a pass)."""
        if j not in self._relaxers:
            op = self.graph.nodes[j].op
            self._relaxers[j] = op.relaxer(*self.input_bounds(j), cfg=self.cfg.relax)
        if param is not None:
            rel = self._relaxers[j](param)
            return rel.sharing_offsets(self._first.setdefault(j, rel))
        if j not in self._plain:
            self._plain[j] = self._relaxers[j](None)
        return self._plain[j]

    def box_form(self, j: int) -> object | None:
        """Node j's layout of the input box (``Affine.box_form``), None when the region is no box or the
        operator has no shortcut; kept with the state unless the box carries gradients (each use's graph
        must then own it)."""
        if not self.region.is_box:
            return None
        if j in self._box_forms:
            return self._box_forms[j]
        shape = (self.batch, *self.graph.input_shape)
        centre, radius = (t.reshape(shape) for t in self.region.centre_radius())
        form = self.graph.nodes[j].op.box_form(centre, radius)
        if not (centre.requires_grad or radius.requires_grad):
            self._box_forms[j] = form
        return form

    def exact_relaxations(self) -> Tensor:
        """[B] bool: domains where every nonlinear node's two lines coincide (the network is then one
        affine function on the domain)."""
        exact = torch.ones(self.batch, dtype=torch.bool, device=self.region.box()[0].device)
        for j, node in enumerate(self.graph.nodes):
            if isinstance(node.op, Nonlinear):
                rel = self.relaxation(j)
                same = rel.b_lo == rel.b_up  # both read the same inputs
                for a_lo, a_up in _slopes(rel):
                    same = same & (a_lo == a_up)
                exact &= same.flatten(1).all(1)
        return exact

    def infeasible(self) -> Tensor:
        """[B] bool: domains with some node's lower bound above its upper bound. Bounds are sound, so such
        a domain contains no point (its split constraints contradict each other or the region)."""
        empty = torch.zeros(self.batch, dtype=torch.bool, device=self.region.box()[0].device)
        for lo, hi in self.bounds.values():
            empty |= (lo > hi).flatten(1).any(1)
        return empty

    def select(self, index: Tensor) -> BoundState:
        """The sub-batch ``index`` (entries may repeat): region, bounds and splits, no cached iterates."""
        pick = lambda t: t[index]
        return BoundState(
            self.graph,
            self.region.select(index),
            self.cfg,
            bounds={k: (pick(lo), pick(hi)) for k, (lo, hi) in self.bounds.items()},
            splits={k: pick(s) for k, s in self.splits.items()},
            cuts=self.cuts,
        )


def tighten(a: Interval, b: Interval) -> Interval:
    """Intersection of two sound intervals for the same values."""
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _slopes(rel: Relaxation | JointRelaxation) -> list[tuple[Tensor, Tensor]]:
    """The (lower, upper) slope pairs of a relaxation, one per input."""
    if isinstance(rel, JointRelaxation):
        return list(zip(rel.a_lo, rel.a_up))
    return [(rel.a_lo, rel.a_up)]


def apply_joint_relaxation(a: Tensor, rel: JointRelaxation, op: Op) -> tuple[list[Tensor], Tensor]:
    """``apply_relaxation`` for an operator of several inputs: the positive part of ``a`` ([S, B, *out])
    takes the lower planes, the negative part the upper ones. Returns the coefficients on each input,
    [S * B, *input_shape_i] (summed over the positions broadcasting copied), and the constant term [S, B]."""
    pos, neg = sign_split(a)
    const = _offset_sum(pos, rel.offsets[0], neg, rel.offsets[1])
    coeffs = [
        op.unbroadcast(i, torch.addcmul(pos * a_lo, neg, a_up).flatten(0, 1))
        for i, (a_lo, a_up) in enumerate(zip(rel.a_lo, rel.a_up))
    ]
    return coeffs, const


def apply_relaxation(a: Tensor, rel: Relaxation, in_numel: int) -> tuple[Tensor, Tensor]:
    """One backward step through relaxed lines, for a lower bound of ``<a, y>``.

    ``a+ y >= a+ (a_lo v + b_lo)`` and ``a- y >= a- (a_up v + b_up)``: the positive part of the
    coefficients takes the lower line, the negative part the upper line. Lines may carry a leading row
    dimension (parameterised per row). Returns the coefficients on the operator's input,
    [S, B, in_numel], and the constant term [S, B]."""
    lines = (rel.a_lo, rel.a_up, *rel.offsets)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a, *lines)):
        new, const = _RelaxationStep.apply(a, *lines)
    else:  # no gradient wanted: the same values, without the autograd Function's bookkeeping
        new, const = _relaxed(sign_split(a), *lines)
    new = new.flatten(2)
    if rel.index is not None:
        index = rel.index.unsqueeze(0).expand(new.shape[0], -1, -1)
        new = new.new_zeros(new.shape[0], new.shape[1], in_numel).scatter_add(2, index, new)
    return new, const


class _RelaxationStep(torch.autograd.Function):
    """``(a+ a_lo + a- a_up, <a+, b_lo> + <a-, b_up>)`` for coefficients ``a`` [S, B, *shape] and lines
    broadcast to them (an offset given as None is 0), with a hand-written backward.

    Autograd through the sign split and the products reads the [S, B, *shape] tensors about 14 times; the
    derivatives written out read them about 7 times (measured 2x faster): in ``a``, ``g`` times the line
    each coefficient selected (``_selected``; a tie ``a == 0`` takes the upper line's, as autograd through
    ``sign_split`` does), plus ``g_const`` times the selected offset; in a line, its part of ``a`` times
    ``g`` (or ``g_const``), summed over the rows it is broadcast to. Equal to autograd's to rounding."""

    @staticmethod
    def forward(ctx, a, a_lo, a_up, b_lo, b_up):
        pos, neg = sign_split(a)
        ctx.save_for_backward(pos, neg, a_lo, a_up, b_lo, b_up)
        return _relaxed((pos, neg), a_lo, a_up, b_lo, b_up)

    @staticmethod
    def backward(ctx, g, g_const):
        pos, neg, a_lo, a_up, b_lo, b_up = ctx.saved_tensors
        g_rows = g_const.reshape(*g_const.shape, *(1,) * (pos.dim() - 2))  # broadcast over the neurons
        grad_a = None
        if ctx.needs_input_grad[0]:
            grad_a = _selected(pos, a_lo, a_up).mul_(g)
            if b_lo is not None or b_up is not None:
                grad_a.addcmul_(g_rows, _selected(pos, b_lo, b_up))
        weights, parts, lines = (g, g, g_rows, g_rows), (pos, neg, pos, neg), (a_lo, a_up, b_lo, b_up)
        grad_lines = [
            _line_grad(w, part, line) if need else None
            for need, w, part, line in zip(ctx.needs_input_grad[1:], weights, parts, lines)
        ]
        return grad_a, *grad_lines


def _relaxed(parts: tuple[Tensor, Tensor], a_lo: Tensor, a_up: Tensor, b_lo: Tensor | None,
             b_up: Tensor | None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The step's values from the sign split ``parts`` of the coefficients (``_RelaxationStep``)."""
    pos, neg = parts
    # in place: autograd does not see inside the Function's forward, and no gradient is wanted elsewhere
    return (pos * a_lo).addcmul_(neg, a_up), _offset_sum(pos, b_lo, neg, b_up)


def _selected(pos: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    """[S, B, *shape]: ``lower`` where ``pos > 0``, ``upper`` elsewhere (None: 0), each broadcast to ``pos``.
    threshold_backward (relu's backward, ``x`` where ``pos > 0`` else 0) is one pass; ``where`` with
    broadcast operands measured 3-5x slower. The result is ``upper + (lower - upper)`` where ``pos > 0``,
    which is ``lower`` up to rounding."""
    if upper is None:
        return torch.ops.aten.threshold_backward(lower, pos, 0)
    step = torch.ops.aten.threshold_backward(-upper if lower is None else lower - upper, pos, 0)
    return step.add_(upper)


def _line_grad(weight: Tensor, part: Tensor, line: Tensor) -> Tensor:
    """The gradient of ``sum weight * part * line`` in ``line``, which is broadcast to ``part`` [S, B, *shape].
    A line shared by the rows ([B, *shape]) takes one einsum, which reduces while it multiplies."""
    if line.shape == part.shape:
        return weight * part
    if line.shape == part.shape[1:]:
        return torch.einsum("s...,s...->...", weight, part)
    return (weight * part).sum_to_size(line.shape)


def sign_split(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(a+, a-)`` with ``a = a+ + a-`` exactly (one of the two is 0 per entry, so products with lines
    equal the sign select bit for bit). ReLU and a subtraction: comparisons, ``where`` and clamp's
    backward build boolean masks, which measured 5-10x slower than relu and its backward on CPU; the
    gradient at ``a == 0`` goes to ``a-`` (the upper line's), as with ``clamp(max=0)``."""
    pos = torch.relu(a)
    return pos, a - pos


def _offset_sum(pos: Tensor, b_lo: Tensor | None, neg: Tensor, b_up: Tensor | None) -> Tensor:
    """``<pos, b_lo> + <neg, b_up>`` per row [S, B] (see ``_line_sum``), an offset given as None being 0."""
    terms = [_line_sum(c, b) for c, b in ((pos, b_lo), (neg, b_up)) if b is not None]
    return sum(terms[1:], terms[0]) if terms else pos.new_zeros(pos.shape[:2])


def _line_sum(coeffs: Tensor, line: Tensor) -> Tensor:
    """``sum_n coeffs[s, b, n] line[b, n]`` per row [S, B] (``line`` [B, *shape] or, per row, [S, B, *shape]).
    ``line`` may have size-1 dimensions (expanded). ``vecdot`` broadcasts it over the rows: measured faster,
    with its gradient, than a product laid out and summed, or einsum's batched matrix product."""
    shape = coeffs.shape[2:]
    rows = line.shape[: line.dim() - len(shape)]
    return torch.linalg.vecdot(coeffs.flatten(2), line.expand(*rows, *shape).flatten(len(rows)))

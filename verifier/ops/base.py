"""Operator kinds and the registry.

Every operator is a small frozen dataclass holding only its constants; its rules are pure functions of
bounds. Tensors always carry one leading "row" dimension ``N`` before the per-sample shape: the batch for
concrete values, and ``spec * batch`` (or ``inputs * batch``) when the engine pushes coefficient tensors
through an operator. The engine stores linear coefficients as ``[rows, batch, *node_shape]`` and merges the
first two dimensions before calling an operator, so no operator knows about specifications.

Two kinds cover every operator:

* :class:`Affine`: ``y = sum_i J_i x_i + c`` exactly. It gives the linear maps ``J_i`` and ``|J_i|``
  (elementwise absolute value of the coefficients) and the offset ``c``; IBP, the CROWN backward step
  (``J_i^T``, by default the vector-Jacobian product of ``J_i``) and the LBP forward step follow from these.
* :class:`Nonlinear`: IBP and a relaxation: two linear functions per output that bracket the operator for
  every input in the box. With one input a :class:`Relaxation` (lines in that input, optionally after a
  gather of it: max pooling); with several (products of two graph tensors) a :class:`JointRelaxation`
  (planes in all inputs, broadcast to the output's shape).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

from verifier.ops.rounding import FloatFormat, NoRoundingRule, magnitude

Interval = tuple[Tensor, Tensor]


class Op:
    """Base of all operators: a forward function and interval bound propagation."""

    arity: ClassVar[int] = 1

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def ibp(self, *bounds: Interval) -> Interval:
        raise NotImplementedError

    def rounding_error(self, bounds: list[Interval], errors: list[Tensor], fmt: FloatFormat) -> Tensor:
        """``e_out`` with ``|computed output - exact output| <= e_out`` elementwise, for every input in
        ``bounds`` (real intervals) computed with errors at most ``errors`` (the model of ``ops.rounding``).
        Raises ``NoRoundingRule`` for an operator without a rule (never a silent guess)."""
        raise NoRoundingRule(type(self).__name__)

    def to(self, device=None, dtype=None) -> Op:
        """A copy with every floating tensor constant moved to ``device`` / cast to ``dtype``. A module's
        own parameters (held by live graphs) are kept: they follow their module (``module.to``)."""
        changes = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and not isinstance(v, torch.nn.Parameter):
                changes[f.name] = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
        return dataclasses.replace(self, **changes) if changes else self


class Broadcasting:
    """Numpy broadcasting of an operator's inputs, of per-sample shapes ``in_shapes``, to ``out_shape``
    (padded with unit dimensions on the left); the batch dimension is never broadcast. The operator
    declares the two fields; ``out_shape`` None means every input has the output's shape."""

    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...] | None

    def _padded(self, i: int) -> tuple[int, ...]:
        shape = self.in_shapes[i]
        return (1,) * (len(self.out_shape) - len(shape)) + tuple(shape)

    def broadcast(self, i: int, x: Tensor) -> Tensor:
        """Input i [N, *in_shapes[i]] as the output's shape sees it, [N, *out_shape]."""
        if self.out_shape is None:
            return x
        return x.reshape(x.shape[0], *self._padded(i)).expand(x.shape[0], *self.out_shape)

    def unbroadcast(self, i: int, a: Tensor) -> Tensor:
        """The adjoint of ``broadcast``: [N, *out_shape] summed over the copies onto input i's shape."""
        if self.out_shape is None:
            return a
        padded = self._padded(i)
        dims = [1 + d for d, (p, o) in enumerate(zip(padded, self.out_shape)) if p == 1 and o != 1]
        return (a.sum(dims, keepdim=True) if dims else a).reshape(a.shape[0], *self.in_shapes[i])


class Affine(Op):
    """``y = sum_i J_i x_i + c``: the bound rules of every affine operator follow from four pieces."""

    def linear(self, i: int, x: Tensor) -> Tensor:
        """``J_i x`` for a tensor of shape [N, *input_i_shape]."""
        raise NotImplementedError

    def abs_linear(self, i: int, x: Tensor) -> Tensor:
        """``|J_i| x``: the same map with every coefficient replaced by its absolute value."""
        raise NotImplementedError

    def offset(self) -> Tensor | None:
        """``c``, broadcastable to [1, *output_shape]; None when zero."""
        return None

    def transpose(self, i: int, a: Tensor, in_shape: tuple[int, ...]) -> Tensor:
        """``J_i^T a`` for a of shape [N, *output_shape]: the vector-Jacobian product of ``J_i``."""
        primal = torch.zeros((a.shape[0], *in_shape), dtype=a.dtype, device=a.device)
        _, vjp = torch.func.vjp(lambda x: self.linear(i, x), primal)
        return vjp(a)[0]

    def jacobian_rows(self, positions: Tensor, out_shape: tuple[int, ...]) -> Tensor | None:
        """``J^T e_p`` for a one-input operator, one per flat output position p of ``positions`` (long,
        any shape P): [*P, *input_shape], read off the operator's data instead of multiplied out; None
        when the operator has no such shortcut (the engine then applies ``transpose`` to the indicator
        rows). ``out_shape``: the per-sample output shape."""
        return None

    def box_form(self, centre: Tensor, radius: Tensor) -> object | None:
        """The box ``|x - centre| <= radius`` (centre, radius: [B, *input_shape]) laid out as ``box_lower``
        reads it, for a one-input operator that can bound over a box without laying ``J^T a`` out on its
        input; None when it has no such shortcut (the engine then concretises ``J^T a``). The engine builds
        it once per bound computation."""
        return None

    def box_lower(self, a: Tensor, form: object) -> Tensor:
        """``min <a, J x>`` over the box of ``form`` (``box_form``). a: [S, B, *output_shape]; -> [S, B]."""
        raise NotImplementedError

    def rounding_terms(self, in_shape: tuple[int, ...]) -> int | None:
        """``m``: an upper bound on the terms of the float sum computing any one output (a dot product of
        length n plus an offset: ``n + 1``), including the roundings of constants folded at load time;
        0 for exact data movement; None when the operator has no rounding model. ``in_shape``: the
        per-sample shape of input 0."""
        return None

    def rounding_error(self, bounds: list[Interval], errors: list[Tensor], fmt: FloatFormat) -> Tensor:
        """``|fl(J x^ + c) - (J x + c)| <= |J| e + gamma_m (|J| |x^| + |c|) + m tiny`` with ``|x^ - x| <= e``:
        the propagated input error plus the rounding of a sum of ``m`` terms (``ops.rounding``)."""
        m = self.rounding_terms(tuple(bounds[0][0].shape[1:]))
        if m is None:
            raise NoRoundingRule(type(self).__name__)
        propagated = sum(self.abs_linear(i, e) for i, e in enumerate(errors))
        if m == 0:
            return propagated
        size = sum(self.abs_linear(i, magnitude(b, e)) for i, (b, e) in enumerate(zip(bounds, errors)))
        c = self.offset()
        size = size if c is None else size + c.abs()
        return propagated + fmt.gamma(m) * size + m * fmt.tiny

    def maps_boxes_to_boxes(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
        """True when every output reads one input coordinate and no coordinate is read twice: the image
        of a box is then a box (the scheduler uses it to skip CROWN where IBP is already exact)."""
        return False

    def halved(self) -> Affine | None:
        """The operator with every ``J_i`` halved and the same offset, when that is a change of constants
        only (:class:`Weighted`); None otherwise."""
        return None

    def ibp(self, *bounds: Interval) -> Interval:
        """Centre and radius: ``y = J c + c0 +- |J| r`` contains ``J x + c0`` for every x in the box, with
        ``c = (lo + hi) / 2`` and ``r = (hi - lo) / 2``. The halving goes into the constants when the
        operator allows (``halved``): exact either way (a power of two), and it saves two passes over the
        activations, forward and backward."""
        half = self.halved()
        if half is None:
            half, bounds = self, [(lo * 0.5, hi * 0.5) for lo, hi in bounds]
        centre = half.forward(*[lo + hi for lo, hi in bounds])
        radius = sum(half.abs_linear(i, hi - lo) for i, (lo, hi) in enumerate(bounds))
        return unbounded_where_nan(centre - radius, centre + radius)


class Weighted:
    """An :class:`Affine` operator whose maps ``J`` are linear in its one tensor field ``weight`` and whose
    offset does not depend on it (Linear, Conv, ...)."""

    weight: Tensor

    def halved(self) -> Affine:
        return dataclasses.replace(self, weight=self.weight * 0.5)


def unbounded_where_nan(lo: Tensor, hi: Tensor) -> Interval:
    """Interval arithmetic on an infinite input bound can meet ``inf - inf`` or ``0 * inf``: nothing finite
    is known there, and the infinite interval is the sound answer."""
    if torch.isnan(lo.sum() + hi.sum()):  # cheap test first (also true for sums of opposite infinities)
        lo, hi = torch.where(lo.isnan(), -torch.inf, lo), torch.where(hi.isnan(), torch.inf, hi)
    return lo, hi


class _Offsets:
    """The offsets of a relaxation's lines as the backward step uses them."""

    b_lo: Tensor
    b_up: Tensor

    @cached_property
    def offsets(self) -> tuple[Tensor | None, Tensor | None]:
        """``(b_lo, b_up)``, each None when it is a constant 0 everywhere (ReLU's lines through the origin):
        its term is exactly 0 and has no gradient, and would cost a product over every coefficient, forward
        and backward. Tested once per relaxation: a chunked pass applies the same one many times."""
        return tuple(b if b.requires_grad or b.any() else None for b in (self.b_lo, self.b_up))

    def sharing_offsets(self, earlier: _Offsets) -> _Offsets:
        """This relaxation, its ``offsets`` taken from ``earlier``'s (once tested there) when both hold the
        very same offset tensors (a relaxer's lines for each new parameter, as ReLU's keep them): the test
        is a pass over every neuron, which an optimiser's steps would repeat (5% of a ReLU-split search on
        oval21 cifar_wide)."""
        if (
            earlier is not self
            and "offsets" in vars(earlier)
            and self.b_lo is earlier.b_lo
            and self.b_up is earlier.b_up
        ):
            vars(self)["offsets"] = earlier.offsets
        return self


@dataclass(frozen=True)
class Relaxation(_Offsets):
    """Linear lines around a nonlinear operator, valid for every input in its bounds.

    With ``v = x.flatten(1)[:, index]`` (or ``v = x`` when ``index`` is None), for every x in the box:
    ``a_lo * v + b_lo <= op(x) <= a_up * v + b_up``, all of shape [B, *output_shape].
    """

    a_lo: Tensor
    b_lo: Tensor
    a_up: Tensor
    b_up: Tensor
    index: Tensor | None = None  # [B, n_out] long: flat input position each output's lines read


@dataclass(frozen=True)
class JointRelaxation(_Offsets):
    """Planes around an operator of several inputs, valid for every input in their boxes.

    With ``x_i`` broadcast to the output's shape: ``sum_i a_lo[i] * x_i + b_lo <= op(x) <= sum_i a_up[i] *
    x_i + b_up``, every tensor of shape [B, *output_shape] (or [R, B, *output_shape] when parameterised per
    row). The operator's ``unbroadcast`` maps output-shaped coefficients back onto each input."""

    a_lo: tuple[Tensor, ...]
    b_lo: Tensor
    a_up: tuple[Tensor, ...]
    b_up: Tensor


@dataclass(frozen=True)
class RelaxConfig:
    """Choices a relaxation may depend on. ``relu_lower``: "adaptive" (CROWN) or "zero"."""

    relu_lower: str = "adaptive"


class Nonlinear(Op):
    """A nonlinear operator: IBP plus a sound linear relaxation.

    ``relax`` and ``initial_param`` take the bounds of every input in order, flattened (``lo_0, hi_0, lo_1,
    hi_1, ...``); below they are written for the common one-input case. An operator of several inputs
    returns a :class:`JointRelaxation` and gives ``unbroadcast`` and ``broadcast``; its ``needs_bounds``
    is asked about each input on its own.

    A relaxation may have free parameters (e.g. the slope of ReLU's lower line): ``initial_param`` gives
    their default value (shape [B, *input_shape], or with leading rows [R, B, *input_shape] for one set
    per bound being computed) and ``project`` maps any tensor onto the values for which ``relax`` stays
    sound, so an optimiser may move them freely between projections (alpha-CROWN)."""

    def __init_subclass__(cls, **kwargs):
        """An operator whose ``relax`` is its own but whose ``relaxer`` is inherited from a class that has
        its own would have the engine (which asks ``relaxer``) bypass that ``relax``: refused."""
        super().__init_subclass__(**kwargs)
        if "relax" in vars(cls) and "relaxer" not in vars(cls) and cls.relaxer is not Nonlinear.relaxer:
            raise TypeError(f"{cls.__name__} overrides relax but inherits a relaxer that ignores it: give it "
                            f"a relaxer too")  # fmt: skip

    linear_on_each_side_of_zero: ClassVar[bool] = False  # a split at zero makes the relaxation exact
    # a split at zero makes it tighter: each side convex or concave (S-shaped functions)
    curved_on_each_side_of_zero: ClassVar[bool] = False

    def relax(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig, param: Tensor | None = None) -> Relaxation:
        """Lines valid on the box ``[lo, hi]`` ([B, *shape]); with ``param`` ([R, B, *shape] or [B, *shape],
        already projected) the parameterised lines, whose fields then carry the leading R dimension."""
        raise NotImplementedError

    def relaxer(self, *bounds: Tensor, cfg: RelaxConfig) -> Callable[[Tensor | None], Relaxation]:
        """``relax`` on fixed bounds as a function of the parameter alone (``None``: the default lines),
        for an optimiser that moves the parameter while the bounds stay: an operator whose lines depend
        on the parameter through a cheap final step overrides it to build the rest once. Default: the
        parameter-free lines once, parameterised ones anew at each call."""
        default: list[Relaxation] = []

        def lines(param: Tensor | None = None) -> Relaxation:
            if param is not None:
                return self.relax(*bounds, cfg, param)
            if not default:
                default.append(self.relax(*bounds, cfg))
            return default[0]

        return lines

    def initial_param(self, lo: Tensor, hi: Tensor, cfg: RelaxConfig) -> Tensor | None:
        """The default value of the relaxation's free parameters ([B, *shape]); None when there are none
        (or none that matter on this box)."""
        return None

    def project(self, param: Tensor) -> Tensor:
        """The nearest parameter value for which ``relax`` is sound."""
        raise NotImplementedError

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Mask over an input (shape of ``lo``) of neurons whose relaxation is inexact with these bounds:
        where tighter pre-activation bounds can help. Default: every non-degenerate neuron."""
        return lo < hi

    def broadcast(self, i: int, x: Tensor) -> Tensor:
        """Input i ([N, *input_shape_i]) as the output's shape sees it ([N, *output_shape])."""
        return x

    def unbroadcast(self, i: int, a: Tensor) -> Tensor:
        """The adjoint of ``broadcast``: coefficients [N, *output_shape] summed onto input i's positions."""
        return a


# ----------------------------------------------------------------------------------------------- registry

OPS: list[type[Op]] = []


def register(cls: type[Op]) -> type[Op]:
    """Class decorator adding an operator to the registry (the soundness test walks it)."""
    if cls in OPS:
        raise ValueError(f"operator {cls.__name__} registered twice")
    OPS.append(cls)
    return cls

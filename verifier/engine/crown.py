"""CROWN: backward linear bound propagation from any node to the input.

With a ``Params`` store, the relaxations of nonlinear nodes take their free parameters from it (alpha
slopes, one set per row of the pass), and split constraints of the domain enter the output's bound through
multipliers ``beta >= 0`` (beta-CROWN): on the domain, ``s_k * z_k >= 0`` for split sign ``s_k``, so
``<a, z_k> >= <a - beta s_k, z_k>`` there, and the pass continues with the shifted coefficients. Cutting
planes of the state (``engine.cuts``) enter the output's bound the same way, through multipliers
``mu >= 0``."""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.engine import cuts as cutting
from verifier.engine import patches
from verifier.engine.params import Params, nonnegative
from verifier.engine.state import BoundState, apply_joint_relaxation, apply_relaxation
from verifier.errors import BoundComputationError, VerifierError
from verifier.ops.base import Affine, JointRelaxation

# rows of one refining pass at least: below that the fixed cost of a pass's many kernel calls dominates
# (oval21 CNN, batch 64: 256 rows per pass 1.3x faster than 128; batch 1: 256 no slower than 84)
MIN_ROWS = 256


def backward(state: BoundState, start: int, a: Tensor, params: Params | None = None, tag=(),
             beta: bool = False, record: dict[int, Tensor] | None = None) -> Tensor:  # fmt: skip
    """Lower bounds of ``<a_s, z_start>`` over the region, one per row s: shape [S, B].

    ``a`` has shape [S, B, *shape(start)]. Walks the ancestors of ``start`` in reverse topological order,
    accumulating coefficients for nodes with several consumers; affine nodes pass ``J^T a`` to their inputs
    and add ``<a, offset>``, nonlinear nodes apply their relaxation. Every step keeps
    ``<a, z_start> >= <a_j, z_j> + const`` for all inputs in the region (and in the domain's split
    constraints, when ``beta``), so the concretisation at the input is a sound lower bound. ``tag``
    distinguishes the parameter sets of different passes in ``params``; ``record`` receives the
    coefficients [S, B, *shape_j] on the output of every nonlinear node j (for branching heuristics)."""
    return _backward(state, start, a, params, tag, beta, record, linear=False)


def linear_form(state: BoundState, start: int, a: Tensor, params: Params | None = None,
                tag=()) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(A, c)`` with ``<a_s, z_start> >= <A_s, x> + c_s`` for every input x of the region:
    A [S, B, *input_shape], c [S, B] (equality where every relaxation on the way is exact)."""
    return _backward(state, start, a, params, tag, False, None, linear=True)


def _backward(state, start, a, params, tag, beta, record, linear):
    """``backward``; with ``linear``, the linear function of the input instead of its minimum."""
    pending: dict[int, Tensor] = {start: a}
    const = a.new_zeros(a.shape[:2])
    indicators: dict[int, tuple[Tensor, Tensor]] = {}
    cut = beta and params is not None and state.cuts is not None and start == state.graph.output
    if cut:
        const = const + _cut_terms(state, a, params, pending, indicators)
        cut_rows = state.cuts.applies(a)
    for j in range(start, 0, -1):
        a = pending.pop(j, None)
        if a is None:
            continue
        try:
            if beta and j in state.splits:
                a = _split_multipliers(state, j, a, params)
            if record is not None and not isinstance(state.graph.nodes[j].op, Affine):
                record[j] = a.detach()
            const = const + _step(state, j, a, pending, params, tag, linear, indicators.get(j))
        except VerifierError:
            raise
        except Exception as exc:
            node = state.graph.nodes[j]
            raise BoundComputationError(
                f"backward bound pass failed at node {node.name} ({type(node.op).__name__}): {exc}"
            ) from exc
    coeffs = pending.get(0)
    if linear:
        shape = (*const.shape, *state.graph.input_shape)
        return (const.new_zeros(shape) if coeffs is None else coeffs), const
    lower = const if coeffs is None else state.region.concretize(coeffs, const)
    if cut:  # the rows of cuts with a cutoff are bounded by it too (``engine.cuts``)
        lower = torch.where(cut_rows, lower.clamp(max=state.cuts.cutoff), lower)
    return lower


def _step(state: BoundState, j: int, a: Tensor, pending: dict, params: Params | None, tag,
          linear: bool = False, indicator: tuple[Tensor, Tensor] | None = None) -> Tensor:  # fmt: skip
    """Pass node j's coefficients ``a`` to its inputs; return the constant term it adds ([S, B]).
    ``indicator``: flat positions [r] of ReLU node j and the coefficients [S, B, r] of cuts on its
    indicators there (``_cut_terms``)."""
    nodes = state.graph.nodes
    node, (s, b) = nodes[j], a.shape[:2]
    if isinstance(node.op, Affine):
        offset = node.op.offset()
        const = _offset_term(a, offset) if offset is not None else 0
        if not linear and node.inputs == (0,) and state.graph.consumers[0] == (j,) and 0 not in pending:
            # j alone reads the input: the minimum over the box of <a, J x> is exactly its concretisation
            form = state.box_form(j)
            if form is not None:
                return const + node.op.box_lower(a, form)
        flat = a.reshape(s * b, *node.shape)
        for i, src in enumerate(node.inputs):
            shape = nodes[src].shape
            _accumulate(pending, src, node.op.transpose(i, flat, shape).reshape(s, b, *shape))
        return const
    param = None
    if params is not None:
        bounds = state.input_bounds(j)
        init = lambda: _per_row(node.op.initial_param(*bounds, state.cfg.relax), s)
        param = params.get(("slope", *tag, j), init, node.op.project)
    rel = state.relaxation(j, param)
    if isinstance(rel, JointRelaxation):
        coeffs, const = apply_joint_relaxation(a, rel, node.op)
        for src, new in zip(node.inputs, coeffs):
            _accumulate(pending, src, new.reshape(s, b, *nodes[src].shape))
        return const
    src = node.inputs[0]
    shape = nodes[src].shape
    extra = 0
    if indicator is not None:  # <q, d> >= <out, z_j> + <into, z_src> + extra (the op's big-M lines)
        rows, q = indicator  # at the positions the cuts use; q is 0 elsewhere, and so are the lines
        lo, hi = (t.flatten(1).index_select(1, rows) for t in state.bounds[src])
        out, into, extra = node.op.indicator_lines(q, lo, hi)
        a = a.flatten(2).index_add(2, rows, out).reshape(a.shape)
        _accumulate_at(pending, src, rows, into, shape)
    new, const = apply_relaxation(a, rel, int(torch.Size(shape).numel()))
    _accumulate(pending, src, new.reshape(s, b, *shape))
    return const + extra


def _offset_term(a: Tensor, offset: Tensor) -> Tensor:
    """``<a_s, offset>`` per row [S, B] for a [S, B, *shape] and an offset broadcast over it. Where the
    offset is broadcast (a bias per channel over the pixels), a is summed over those dimensions first: one
    read of a instead of a product the size of a."""
    rank = a.dim() - 2
    off = offset
    while off.dim() > rank and off.shape[0] == 1:
        off = off[0]
    if off.dim() > rank:
        return (a * offset).flatten(2).sum(-1)
    off = off.reshape((1,) * (rank - off.dim()) + tuple(off.shape))
    dims = [2 + d for d, n in enumerate(off.shape) if n == 1 and a.shape[2 + d] != 1]
    return ((a.sum(dims, keepdim=True) if dims else a) * off).flatten(2).sum(-1)


def _per_row(value: Tensor | None, rows: int) -> Tensor | None:
    return None if value is None else value.expand(rows, *value.shape)


def _split_multipliers(state: BoundState, k: int, a: Tensor, params: Params | None) -> Tensor:
    """``a - beta * s_k``: the Lagrangian term of the split constraints ``s_k z_k >= 0`` (beta >= 0)."""
    split = state.splits[k]
    if params is None or not split.any():
        return a
    beta = params.get(("beta", k), lambda: torch.zeros_like(a), nonnegative)
    return a if beta is None else a - beta * split.to(a.dtype)


def _cut_terms(state: BoundState, a: Tensor, params: Params, pending: dict[int, Tensor],
               indicators: dict[int, tuple[Tensor, Tensor]]) -> Tensor:  # fmt: skip
    """The Lagrangian term ``mu . (H z + Q d - rhs)`` of the state's cuts (``engine.cuts``), never positive
    on the region: ``mu H_j`` joins node j's pending coefficients, ``mu Q_j`` goes to ``indicators[j]``
    for ReLU node j's step (both at the positions the cuts use, ``cuts.Part``), and ``-mu . rhs`` [S, B] is
    returned."""
    cuts = state.cuts
    s, b = a.shape[:2]
    mu = params.get(cutting.KEY, lambda: a.new_zeros(s, b, cuts.count), nonnegative)
    if mu is None:
        return 0
    mu = mu * cuts.applies(a).unsqueeze(-1)  # rows the cuts do not hold for take none of them
    nodes = state.graph.nodes
    for j, part in cuts.value_parts.items():
        _accumulate_at(pending, j, part.rows, part.weights(mu), nodes[j].shape)
    for j, part in cuts.indicator_parts.items():
        indicators[j] = (part.rows, part.weights(mu))
        if j not in pending:  # the step must run even where nothing else reaches node j
            pending[j] = mu.new_zeros(s, b, *nodes[j].shape)
    return -(mu * cuts.rhs).sum(-1)


def _accumulate(pending: dict[int, Tensor], k: int, a: Tensor) -> None:
    pending[k] = pending[k] + a if k in pending else a


def _accumulate_at(
    pending: dict[int, Tensor], k: int, rows: Tensor, a: Tensor, shape: tuple[int, ...]
) -> None:
    """Add ``a`` [S, B, r] at the flat positions ``rows`` [r] of node k (shape ``shape``)."""
    s, b = a.shape[:2]
    base = pending[k].flatten(2) if k in pending else a.new_zeros(s, b, int(torch.Size(shape).numel()))
    pending[k] = base.index_add(2, rows, a).reshape(s, b, *shape)


def select_rows(state: BoundState, k: int, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per batch element, the positions of node k that ``mask`` ([B, *shape]) selects, first (a
    permutation, so positions never repeat): ``order`` [B, most] and ``valid`` [B, most] (False past the
    element's own count)."""
    batch = mask.shape[0]
    flat_mask = mask.reshape(batch, -1)
    counts = flat_mask.sum(1)
    most = int(counts.max()) if batch else 0
    order = flat_mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :most]
    valid = torch.arange(most, device=mask.device) < counts[:, None]
    return order, valid


def indicator_rows(order: Tensor, valid: Tensor, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """[m, B, *shape] rows, row j of element b the indicator of position ``order[b, j]`` (zero where not
    ``valid``): the specification that bounds those neurons one per row."""
    m, batch = order.shape[1], order.shape[0]
    rows = torch.zeros(m, batch, int(torch.Size(shape).numel()), dtype=like.dtype, device=like.device)
    rows.scatter_(2, order.T.unsqueeze(2), valid.T.unsqueeze(2).to(like.dtype))
    return rows.reshape(m, batch, *shape)


def _indicator_bounds(
    state: BoundState, k: int, pos: Tensor, ok: Tensor, params: Params | None, tag
) -> Tensor:
    """Lower bounds [2m, B] of ``z_k`` at ``pos`` [B, m] (rows 0..m-1) and of ``-z_k`` there (rows m..2m-1),
    by ``backward`` from the indicator rows (``indicator_rows``; zero where not ``ok``). When node k is an
    affine operator whose Jacobian rows are at hand (``Affine.jacobian_rows``: the rows of a Linear's
    weight), the pass starts on its input with those rows: the same coefficients, gathered instead of
    multiplied out of the indicators (on an MLP, one matrix product of the pass's few)."""
    node = state.graph.nodes[k]
    lo = state.bounds[k][0]
    rows = None
    if isinstance(node.op, Affine) and len(node.inputs) == 1:
        rows = node.op.jacobian_rows(pos, node.shape)  # [B, m, *input_shape]
    if rows is None:
        rows = indicator_rows(pos, ok, node.shape, lo)
        return backward(state, k, torch.cat([rows, -rows]), params, tag)
    src = node.inputs[0]
    mask = ok.to(rows.dtype).reshape(*ok.shape, *([1] * (rows.dim() - 2)))
    rows = (rows * mask).transpose(0, 1)  # [m, B, *input_shape]
    const = 0
    offset = node.op.offset()
    if offset is not None:  # <e_p, c> = c_p (zero where not ok)
        const = (offset.expand(node.shape).reshape(-1)[pos] * ok).T
        const = torch.cat([const, -const])
    return backward(state, src, torch.cat([rows, -rows]), params, tag) + const


def refine(state: BoundState, k: int, selection: tuple[Tensor, Tensor], params: Params | None = None) -> None:
    """Tighten ``state.bounds[k]`` by CROWN on the neurons of ``selection`` (see ``select_rows``).

    Row j of batch element b bounds the j-th selected neuron of b (rows past b's count are zero and
    ignored), both sides in one pass (rows ``e_j`` and ``-e_j``), in chunks that keep each coefficient
    tensor under ``cfg.max_elements`` (but of MIN_ROWS rows at least); with ``params``, each chunk has its
    own slopes. Without, the neurons of a convolution near the input take ``patches.refine``: the same
    bounds, with each row on its receptive field."""
    order, valid = selection
    most = order.shape[1]
    if most == 0:
        return
    steps = patches.plan(state, k) if params is None else None
    if steps is not None:  # a convolution's neurons: rows kept on their receptive fields
        return patches.refine(state, k, selection, steps)
    lo, hi = state.bounds[k]
    batch, numel = lo.shape[0], lo[0].numel()
    widest = max(int(torch.Size(n.shape).numel()) for n in state.graph.nodes[: k + 1])
    chunk = max(-(-MIN_ROWS // (2 * batch)), state.cfg.max_elements // (2 * batch * widest))
    lo_flat, hi_flat = lo.reshape(batch, numel), hi.reshape(batch, numel)
    for start in range(0, most, chunk):
        pos, ok = order[:, start : start + chunk], valid[:, start : start + chunk]  # [B, m]
        m = pos.shape[1]
        res = _indicator_bounds(state, k, pos, ok, params, tag=(k, start))
        old_lo, old_hi = lo_flat.gather(1, pos), hi_flat.gather(1, pos)
        lo_flat = lo_flat.scatter(1, pos, torch.where(ok, torch.maximum(old_lo, res[:m].T), old_lo))
        hi_flat = hi_flat.scatter(1, pos, torch.where(ok, torch.minimum(old_hi, -res[m:].T), old_hi))
    state.set_bounds(k, (lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape)))

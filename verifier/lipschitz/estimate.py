"""Upper bounds of a loaded model's L2 Lipschitz constant: the product of layer norms and a layer-wise
(ECLipsE-Fast-style) bound.

Both bound ``L`` with ``||f(x) - f(x')||_2 <= L ||x - x'||_2`` for every pair of inputs on the whole input
space (not only a region), in real arithmetic over the model's weights (computed in float64). With
specification rows ``C`` [..., n_out] they bound each row's map instead: ``|<c, f(x) - f(x')>| <= L_c
||x - x'||_2``, tighter than ``||c|| L`` (a margin ``f_y - f_j`` has its own constant, below ``sqrt(2) L``).

What they assume: every nonlinear operator is elementwise with slopes in a known interval on the whole real
line (``SLOPES``: ReLU / LeakyReLU, Sigmoid (1/4), Tanh, Erf, Clip, Abs, Sin/Cos, the ramp), or is max
pooling (``sqrt(K)``, K the most windows one input lies in). Anything else (products of two tensors, Exp,
Log, powers, Softplus: no global bound, or a discontinuity in PyTorch's threshold switch) is refused,
naming every such node at once. The layer-wise bound also needs a feed-forward chain with monotone
activations (slopes in [0, s]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier.errors import InputError
from verifier.graph.graph import Graph
from verifier.lipschitz.operator_norm import (
    ROUNDING_ALLOWANCE,
    LinearMap,
    chain_map,
    float64_graph,
    identity_map,
    spectral_norm_bound,
)
from verifier.ops.activations import Ramp, ReLU, SShaped
from verifier.ops.base import Affine
from verifier.ops.periodic import Periodic
from verifier.ops.piecewise import Abs, Clip
from verifier.ops.pooling import MaxPool

_SSHAPED_SLOPE = {"sigmoid": 0.25, "tanh": 1.0, "erf": 2 / math.sqrt(math.pi)}
DENSE_ENTRIES = 2**24  # the layer-wise bound materialises each layer (128 MB in float64)
SHRINK = 1e-9  # the layer-wise certificate keeps this slack (relative) against float64 rounding


def slope_range(op) -> tuple[float, float] | None:
    """``[a, b]`` holding every difference quotient ``(f(s) - f(t)) / (s - t)`` of an elementwise operator
    on the real line; None for an operator that is not one of these."""
    if isinstance(op, ReLU):
        return min(op.negative_slope, 1.0), max(op.negative_slope, 1.0)
    if isinstance(op, Ramp):
        return min(op.eta, 1.0), max(op.eta, 1.0)
    if isinstance(op, SShaped):
        return 0.0, _SSHAPED_SLOPE[op.function]
    if isinstance(op, Clip):
        return 0.0, 1.0
    if isinstance(op, (Abs, Periodic)):
        return -1.0, 1.0
    return None


def _maxpool_factor(op: MaxPool) -> float:
    """``||maxpool(a) - maxpool(b)||_2 <= sqrt(K) ||a - b||_2``: each output differs by at most the largest
    difference in its window (``|max a - max b| <= max |a - b|``), and each input lies in at most K windows:
    per dimension ``min(k, ceil(((k - 1) d + 1) / s))``."""
    k = 1
    for size, stride, dil in zip(op.kernel, op.stride, op.dilation):
        k *= min(size, math.ceil(((size - 1) * dil + 1) / stride))
    return math.sqrt(k)


def _node_factor(op) -> float | None:
    """The Lipschitz constant of a nonlinear one-input operator, or None when unknown."""
    if isinstance(op, MaxPool):
        return _maxpool_factor(op)
    slopes = slope_range(op)
    return None if slopes is None else max(abs(slopes[0]), abs(slopes[1]))


def check_supported(graph: Graph) -> None:
    """Refuse, naming every node, operators without a global Lipschitz bound."""
    bad = [(type(n.op).__name__, n.name) for n in graph.nodes[1:]
           if not isinstance(n.op, Affine) and (len(n.inputs) != 1 or _node_factor(n.op) is None)]  # fmt: skip
    if bad:
        items = ", ".join(f"{op} (node {name})" for op, name in bad)
        raise InputError(f"no global Lipschitz bound for operators: {items}")


def _is_link(graph: Graph, k: int) -> bool:
    """A one-input affine node: chains of them are composed into one linear map before taking a norm."""
    node = graph.nodes[k]
    return k > 0 and isinstance(node.op, Affine) and len(node.inputs) == 1


def affine_terms(graph: Graph, k: int) -> list[tuple[LinearMap, int]]:
    """For an affine node k: ``z_k = sum_t M_t z_{b_t} + const`` with each ``M_t`` the composed linear map of
    input t of k and the one-input affine chain above it, and ``b_t`` where that chain starts."""
    terms = []
    for i, j in enumerate(graph.nodes[k].inputs):
        steps = [(k, i)]
        while _is_link(graph, j):
            steps.insert(0, (j, 0))
            j = graph.nodes[j].inputs[0]
        terms.append((chain_map(graph, steps), j))
    return terms


def product_bound(graph: Graph, rows: Tensor | None = None) -> Tensor:
    """The product of layer norms, node by node in topological order: ``L_0 = 1``; an affine node
    ``z = sum_t M_t z_{b_t} + c`` has ``L <= sum_t ||M_t|| L_{b_t}`` (triangle inequality: residual sums
    included); a nonlinear node ``L <= lip(op) L_input``. Each ``||M_t||`` is a certified upper bound
    (``spectral_norm_bound``), over whole one-input affine chains (Conv -> BatchNorm -> Flatten -> Linear is
    one map, one norm). ``rows`` [R, n_out]: each row's bound, ``sum_t ||r M_t|| L_{b_t}`` at an affine
    output (exact row norms), else ``||r|| L_out``. Returns a scalar or [R] (float64)."""
    graph = float64_graph(graph)
    check_supported(graph)
    lip: dict[int, float] = {0: 1.0}

    def value(k: int) -> float:
        if k not in lip:
            lip[k] = sum(spectral_norm_bound(m) * lip[b] for m, b in affine_terms(graph, k))
        return lip[k]

    for k, node in enumerate(graph.nodes[1:], start=1):
        if not _is_link(graph, k) or k == graph.output:
            lip[k] = (
                _node_factor(node.op) * value(node.inputs[0]) if not isinstance(node.op, Affine) else value(k)
            )
    if rows is None:
        return torch.tensor(lip[graph.output], dtype=torch.float64)
    rows = rows.to(torch.float64)
    if not isinstance(graph.nodes[graph.output].op, Affine):
        return rows.norm(dim=1) * lip[graph.output]
    total = sum(m.compose(rows).norm(dim=1) * lip[b] for m, b in affine_terms(graph, graph.output))
    return total * (1 + ROUNDING_ALLOWANCE)


def feedforward_layers(graph: Graph) -> tuple[list[LinearMap], list[float]]:
    """A chain ``M_0, s_1, M_1, ..., s_m, M_m``: linear maps and the maximum slopes of the monotone
    activations between them (identity maps where two activations meet). Raises InputError when the graph
    is not a chain of one-input nodes or an activation is not monotone with slopes in [0, s]."""
    check_supported(graph)
    path, k = [], graph.output
    while k > 0:
        if len(graph.nodes[k].inputs) != 1:
            raise InputError(f"the layer-wise bound needs a feed-forward chain; node {graph.nodes[k].name} "
                             f"has {len(graph.nodes[k].inputs)} inputs")  # fmt: skip
        path.append(k)
        k = graph.nodes[k].inputs[0]
    maps, slopes, steps = [], [], []
    for k in reversed(path):
        op = graph.nodes[k].op
        if isinstance(op, Affine):
            steps.append((k, 0))
            continue
        a_b = slope_range(op)
        if a_b is None or a_b[0] < 0:
            raise InputError(f"the layer-wise bound needs monotone elementwise activations; node "
                             f"{graph.nodes[k].name} ({type(op).__name__}) is not one")  # fmt: skip
        n = int(torch.Size(graph.nodes[graph.nodes[k].inputs[0]].shape).numel())
        maps.append(chain_map(graph, steps) if steps else identity_map(n))
        slopes.append(a_b[1])
        steps = []
    n_out = int(torch.Size(graph.output_shape).numel())
    maps.append(chain_map(graph, steps) if steps else identity_map(n_out))
    return maps, slopes


def layerwise_bound(graph: Graph, rows: Tensor | None = None) -> Tensor:
    """A layer-wise bound in the spirit of ECLipsE-Fast (Xu & Sivaranjani 2024), closed form, no SDP.

    Activations ``z = s g(h)``, ``g`` slope-restricted in [0, 1], so ``dz~ = dz / s`` satisfies
    ``dz~_i (dh_i - dz~_i) >= 0`` for any two inputs (``dz~_i = d_i dh_i``, ``d_i in [0, 1]``). Invariant:
    ``dz_k^T P_k dz_k <= ||dx||^2`` with ``P_0 = I``. For ``dh = W dz_{k-1}`` (W the layer, times the last
    slope) and any ``lam > 0``, the S-procedure with the slope constraint gives
    ``dz_{k-1}^T P_{k-1} dz_{k-1} - dz~_k^T P_k dz~_k >= 2 lam sum_i dz~_i (dh_i - dz~_i) >= 0`` whenever
    ``[[P_{k-1}, -lam W^T], [-lam W, 2 lam I - P_k]] >= 0``, i.e. (Schur) ``P_k <= 2 lam I - lam^2 W
    P_{k-1}^-1 W^T``. We take ``lam = 1 / lambda_max(W P_{k-1}^-1 W^T)`` (which maximises the smallest
    eigenvalue of the right side) and ``P_k`` that right side minus ``SHRINK lam I`` (slack for float64
    rounding; its eigenvalues stay in [lam, 2 lam], so the inverse is well conditioned). At the last layer
    ``||W dz||^2 <= lambda_max(W P^-1 W^T) ||dx||^2``, and a row c: ``(c^T W P^-1 W^T c) ||dx||^2``.
    Never above the product of norms on the first layer (``P_1 >= I / ||W_1||^2``); tested below it on
    random MLPs. Needs a feed-forward chain of affine maps and monotone activations (``feedforward_layers``)
    and dense layers of at most ``DENSE_ENTRIES`` entries."""
    graph = float64_graph(graph)
    maps, slopes = feedforward_layers(graph)
    if any(m.n_in * m.n_out > DENSE_ENTRIES for m in maps):
        raise InputError(
            f"the layer-wise bound materialises every layer; one has over {DENSE_ENTRIES} entries"
        )
    q, scale = None, 1.0  # q = P^-1; None is the identity
    for m, s in zip(maps[:-1], slopes):
        w = m.dense() * scale
        b = w @ w.T if q is None else w @ q @ w.T
        b = (b + b.T) / 2
        beta = float(torch.linalg.eigvalsh(b).max())
        if beta <= 0:  # the layer is zero: the network is constant
            return torch.zeros(() if rows is None else rows.shape[0], dtype=torch.float64)
        lam = 1.0 / beta
        eye = torch.eye(b.shape[0], dtype=torch.float64)
        p = (2 * lam - SHRINK * lam) * eye - lam * lam * b
        q = torch.cholesky_inverse(torch.linalg.cholesky(p))
        scale = s
    w = maps[-1].dense() * scale
    q = torch.eye(w.shape[1], dtype=torch.float64) if q is None else q
    if rows is None:
        value = torch.linalg.eigvalsh(w @ q @ w.T).max().clamp(min=0).sqrt()
    else:
        rw = rows.to(torch.float64) @ w
        value = ((rw @ q) * rw).sum(1).clamp(min=0).sqrt()
    return value * (1 + ROUNDING_ALLOWANCE)


UPPER_METHODS = {"product": product_bound, "layerwise": layerwise_bound}


def tightest_bound(graph: Graph, rows: Tensor | None = None) -> Tensor:
    """The smaller of the layer-wise bound (where it applies) and the product of norms, per row."""
    bound = product_bound(graph, rows)
    try:
        return torch.minimum(bound, layerwise_bound(graph, rows))
    except InputError:
        return bound

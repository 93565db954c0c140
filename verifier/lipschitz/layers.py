"""Layers whose L2 Lipschitz constant is bounded by construction: any value of their free parameters gives a
1-Lipschitz map, so unconstrained training keeps the guarantee.

* :class:`SandwichLayer` (Wang & Manchester 2023): ``y = sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)`` with
  ``Psi = diag(exp(d))`` and ``[A^T; B^T]`` a Cayley transform (orthonormal columns, ``A A^T + B B^T = I``).
  1-Lipschitz for any activation slope-restricted to [0, 1]: with ``w = Psi (z - z')`` the activation's
  incremental constraint ``(z - z')_i (v - v')_i >= (z - z')_i^2`` gives ``sqrt(2) w^T B dx >= |w|^2``, so
  ``|dx|^2 - |dy|^2 = |dx|^2 - 2 |w|^2 + 2 |B^T w|^2 >= |dx - sqrt(2) B^T w|^2 >= 0``.
* :class:`AOLLinear` (Prach & Lampert 2022): ``W diag(s)^-1/2`` with ``s_j = sum_i |W^T W|_ij``; the rescaled
  matrix has spectral norm <= 1.
* :class:`OrthogonalLinear`: a Cayley transform, orthonormal columns (rows when narrowing): norm exactly 1.
* :class:`MaxMin`: the two halves of the channels, sorted pairwise ``(max(a, b), min(a, b))`` (GroupSort of
  group size 2); 1-Lipschitz in L2 and gradient-norm preserving (its Jacobian is a permutation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cayley(weight: Tensor) -> Tensor:
    """Orthonormal columns from free parameters: ``W = [X; Y]`` ([n + m, n], X [n, n], Y [m, n]) gives
    ``Q = [(I - Z)(I + Z)^-1; -2 Y (I + Z)^-1]`` with ``Z = X - X^T + Y^T Y``, and ``Q^T Q = I``.

    ``I + Z`` is invertible (its symmetric part ``I + Y^T Y`` is positive definite), and
    ``Q^T Q = R^T ((I - Z)^T (I - Z) + 2 (Z + Z^T)) R = R^T (I + Z)^T (I + Z) R = I`` with ``R = (I + Z)^-1``.
    """
    n = weight.shape[1]
    x, y = weight[:n], weight[n:]
    z = x - x.T + y.T @ y
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    return torch.linalg.solve(eye + z, torch.cat([eye - z, -2.0 * y]), left=False)  # Q (I + Z) = rhs


def _cayley_init(rows: int, cols: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Free Cayley parameters [rows, cols] and their scale (the Frobenius norm, so the first map is the
    Cayley transform of the initial draw; training can move the norm and the direction apart)."""
    weight = torch.empty(rows, cols)
    nn.init.xavier_normal_(weight)
    return nn.Parameter(weight), nn.Parameter(weight.norm().detach().clone())


def _normalised_cayley(weight: Tensor, scale: Tensor) -> Tensor:
    return cayley(scale * weight / weight.norm())


class SandwichLayer(nn.Module):
    """A 1-Lipschitz (L2) layer ``in_features -> out_features`` of Wang & Manchester 2023.

    With ``activation``: ``y = sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)``; without (an output layer):
    ``y = B x + b``, whose norm is at most 1 since ``B B^T <= I``. Free parameters: ``weight``
    ([out + in, out], through :func:`cayley`), ``scale``, ``psi`` (``d``, ``Psi = diag(exp(d))``), ``bias``.
    """

    def __init__(self, in_features: int, out_features: int, activation: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight, self.scale = _cayley_init(in_features + out_features, out_features)
        self.psi = nn.Parameter(torch.zeros(out_features)) if activation else None
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-0.5, 0.5) / math.sqrt(in_features))

    def weights(self) -> tuple[Tensor, Tensor | None]:
        """``(W_in, W_out)``: ``y = W_out relu(W_in x + b)`` ([out, in] and [out, out]), or ``y = W_in x + b``
        (``W_out`` None) without activation."""
        q = _normalised_cayley(self.weight, self.scale)
        a_t, b_t = q[: self.out_features], q[self.out_features :]  # A^T [out, out], B^T [in, out]
        if not self.activation:
            return b_t.T, None
        w_in = math.sqrt(2.0) * torch.exp(-self.psi)[:, None] * b_t.T  # sqrt(2) Psi^-1 B
        w_out = math.sqrt(2.0) * a_t * torch.exp(self.psi)[None, :]  # sqrt(2) A^T Psi
        return w_in, w_out

    def forward(self, x: Tensor) -> Tensor:
        w_in, w_out = self.weights()
        h = F.linear(x, w_in, self.bias)
        return h if w_out is None else F.linear(F.relu(h), w_out)


class AOLLinear(nn.Linear):
    """A linear layer of spectral norm at most 1 by almost-orthogonal rescaling (Prach & Lampert 2022):
    ``W D`` with ``D = diag(s)^-1/2``, ``s_j = sum_i |W^T W|_ij``. With ``P = W^T W`` and
    ``2 |u_i u_j| <= u_i^2 + u_j^2``: ``|W D v|^2 = v^T D P D v <= sum_ij |P_ij| (d_i^2 v_i^2 + d_j^2 v_j^2) / 2
    = sum_i d_i^2 v_i^2 s_i = |v|^2``. A zero column (``s_j = 0``) stays zero."""

    def rescaled_weight(self) -> Tensor:
        s = (self.weight.T @ self.weight).abs().sum(dim=1)
        d = torch.where(s > 0, s.clamp_min(torch.finfo(s.dtype).tiny).rsqrt(), torch.zeros_like(s))
        return self.weight * d[None, :]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.rescaled_weight(), self.bias)


class OrthogonalLinear(nn.Module):
    """A linear layer with orthonormal columns (``in <= out``: an isometry) or rows (``in > out``), by the
    Cayley transform of free parameters: spectral norm 1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        small, large = min(in_features, out_features), max(in_features, out_features)
        self.weight, self.scale = _cayley_init(large, small)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def orthogonal_weight(self) -> Tensor:
        q = _normalised_cayley(self.weight, self.scale)  # [large, small], orthonormal columns
        return q if self.out_features >= self.in_features else q.T

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.orthogonal_weight(), self.bias)


class MaxMin(nn.Module):
    """GroupSort with groups of two: the channels (dimension ``dim``, even size) cut into halves a and b,
    ``y = cat(max(a, b), min(a, b))``. 1-Lipschitz in L2 and gradient-norm preserving: on each pair it is
    the identity or the swap.

    Exported to ONNX as ``b + relu(a - b)`` and ``a - relu(a - b)`` (Split, Sub, Relu, Add, Sub, Concat),
    which equal max and min in exact arithmetic (in floating point within an ulp), so that the file loads
    back here with the shared ReLU that keeps max and min correlated, and runs in any ONNX runtime."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            a, b = x.chunk(2, dim=self.dim)
            r = F.relu(a - b)
            return torch.cat([b + r, a - r], dim=self.dim)
        if x.shape[self.dim] % 2:
            raise ValueError(f"MaxMin needs an even number of channels, got {x.shape[self.dim]}")
        a, b = x.chunk(2, dim=self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

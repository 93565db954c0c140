"""Layers whose L2 Lipschitz constant is bounded by construction: any value of their free parameters gives a
1-Lipschitz map, so unconstrained training keeps the guarantee.

* :class:`SandwichLayer` (Wang & Manchester 2023): ``y = sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)`` with
  ``Psi = diag(exp(d))`` and ``[A^T; B^T]`` a Cayley transform (orthonormal columns, ``A A^T + B B^T = I``).
  1-Lipschitz for any activation slope-restricted to [0, 1]: with ``w = Psi (z - z')`` the activation's
  incremental constraint ``(z - z')_i (v - v')_i >= (z - z')_i^2`` gives ``sqrt(2) w^T B dx >= |w|^2``, so
  ``|dx|^2 - |dy|^2 = |dx|^2 - 2 |w|^2 + 2 |B^T w|^2 >= |dx - sqrt(2) B^T w|^2 >= 0``.
* :class:`SandwichConv2d`: the same layer with ``A``, ``B`` circular convolutions on a fixed ``n x n``
  input, the Cayley transform taken per spatial frequency (the DFT makes the convolutions block diagonal).
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
    """Orthonormal columns from free parameters: ``W = [X; Y]`` ([..., n + m, n], X [n, n], Y [m, n], real
    or complex, batched over the leading dimensions) gives ``Q = [(I - Z)(I + Z)^-1; -2 Y (I + Z)^-1]`` with
    ``Z = X - X^* + Y^* Y``, and ``Q^* Q = I``.

    ``I + Z`` is invertible (its Hermitian part ``I + Y^* Y`` is positive definite), and
    ``Q^* Q = R^* ((I - Z)^* (I - Z) + 2 (Z + Z^*)) R = R^* (I + Z)^* (I + Z) R = I`` with ``R = (I + Z)^-1``.
    The transform commutes with complex conjugation: conjugate parameters give the conjugate ``Q``.
    """
    n = weight.shape[-1]
    x, y = weight[..., :n, :], weight[..., n:, :]
    z = x - x.mH + y.mH @ y
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    return torch.linalg.solve(eye + z, torch.cat([eye - z, -2.0 * y], dim=-2), left=False)  # Q (I + Z) = rhs


def _cayley_init(*shape: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Free Cayley parameters of this shape and their scale (the Frobenius norm, so the first map is the
    Cayley transform of the initial draw; training can move the norm and the direction apart)."""
    weight = torch.empty(shape)
    nn.init.xavier_normal_(weight)
    return nn.Parameter(weight), nn.Parameter(weight.norm().detach().clone())


def _normalised(weight: Tensor, scale: Tensor) -> Tensor:
    return scale * weight / weight.norm()


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
        q = cayley(_normalised(self.weight, self.scale))
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


def _circular(response: Tensor, x: Tensor) -> Tensor:
    """The real circular convolution of ``x`` [N, c_in, n, n] with frequency response ``response``
    [n, n // 2 + 1, c_out, c_in] (one matrix per frequency of ``rfft2``): [N, c_out, n, n].

    Real because the response is that of a real kernel on the stored half-plane; ``irfft2`` supplies the
    other half as the conjugate, which is the response there (``response(-w) = conj(response(w))``)."""
    spectrum = torch.einsum("uvoi,Niuv->Nouv", response, torch.fft.rfft2(x))
    return torch.fft.irfft2(spectrum, s=x.shape[-2:])


class SandwichConv2d(nn.Module):
    """The convolutional Sandwich layer of Wang & Manchester 2023 on a fixed ``[in_channels, n, n]`` input
    (stride 1, circular padding): 1-Lipschitz in L2 for every parameter value.

    ``y = sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)`` as in :class:`SandwichLayer`, with ``A``, ``B``
    circular convolutions and ``Psi = diag(exp(d))``, ``b`` per output channel (repeated over space). The
    2-D DFT turns a circular convolution into one matrix per frequency ``w``; the free kernel
    ``[out + in, out, k, k]`` (centred, zero-padded to ``n x n``) gives ``W(w) = [X(w); Y(w)]``, and the
    complex :func:`cayley` gives ``Q(w) = [Q_A(w); Q_B(w)]`` with ``Q^* Q = I``; ``A(w) = Q_A(w)^*``,
    ``B(w) = Q_B(w)^*``. The kernel is real, so ``W(-w) = conj(W(w))``, hence ``Q(-w) = conj(Q(w))``, and
    ``A``, ``B`` are real operators (only the half-plane of ``rfft2`` is computed). In the unitary DFT the
    adjoint of a convolution is the per-frequency adjoint, so ``A A^T + B B^T = I`` as operators on
    ``R^(out n n)``; ``Psi`` acts on channels and commutes with the DFT. The dense layer's proof then holds
    word for word. ``A`` and ``B`` are full ``n x n`` circular kernels, not ``k x k`` ones.

    Without activation (an output layer): ``y = B x + b``, norm at most 1 since ``B B^T <= I``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, input_size: int, activation: bool = True
    ):
        super().__init__()
        if not 1 <= kernel_size <= input_size:
            raise ValueError(f"kernel_size must be in [1, input_size={input_size}], got {kernel_size}")
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.kernel_size, self.input_size = kernel_size, input_size
        self.weight, self.scale = _cayley_init(
            in_channels + out_channels, out_channels, kernel_size, kernel_size
        )
        self.psi = nn.Parameter(torch.zeros(out_channels)) if activation else None
        fan_in = in_channels * kernel_size**2
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-0.5, 0.5) / math.sqrt(fan_in))

    def responses(self) -> tuple[Tensor, Tensor]:
        """``(Q_A, Q_B)``: [n, n // 2 + 1, out, out] and [n, n // 2 + 1, in, out], complex, on the half-plane
        of ``rfft2``; ``A(w) = Q_A(w)^*``, ``B(w) = Q_B(w)^*``."""
        k, n = self.kernel_size, self.input_size
        kernel = F.pad(_normalised(self.weight, self.scale), (0, n - k, 0, n - k))
        kernel = torch.roll(kernel, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))  # centred: a "same" conv
        q = cayley(torch.fft.rfft2(kernel).permute(2, 3, 0, 1))
        return q[..., : self.out_channels, :], q[..., self.out_channels :, :]

    def pre_activation(self, q_b: Tensor, x: Tensor) -> Tensor:
        """``sqrt(2) Psi^-1 B x`` (``B x`` without activation), no bias: [N, out, n, n]."""
        h = _circular(q_b.mH, x)
        return h if self.psi is None else math.sqrt(2.0) * torch.exp(-self.psi)[:, None, None] * h

    def post_activation(self, q_a: Tensor, v: Tensor) -> Tensor:
        """``sqrt(2) A^T Psi v``: [N, out, n, n]."""
        return math.sqrt(2.0) * _circular(q_a, torch.exp(self.psi)[:, None, None] * v)

    def forward(self, x: Tensor) -> Tensor:
        q_a, q_b = self.responses()
        h = self.pre_activation(q_b, x) + self.bias[:, None, None]
        return h if not self.activation else self.post_activation(q_a, F.relu(h))

    def dense_weights(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(W_in, b, W_out)`` on flattened ``[c, n, n]`` tensors: ``y = W_out relu(W_in x + b)``
        (``W_in`` [out n n, in n n], ``W_out`` [out n n, out n n]), or ``y = W_in x + b`` (``W_out`` None),
        each map applied to the identity basis. Memory: ``out n^2 max(in, out) n^2`` entries."""
        q_a, q_b = self.responses()
        n2 = self.input_size**2
        basis = lambda c: torch.eye(c * n2, dtype=q_b.real.dtype).reshape(c * n2, c, *(self.input_size,) * 2)
        w_in = self.pre_activation(q_b, basis(self.in_channels)).flatten(1).T
        w_out = self.post_activation(q_a, basis(self.out_channels)).flatten(1).T if self.activation else None
        return w_in, self.bias.repeat_interleave(n2), w_out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"input_size={self.input_size}, activation={self.activation}"
        )


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
        q = cayley(_normalised(self.weight, self.scale))  # [large, small], orthonormal columns
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

"""The table of operator cases for the generic soundness test: add a row when you add an operator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tests.helpers import make_box
from verifier.ops.activations import Ramp, ReLU, SShaped
from verifier.ops.base import Op
from verifier.ops.conv import Conv, ConvTranspose
from verifier.ops.elementwise import Exp, Log, Power, Softplus
from verifier.ops.linear import BatchNorm, LeftLinear, Linear, ScaleShift, Sum
from verifier.ops.periodic import Periodic
from verifier.ops.piecewise import Abs, Clip
from verifier.ops.pooling import AvgPool, MaxPool
from verifier.ops.product import Product
from verifier.ops.reduce import Reduce
from verifier.ops.resize import Interpolate
from verifier.ops.shape import Rearrange
from verifier.ops.smooth import GELU, SiLU
from verifier.ops.steps import Step

_gen = torch.Generator().manual_seed(1234)


def _w(*shape, scale=1.0):
    return scale * torch.randn(shape, generator=_gen)


@dataclass(frozen=True)
class Case:
    name: str
    op: Op
    in_shapes: tuple[tuple[int, ...], ...]
    relu_lower: str = "adaptive"
    # for operators defined on part of the line: a nondecreasing map applied to both ends of every box
    domain: Callable[[torch.Tensor], torch.Tensor] | None = None

    def boxes(self, kind: str, batch: int, dtype: torch.dtype, gen: torch.Generator) -> list[tuple]:
        """One batch of boxes of the given kind per input, mapped into the operator's domain."""
        boxes = [make_box(kind, shape, batch, dtype, gen) for shape in self.in_shapes]
        return boxes if self.domain is None else [(self.domain(lo), self.domain(hi)) for lo, hi in boxes]


def _positive(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(t / 4)  # boxes of every kind, squeezed into (0, inf) (wide ones: about e^-10 to e^10)


def _negative(t: torch.Tensor) -> torch.Tensor:
    return -torch.exp(-t / 4)


def _batch_norm(channels: int) -> torch.nn.BatchNorm2d:
    """A BatchNorm module with random affine parameters and running statistics (a live graph's view)."""
    bn = torch.nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(_w(channels))
        bn.running_var.copy_(_w(channels).abs() + 0.1)
    return bn


def _index(shape, fn):
    return fn(torch.arange(int(torch.Size(shape).numel())).reshape(shape)).flatten()


CASES = (
    Case("linear", Linear(_w(4, 6), _w(4)), ((6,),)),
    Case("linear_nobias_3d", Linear(_w(3, 5)), ((2, 5),)),
    Case("left_linear", LeftLinear(_w(4, 3)), ((3, 2),)),
    Case("left_linear_3d", LeftLinear(_w(2, 3)), ((2, 3, 4),)),
    Case("scale_shift_channel", ScaleShift(_w(2, 1, 1), _w(2, 1, 1)), ((2, 3, 3),)),
    Case("scale_shift_with_zero_scale", ScaleShift(torch.tensor([1.5, 0.0, -2.0]), None), ((3,),)),
    Case("shift_only", ScaleShift(None, _w(4)), ((4,),)),
    Case("batch_norm_live", BatchNorm(_batch_norm(2), 3), ((2, 3, 3),)),
    Case("sum_add", Sum((1.0, 1.0)), ((2, 3), (2, 3))),
    Case("sum_sub", Sum((1.0, -1.0)), ((5,), (5,))),
    Case("sum_broadcast", Sum((1.0, -1.0), ((2, 3), (3,)), (2, 3)), ((2, 3), (3,))),
    Case("sum_broadcast_both", Sum((1.0, 1.0), ((2, 1), (1, 3)), (2, 3)), ((2, 1), (1, 3))),
    Case("conv2d_stride_pad", Conv(_w(3, 2, 3, 3), _w(3), (2, 2), (1, 1), (1, 1), 1), ((2, 5, 5),)),
    Case("conv2d_groups_dilation", Conv(_w(4, 1, 2, 2), None, (1, 1), (0, 1), (2, 2), 2), ((2, 5, 4),)),
    Case("conv1d", Conv(_w(2, 3, 3), _w(2), (2,), (1,), (1,), 1), ((3, 7),)),
    # few input channels, strides that do or do not divide the kernel and the input (phase grids with
    # cells outside the input), dilation, groups, padding wider than the kernel reach
    Case("conv2d_first_layer_k4s2", Conv(_w(4, 1, 4, 4), _w(4), (2, 2), (1, 1), (1, 1), 1), ((1, 6, 6),)),
    Case("conv2d_stride3_odd_input", Conv(_w(3, 2, 2, 3), None, (3, 2), (1, 0), (1, 1), 1), ((2, 7, 5),)),
    Case("conv2d_dilation_groups_s23", Conv(_w(4, 1, 3, 2), _w(4), (2, 3), (2, 1), (2, 2), 2), ((2, 7, 8),)),
    Case("conv2d_stride_over_kernel", Conv(_w(2, 1, 1, 2), None, (3, 3), (3, 0), (1, 1), 1), ((1, 4, 5),)),
    Case("conv1d_strided_dilated", Conv(_w(3, 1, 3), _w(3), (2,), (2,), (2,), 1), ((1, 9),)),
    Case(
        "conv_transpose",
        ConvTranspose(_w(2, 3, 3, 3), _w(3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
        ((2, 3, 3),),
    ),
    Case("conv_transpose_1d", ConvTranspose(_w(2, 3, 3), _w(3), (2,), (1,), (1,), (2,), 1), ((2, 4),)),
    Case("conv_transpose_1d_groups", ConvTranspose(_w(4, 1, 2), None, (3,), (0,), (2,), (1,), 2), ((4, 3),)),
    Case("avgpool2d", AvgPool((2, 2), (2, 2), (0, 0)), ((2, 4, 4),)),
    Case("avgpool2d_pad_exclude", AvgPool((3, 3), (1, 1), (1, 1), False, False), ((1, 4, 4),)),
    Case("avgpool1d", AvgPool((3,), (2,), (1,)), ((2, 7),)),
    Case("reshape", Rearrange((12,), (3, 4)), ((2, 6),)),
    Case(
        "permute", Rearrange((24,), (4, 2, 3), _index((2, 3, 4), lambda t: t.permute(2, 0, 1))), ((2, 3, 4),)
    ),
    Case("slice_and_copy", Rearrange((6,), (5,), torch.tensor([0, 2, 2, 5, 1])), ((6,),)),
    Case("concat", Rearrange((4, 6), (10,), torch.arange(10)), ((4,), (2, 3))),
    Case(
        "pad_with_fill",
        Rearrange((3,), (5,), torch.tensor([-1, 0, 1, 2, -1]), torch.tensor([0.5, 0, 0, 0, -2.0])),
        ((3,),),
    ),
    Case("reduce_sum", Reduce((1,)), ((3, 4),)),
    Case("reduce_mean_keepdim", Reduce((0, 2), keepdim=True, scale=1 / 6), ((2, 4, 3),)),
    Case("reduce_negative_scale", Reduce((0,), scale=-2.5), ((5, 2),)),
    Case("interpolate_linear", Interpolate("linear", scale=(2.5,)), ((2, 4),)),
    Case(
        "interpolate_bilinear_corners", Interpolate("bilinear", size=(5, 3), align_corners=True), ((2, 3, 4),)
    ),
    Case("interpolate_trilinear", Interpolate("trilinear", size=(3, 4, 2)), ((1, 2, 3, 3),)),
    Case("relu", ReLU(), ((3, 4),)),
    Case("relu_zero_lower", ReLU(), ((7,),), relu_lower="zero"),
    Case("leaky_relu", ReLU(0.1), ((6,),)),
    Case("leaky_relu_steep", ReLU(2.5), ((6,),)),
    # breakpoints from below the clamp (-1, 1e-5: used as 1e-4) to wide, so that the boxes of every kind
    # hold 0, r, both or neither
    Case("param_ramp", Ramp(torch.tensor([-1.0, 1e-5, 0.05, 0.5, 1.0, 2.0, 4.0, 8.0])), ((8,),)),
    Case("param_ramp_eta", Ramp(torch.tensor([0.02, 0.3, 1.0, 1.5, 3.0, 6.0]), eta=0.1), ((6,),)),
    Case(
        "param_ramp_flat_lines", Ramp(torch.tensor([0.1, 0.7, 2.0, 5.0]), eta=0.2), ((4,),), relu_lower="zero"
    ),
    Case("param_ramp_channels", Ramp(torch.tensor([0.1, 1.0, 3.0]), eta=0.05), ((3, 2, 2),)),
    Case("param_ramp_last_dim", Ramp(torch.tensor([0.2, 1.0, 2.5]), eta=0.01, channel_dim=-1), ((2, 3),)),
    Case("param_ramp_per_neuron", Ramp(0.1 + 3 * _w(2, 3).abs(), eta=0.3, channel_dim=None), ((2, 3),)),
    Case("sigmoid", SShaped("sigmoid"), ((3, 5),)),
    Case("tanh", SShaped("tanh"), ((2, 6),)),
    Case("erf", SShaped("erf"), ((3, 5),)),
    Case("exp", Exp(), ((2, 5),)),
    Case("log", Log(), ((6,),), domain=_positive),
    Case("softplus", Softplus(), ((2, 4),)),
    Case("softplus_beta_low_threshold", Softplus(2.0, 3.0), ((7,),)),
    Case("sqrt", Power(0.5), ((6,),), domain=_positive),
    Case("sqrt_from_zero", Power(0.5), ((6,),), domain=torch.relu),  # boxes [0, u]: vertical tangent at 0
    Case("reciprocal_positive", Power(-1.0), ((5,),), domain=_positive),
    Case("reciprocal_negative", Power(-1.0), ((5,),), domain=_negative),
    Case("square", Power(2.0), ((2, 3),)),
    Case("fourth_power", Power(4.0), ((5,),)),
    Case("cube_positive", Power(3.0), ((5,),), domain=_positive),
    Case("cube_negative", Power(3.0), ((5,),), domain=_negative),
    Case("inverse_square_negative", Power(-2.0), ((5,),), domain=_negative),
    Case("power_1.5", Power(1.5), ((5,),), domain=torch.relu),
    Case("power_-0.5", Power(-0.5), ((5,),), domain=_positive),
    Case("constant_power", Power(0.0), ((4,),)),
    Case("identity_power", Power(1.0), ((4,),)),
    Case("cube", Power(3.0), ((3, 4),)),
    Case("fifth_power", Power(5.0), ((6,),)),
    Case("cube_around_inflection", Power(3.0), ((6,),), domain=lambda t: t / 4),
    Case("abs", Abs(), ((3, 4),)),
    Case("abs_zero_lower", Abs(), ((7,),), relu_lower="zero"),
    Case("clip_both", Clip(-0.5, 1.5), ((2, 5),)),
    Case("clip_narrow", Clip(0.25, 0.25 + 1e-5), ((6,),)),
    Case("clip_min", Clip(low=-1.0), ((6,),)),
    Case("clip_max", Clip(high=0.5), ((6,),)),
    Case("clip_max_zero_lower", Clip(high=-1.0), ((6,),), relu_lower="zero"),
    Case("sin", Periodic("sin"), ((3, 5),)),
    Case("cos", Periodic("cos"), ((3, 5),)),
    Case("sin_far", Periodic("sin"), ((8,),), domain=lambda t: t + 100.0),
    Case("gelu", GELU(), ((3, 5),)),
    Case("gelu_tanh", GELU("tanh"), ((3, 5),)),
    # boxes shifted onto the inflection point sqrt(2) and GELU's minimum near -0.75
    Case("gelu_at_inflection", GELU(), ((6,),), domain=lambda t: t / 4 + 1.4142135623730951),
    Case("gelu_at_minimum", GELU(), ((6,),), domain=lambda t: t / 4 - 0.75),
    Case("silu", SiLU(), ((3, 5),)),
    Case("silu_at_inflection", SiLU(), ((6,),), domain=lambda t: t / 2 - 2.4),
    Case("sign", Step("sign"), ((3, 4),)),
    Case("floor", Step("floor"), ((3, 4),)),
    Case("ceil", Step("ceil"), ((3, 4),)),
    Case("round", Step("round"), ((3, 4),)),
    # box ends on the jumps themselves (integers, half-integers, zero), degenerate boxes there too
    Case("floor_ends_on_jumps", Step("floor"), ((6,),), domain=lambda t: torch.round(2 * t) / 2),
    Case("ceil_ends_on_jumps", Step("ceil"), ((6,),), domain=lambda t: torch.round(2 * t) / 2),
    Case("round_ends_on_jumps", Step("round"), ((6,),), domain=lambda t: torch.round(2 * t) / 2),
    Case("sign_ends_on_zero", Step("sign"), ((6,),), domain=lambda t: torch.round(t)),
    Case("product", Product(), ((2, 3), (2, 3))),
    Case("product_broadcast", Product(((2, 3), (3,)), (2, 3)), ((2, 3), (3,))),
    Case("product_outer", Product(((2, 1), (1, 3)), (2, 3)), ((2, 1), (1, 3))),
    Case("product_positive", Product(), ((4,), (4,)), domain=_positive),
    Case("product_mixed_signs", Product(), ((4,), (4,)), domain=lambda t: t - 2.0),
    Case("maxpool", MaxPool((2, 2), (2, 2), (0, 0)), ((2, 4, 4),)),
    Case("maxpool_overlap_pad", MaxPool((3, 3), (2, 2), (1, 1)), ((1, 5, 5),)),
    Case("maxpool_dilation", MaxPool((2, 2), (1, 1), (0, 0), (2, 2)), ((1, 4, 4),)),
    Case("maxpool_1d", MaxPool((1, 3), (1, 2), (0, 1), one_d=True), ((2, 7),)),
)

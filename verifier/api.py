"""Public API: load a model into a bound-propagation graph and bound it over input regions.

>>> model = verifier.load("net.onnx")
>>> b = model.bounds(verifier.LinfBall(x, eps=0.01), method="crown")   # b.lower, b.upper: [B, *out]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, fx, nn

from verifier.engine.bounds import compute_bounds
from verifier.engine.state import METHODS, BoundConfig
from verifier.errors import InputError, ModelLoadError, UnsupportedOperatorError
from verifier.graph import onnx_import
from verifier.graph.fx_import import trace, translate
from verifier.graph.graph import Graph, prune
from verifier.graph.simplify import fold_scale_shift
from verifier.lipschitz.certify import LIPSCHITZ_METHODS, certified_radius, combined_bounds, lipschitz_bounds
from verifier.lipschitz.estimate import UPPER_METHODS
from verifier.lipschitz.sampled import SampleConfig, sampled_bound
from verifier.spec.regions import Region

__all__ = ["METHODS", "BoundedModel", "Bounds", "load", "supported_onnx_operators"]


class Bounds(NamedTuple):
    lower: Tensor
    upper: Tensor | None


class BoundedModel:
    """A model translated into a bound-propagation graph. Float32 on the CPU unless moved with ``to``."""

    def __init__(self, graph: Graph, source: str = "<module>", module: nn.Module | None = None):
        self.graph = graph
        self.source = source
        self.module = module  # the live module (``load(..., live=True)``), else None

    input_shape = property(
        lambda self: self.graph.input_shape,
        doc="per-sample input shape (flat (n,) with "
        "several inputs: their row-major concatenation, what regions are over)",
    )
    input_shapes = property(lambda self: self.graph.input_shapes, doc="per-sample shape of each model input")
    output_shape = property(lambda self: self.graph.output_shape, doc="per-sample output shape")
    has_batch_dim = property(lambda self: self.graph.batched, doc="whether the source model's input has one")

    def to(self, device=None, dtype=None) -> BoundedModel:
        """The model on ``device`` / in ``dtype``. A live model moves its module (in place, as
        ``module.to`` does) and the graph's constants; a live view also follows ``module.to`` by itself,
        except for constants that are not parameters or BatchNorm statistics."""
        if self.module is not None:
            self.module.to(device=device, dtype=dtype)
        return BoundedModel(self.graph.to(device, dtype), self.source, self.module)

    def with_batch_statistics(self, x: Tensor) -> tuple[Tensor, BoundedModel]:
        """Training-mode forward pass of a live model: BatchNorm layers normalise by the statistics of the
        batch ``x`` (and update the module's running statistics when it is in training mode, as torch
        does). Returns the outputs and a view whose bounds use this batch's BatchNorm maps: the function
        that produced the outputs. Other models: ``(self(x), self)``."""
        if self.module is None:
            return self(x), self
        x = self._as_input(x)
        out, graph = self.graph.with_batch_statistics(x)
        graph = prune(fold_scale_shift(list(graph.nodes)), graph.output, graph.batched)
        return out, BoundedModel(graph, self.source, self.module)

    def _like(self) -> Tensor | None:
        for node in self.graph.nodes:
            for value in vars(node.op).values() if node.op is not None else ():
                if isinstance(value, Tensor) and value.is_floating_point():
                    return value
        return None

    def _check_input(self, x: Tensor, what: str) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"{what} has shape {tuple(x.shape)}; expected (batch, *{self.input_shape})")

    def __call__(self, x: Tensor | tuple[Tensor, ...]) -> Tensor:
        """Forward pass on x of shape [B, *input_shape], or on a tuple of the model's inputs, each
        [B, *input_shapes[i]] (cast to the model's device and precision)."""
        return self.graph.forward(self._as_input(x))

    def join_inputs(self, xs: tuple[Tensor, ...]) -> Tensor:
        """The flat concatenation [B, *input_shape] of the model's inputs ``xs``, each [B, *input_shapes[i]]:
        what a region over several inputs is made of, e.g. ``Box(model.join_inputs((lx, ly)), ...)``."""
        return self.graph.join_inputs(tuple(torch.as_tensor(x) for x in xs))

    def split_input(self, x: Tensor) -> tuple[Tensor, ...]:
        """The model's inputs, each [B, *input_shapes[i]], of the engine input ``x`` [B, *input_shape]."""
        return self.graph.split_input(x)

    def _as_input(self, x: Tensor | tuple[Tensor, ...]) -> Tensor:
        x = self.join_inputs(x) if _is_several(x) else torch.as_tensor(x)
        self._check_input(x, "input")
        like = self._like()
        if like is not None:
            x = x.to(like.device, like.dtype)
        elif not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if not torch.isfinite(x).all():
            raise InputError("input contains NaN or inf")
        return x

    def bounds(self, region: Region, method: str = "crown", C: Tensor | None = None, *,
               relu_lower: str = "adaptive", grad: bool = False, upper: bool = True,
               stop: Callable[[], bool] | None = None) -> Bounds:  # fmt: skip
        """Sound bounds of ``f(x)`` (shape [B, *output_shape]) or of ``C f(x)`` (C: [B, S, n_out] -> [B, S])
        for every x in the region. ``grad=True`` keeps the computation differentiable; ``upper=False``
        computes the lower bound only (half the work for CROWN) and returns ``upper=None``. ``stop`` (e.g.
        a deadline's ``expired``) is asked between alpha-CROWN's optimisation steps: True ends it with
        the best bounds so far, sound but looser."""
        return Bounds(*self._bound(region, method, C, relu_lower, grad, upper=upper, stop=stop))

    def margins(self, region: Region, labels: Tensor, method: str = "crown", *,
                relu_lower: str = "adaptive", grad: bool = False) -> Tensor:  # fmt: skip
        """Certified lower bounds of ``f_y - f_j`` for j != y: [B, n_classes - 1]; all > 0 proves robustness."""
        n = int(torch.Size(self.output_shape).numel())
        labels = torch.as_tensor(labels).reshape(-1)
        batch = region.box()[0].shape[0]
        if labels.is_floating_point() or labels.numel() != batch or (labels < 0).any() or (labels >= n).any():
            raise InputError(f"labels must be {batch} integers in [0, {n}), got {labels.tolist()}")
        C = margin_rows(labels, n, region.box()[0])
        return self._bound(region, method, C, relu_lower, grad, upper=False)[0]

    def _bound(self, region, method, C, relu_lower, grad, upper, stop=None):
        like = self._like()
        if like is not None:  # bounds are computed in the model's precision, on its device
            region = region.to(like.device, like.dtype)
        lo, _ = region.box()
        self._check_input(lo, "region")
        batch, n_out = lo.shape[0], int(torch.Size(self.output_shape).numel())
        spec = self._spec(C, batch, n_out, lo)
        if relu_lower not in ("adaptive", "zero"):
            raise InputError(f"relu_lower must be 'adaptive' or 'zero', got {relu_lower!r}")
        lipschitz = method in LIPSCHITZ_METHODS
        if lipschitz and grad:
            raise InputError(f"method {method!r} gives no gradients (its constants are computed in float64)")
        if lipschitz:  # f(c) +- L_C r over an L2 ball, alone or intersected with CROWN's bounds
            lower, upper_b = lipschitz_bounds(self.graph, region, spec)
            if method == "crown+lipschitz":
                cfg = BoundConfig(method="crown", relu_lower=relu_lower)
                with torch.no_grad():
                    crown = compute_bounds(self.graph, region, cfg, spec, upper=upper)
                lower, upper_b = combined_bounds((lower, upper_b), crown)
            upper_b = upper_b if upper else None
        else:
            cfg = BoundConfig(method=method, relu_lower=relu_lower)
            with torch.enable_grad() if grad else torch.no_grad():
                lower, upper_b = compute_bounds(self.graph, region, cfg, spec, upper=upper, stop=stop)
        if C is None:
            shape = (batch, *self.output_shape)
            return lower.T.reshape(shape), None if upper_b is None else upper_b.T.reshape(shape)
        return lower.T, None if upper_b is None else upper_b.T

    def lipschitz(self, norm: float = 2, method: str = "product", C: Tensor | None = None, *,
                  points: Tensor | None = None, sample: SampleConfig | None = None) -> Tensor:  # fmt: skip
        """A bound of the model's L2 Lipschitz constant over the whole input space (float64 scalar), or of
        each row of ``C`` [..., n_out] (shape ``C.shape[:-1]``). ``method``: ``"product"`` (product of
        layer norms, any graph of supported operators; upper bound), ``"layerwise"`` (ECLipsE-Fast-style,
        feed-forward chains; upper bound), ``"sampled"`` (largest Jacobian norm / difference quotient seen
        near ``points``, configured by ``sample``; a *lower* bound). See ``verifier/lipschitz/``."""
        if norm != 2:
            raise InputError(f"only the L2 Lipschitz constant is estimated, not norm={norm!r}")
        rows = (
            None if C is None else torch.as_tensor(C).reshape(-1, int(torch.Size(self.output_shape).numel()))
        )
        if method == "sampled":
            value = sampled_bound(self.graph, rows, points, sample or SampleConfig())
        elif method in UPPER_METHODS:
            value = UPPER_METHODS[method](self.graph, rows)
        else:
            raise InputError(f"unknown Lipschitz method {method!r}; choose product, layerwise or sampled")
        return value if C is None else value.reshape(torch.as_tensor(C).shape[:-1])

    def certified_radius(self, x: Tensor, labels: Tensor, estimator: str = "tightest") -> Tensor:
        """Certified L2 radii [B]: ``min_{j != y} (f_y(x) - f_j(x)) / L_yj`` with ``L_yj`` the Lipschitz bound
        of the margin row (``estimator``: "tightest", "product" or "layerwise"); 0 where x is misclassified."""
        x = self._as_input(x)
        labels = torch.as_tensor(labels).reshape(-1)
        return certified_radius(self.graph, x, labels, estimator, margin_rows)

    def _spec(self, C: Tensor | None, batch: int, n_out: int, like: Tensor) -> Tensor:
        """Engine layout [S, B, *output_shape] from C [B, S, n_out] (identity when C is None)."""
        if C is None:
            eye = torch.eye(n_out, dtype=like.dtype, device=like.device)
            return eye.reshape(n_out, 1, *self.output_shape).expand(n_out, batch, *self.output_shape)
        try:
            C = torch.as_tensor(C).to(like.device, like.dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"C is not a numeric tensor: {exc}") from exc
        if C.dim() != 3 or C.shape[2] != n_out or C.shape[0] not in (1, batch):
            raise InputError(f"C has shape {tuple(C.shape)}; expected ({batch}, n_spec, {n_out})")
        if not torch.isfinite(C).all():
            raise InputError("C contains NaN or inf")
        return C.expand(batch, -1, -1).transpose(0, 1).reshape(C.shape[1], batch, *self.output_shape)


def _is_several(x) -> bool:
    """Whether ``x`` is a tuple or list of tensors (a model's several inputs), not one array-like."""
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(t, Tensor) for t in x)


def margin_rows(labels: Tensor, n: int, like: Tensor) -> Tensor:
    """``C`` [B, n - 1, n] of the margins ``f_y - f_j``, j != y in increasing order, for labels y [B]."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    others = torch.arange(n - 1, device=labels.device).unsqueeze(0).expand(len(labels), -1)
    others = others + (others >= labels.unsqueeze(1))  # skip the label
    return eye[labels].unsqueeze(1) - eye[others]


def load(
    model: str | Path | nn.Module, example_input: Tensor | None = None, *, live: bool = False
) -> BoundedModel:
    """Load an ONNX file, or a torch module traceable by torch.fx (with an example input [B, *shape], or a
    tuple of them when ``forward`` takes several tensors). Models are translated with inference semantics
    (BatchNorm running statistics, no Dropout).

    Several inputs (ONNX graph inputs that are not initializers, in order; ``forward``'s positional
    arguments): the engine's input is their concatenation, each flattened row-major, of shape (n,) per
    sample, as in VNN-LIB; regions are over it (``BoundedModel.join_inputs``), and the model's forward pass
    takes it or the tuple of inputs.

    A torch module is copied, unless ``live``: the graph's operators then hold the module's own
    parameters (and read its BatchNorm statistics) at every bound computation, so that bounds are
    differentiable with respect to them and follow optimiser steps, ``load_state_dict`` and
    ``module.to`` without re-tracing (certified training). Other tensors (buffers, constants) are read
    once. Loading checks this: an operator holding a tensor computed from a parameter (e.g. ``x @ W.T``
    with a parameter W) is refused, naming the node. Training-mode BatchNorm: ``with_batch_statistics``."""
    if isinstance(model, nn.Module):
        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        example = _module_example(example_input, tensors[0].dtype if tensors else torch.get_default_dtype())
        if not live:
            return _checked(_trace(copy.deepcopy(model).eval()), example, True, type(model).__name__)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()  # translation runs the module: no batch statistics, no running-statistics update
            gm = _trace(model)
            bounded = _checked(gm, example, True, type(model).__name__, live=True)
            _check_live(gm, bounded.graph, example, model)
        finally:
            for m, training in modes.items():
                m.training = training
        return BoundedModel(bounded.graph, bounded.source, model)
    if not isinstance(model, (str, Path)):
        raise InputError(f"load() takes an ONNX path or a torch.nn.Module, not {type(model).__name__}")
    proto = onnx_import.read_onnx(model)
    inputs = onnx_import.data_inputs(proto)
    examples, batched = onnx_import.example_inputs(inputs, onnx_import.data_is_double(proto))
    unsupported = onnx_import.unsupported_nodes(proto)
    try:
        gm = onnx_import.to_fx(proto, model)
        example = examples[0] if len(examples) == 1 else examples
        bounded = _checked(gm, example, batched, str(model), onnx_import.node_names(proto), unsupported)
        return _named_inputs(bounded, [name for name, _ in inputs])
    except UnsupportedOperatorError as exc:  # report what translation refused too, all at once
        named = {name for _, name in unsupported}
        unsupported += [(op, name) for op, name in exc.unsupported if name not in named]
    except ModelLoadError:
        if not unsupported:
            raise
    raise UnsupportedOperatorError(unsupported)


def _named_inputs(bounded: BoundedModel, names: list[str]) -> BoundedModel:
    """The model with its several inputs named as the ONNX file names them (onnx2torch renames them)."""
    graph = bounded.graph
    if not graph.inputs:
        return bounded
    inputs = tuple((name, shape) for name, (_, shape) in zip(names, graph.inputs))
    return BoundedModel(dataclasses.replace(graph, inputs=inputs), bounded.source)


def _module_example(example_input, dtype: torch.dtype) -> Tensor | tuple[Tensor, ...]:
    """The first sample ([1, *shape]) of the example input, or of each of several, in ``dtype``."""
    several = _is_several(example_input)
    examples = tuple(example_input) if several else (example_input,)
    if not all(isinstance(e, Tensor) and e.dim() >= 1 for e in examples):
        raise InputError(
            "loading a torch module needs example_input, a tensor [batch, *input_shape] (a tuple of them "
            "for several inputs)"
        )
    firsts = tuple(e[:1].detach().to(dtype) for e in examples)  # traced sizes are per sample
    return firsts if several else firsts[0]


def _trace(module: nn.Module) -> fx.GraphModule:
    try:
        return trace(module)  # torch.fx, keeping whole the modules with a converter of their own
    except Exception as exc:
        raise ModelLoadError(f"torch.fx cannot trace {type(module).__name__}: {exc}") from exc


def _check_live(gm: fx.GraphModule, graph: Graph, example: Tensor, module: nn.Module) -> None:
    """Every tensor of a live graph that depends on the module's parameters or BatchNorm statistics must be
    read from them at bound time. Perturb them, translate again: a tensor whose value moved but which is
    not a parameter itself was computed from one at load time (a copy that would go stale)."""

    def held(g: Graph) -> list[tuple]:
        fields = [(node, f.name, getattr(node.op, f.name)) for node in g.nodes if node.op is not None
                  for f in dataclasses.fields(node.op)]  # fmt: skip
        return [
            (n, name, v) for n, name, v in fields if isinstance(v, Tensor) and not isinstance(v, nn.Parameter)
        ]

    before = [t.detach().clone() for _, _, t in held(graph)]
    state = [t for t in module.parameters()]
    state += [t for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              for t in (m.running_mean, m.running_var) if t is not None]  # fmt: skip
    saved = [t.detach().clone() for t in state]
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for t in state:
                t.mul_(1.5 + torch.rand(t.shape, generator=gen).to(t)).add_(0.25)
            moved = held(translate(gm, example, True, live=True))
            after = [t.detach().clone() for _, _, t in moved]  # before restoring: they may alias parameters
    finally:
        with torch.no_grad():
            for t, old in zip(state, saved):
                t.copy_(old)
    for (node, name, _), old, new in zip(held(graph), before, after):
        if old.shape != new.shape or not torch.equal(old, new):
            raise ModelLoadError(
                f"node {node.name} ({type(node.op).__name__}): its {name} is computed from the module's "
                "parameters when loading, so live bounds would not follow them; write the layer with a "
                "module the translator reads live (nn.Linear, nn.Conv*, nn.BatchNorm*)"
            )


def _checked(gm, example: Tensor | tuple[Tensor, ...], batched: bool, source: str, names=None,
             unsupported=(), live: bool = False) -> BoundedModel:  # fmt: skip
    """Translate, then check the graph reproduces the original module on the example input (or inputs)."""
    examples = (example,) if isinstance(example, Tensor) else tuple(example)
    with torch.no_grad():
        graph = translate(gm, example, batched, names, live)
        if unsupported:
            raise UnsupportedOperatorError(list(unsupported))
        expected = gm(*examples)
        batched = graph.batched  # a model moving the dimension of its batch of one is translated unbatched
        try:
            got = graph.forward(tuple(e if batched else e.unsqueeze(0) for e in examples))
        except Exception as exc:
            raise ModelLoadError(f"{source}: the translated graph fails on the example input: {exc}") from exc
        got = got if batched else got[0]
    if not reproduces(got, expected):
        raise ModelLoadError(f"{source}: the translated graph does not reproduce the model's output")
    return BoundedModel(graph, source)


def reproduces(got: Tensor, expected: Tensor) -> bool:
    """Whether a translated graph's output ``got`` matches the source model's ``expected`` (same shape,
    equal up to float32 rounding of differently ordered sums)."""
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def supported_onnx_operators() -> list[str]:
    return sorted(onnx_import.SUPPORTED_ONNX_OPERATORS)

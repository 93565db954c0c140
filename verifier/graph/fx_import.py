"""torch.fx front end: translate a GraphModule (from torch.fx tracing or from onnx2torch) into a Graph.

The module is run once on an example input while walking its nodes. Nodes that do not depend on the
input's values (parameters, constants, shape computations) are folded into constants; every other node is
translated by the converter registered for its target (see ``verifier.graph.converters``). All failures
are collected and reported together, naming each node."""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from verifier.errors import ModelLoadError, UnsupportedOperatorError
from verifier.graph.converters import CONVERTERS, Composite, ConversionError, Onnx2TorchClass, converter_for
from verifier.graph.converters.base import MovesBatch
from verifier.graph.graph import Graph, Node, prune
from verifier.graph.simplify import fuse_bias
from verifier.ops.shape import Rearrange

_FAILED = -1  # data index of a node that failed: its consumers still count as data-dependent
_STATIC = ("size", "dim", getattr)  # with ONNX Shape: read only the (static) shape of their input
_ONNX_SHAPE = Onnx2TorchClass("shape", "OnnxShape")


@dataclass
class Data:
    """Marks a graph tensor inside a call's arguments."""

    node: int
    value: Tensor


@dataclass
class Call:
    """What a converter sees of one fx node: the target, constant arguments in place and graph tensors
    marked as :class:`Data`, per-sample shapes, and ways to run the original operator."""

    name: str
    target: Any
    args: tuple
    kwargs: dict
    batched: bool
    out_value: Tensor
    data: list[Data] = field(default_factory=list)
    live: bool = False
    item: int | None = None  # for one piece of an operator with several outputs (Split): which one

    def param(self, t: Tensor | None) -> Tensor | None:
        """A weight as an operator holds it: the module's own tensor when the graph is live (bounds then
        follow the module and differentiate with respect to it), a detached constant otherwise. A live
        operator must hold the tensor itself, not a tensor computed from it (that would be a stale copy):
        ``load(..., live=True)`` checks this."""
        return t if t is None or self.live else t.detach()

    @property
    def data_positions(self) -> list[int]:
        return [k for k, a in enumerate(self.args) if isinstance(a, Data)]

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        return [self._per_sample(d.value.shape) for d in self.data]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self._per_sample(self.out_value.shape)

    @property
    def out_dtype(self) -> torch.dtype:
        return self.out_value.dtype

    def _per_sample(self, shape) -> tuple[int, ...]:
        return tuple(shape[1:]) if self.batched else tuple(shape)

    def probe_shape(self, i: int) -> tuple[int, ...]:
        return ((1,) if self.batched else ()) + self.in_shapes[i]

    def const(self, position: int, name: str, default: Any = ...) -> Any:
        """A constant argument by position or keyword."""
        if position < len(self.args):
            value = self.args[position]
        elif name in self.kwargs:
            value = self.kwargs[name]
        elif default is not ...:
            return default
        else:
            raise ConversionError(f"missing argument {name!r}")
        if isinstance(value, Data):
            raise ConversionError(f"argument {name!r} must be a constant, not a graph tensor")
        return value

    def run(self, *data: Tensor) -> Tensor:
        """Call the original operator with these tensors in place of the graph tensors."""
        it = iter(data)
        swap = lambda a: next(it) if isinstance(a, Data) else a
        args, kwargs = pytree.tree_map(swap, (self.args, self.kwargs), is_leaf=lambda a: isinstance(a, Data))
        if isinstance(self.target, str):
            out = getattr(args[0], self.target)(*args[1:], **kwargs)
        else:
            out = self.target(*args, **kwargs)
        return out if self.item is None else out[self.item]

    def run_per_sample(self, *data: Tensor) -> Tensor:
        """``run`` on one sample (batch of 1 when batched); checks the batch dimension is kept."""
        out = self.run(*data)
        if self.batched and (out.dim() == 0 or out.shape[0] != 1):
            raise MovesBatch("operator moves or removes the batch dimension")
        return out[0] if self.batched else out


class _Tracer(fx.Tracer):
    """torch.fx's tracer, which also keeps whole every module with a converter of its own (e.g.
    ``verifier.nn.ParamRamp``: its dedicated bound rule is tighter than one of the operators inside it)."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return type(m) in CONVERTERS or super().is_leaf_module(m, qualname)


def trace(module: torch.nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``, stopping at the modules the loader translates whole."""
    return fx.GraphModule(module, _Tracer().trace(module), type(module).__name__)


def _target(gm: fx.GraphModule, node: fx.Node) -> Any:
    return gm.get_submodule(node.target) if node.op == "call_module" else node.target


def _describe(target: Any) -> str:
    if isinstance(target, torch.nn.Module):
        name = type(target).__name__
        inner = getattr(target, "math_op_function", None)
        return f"{name}[{inner.__name__}]" if inner is not None else name
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def translate(gm: fx.GraphModule, example: Tensor | tuple[Tensor, ...], batched: bool,
              names: dict | None = None, live: bool = False) -> Graph:  # fmt: skip
    """Translate ``gm`` run on ``example`` ([1, *shape] when batched, else the per-sample tensor; a tuple
    of such tensors, one per placeholder in order, for a model with several inputs).

    ``names`` maps submodule paths to the source's (node name, op type), for error messages. ``live``:
    operators hold the module's parameters themselves (see ``Call.param``); no rewrite folds them.

    A model with a batch of one whose operators move, merge or remove the batch dimension
    (``x.transpose(0, 1)``, a Reshape of the batch into another dimension) has no batch of independent
    samples: it is translated again unbatched, the whole tensor (its leading 1 included) being the sample.
    In an unbatched graph an operator whose graph tensors all keep a leading 1 is still translated as for
    one sample of a batch (Conv, BatchNorm and pooling read their channels after the batch), between exact
    reshapes dropping and restoring the 1; the others are translated on the whole tensors, and each such
    translation must reproduce the operator on the example (else it is refused, naming the node)."""
    walk = _Walk(gm, batched, names or {}, live)
    graph = walk.run(example)
    if walk.moved and batched:  # the unbatched walk's failures, if any, are the ones to report
        walk = _Walk(gm, False, names or {}, live)
        graph = walk.run(example)
    if walk.failures:
        raise UnsupportedOperatorError(walk.failures)
    return graph


@dataclass
class _Walk:
    """One pass over the fx graph: values of every fx node, the graph nodes made so far, failures.

    ``squeezed``: nodes of an unbatched walk holding a tensor without its leading 1 (translated as one
    sample of a batch); ``views``: the reshape node giving node k without (True) or with (False) it."""

    gm: fx.GraphModule
    batched: bool
    names: dict
    live: bool
    values: dict = field(default_factory=dict)
    data_of: dict = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # nodes refused for moving the batch dimension
    squeezed: set[int] = field(default_factory=set)
    views: dict[tuple[int, bool], int] = field(default_factory=dict)

    def run(self, example: Tensor | tuple[Tensor, ...]) -> Graph | None:
        gm = self.gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        examples = (example,) if isinstance(example, Tensor) else tuple(example)
        if len(placeholders) != len(examples):
            raise ModelLoadError(
                f"the model takes {len(placeholders)} inputs, {len(examples)} example(s) given"
            )
        shapes = [tuple(e.shape[1:]) if self.batched else tuple(e.shape) for e in examples]
        self.values.update(zip(placeholders, examples))
        self.nodes, self.data_of = _input_nodes(placeholders, shapes)
        output = None
        for fx_node in gm.graph.nodes:
            if fx_node.op == "placeholder":
                pass
            elif fx_node.op == "get_attr":
                self.values[fx_node] = _fetch_attr(gm, fx_node.target, self.live)
            elif fx_node.op == "output":
                output = fx_node.args[0]
            else:
                self.step(fx_node)
        if self.failures:
            return None
        if not isinstance(output, fx.Node) or not isinstance(self.data_of.get(output), int):
            raise ModelLoadError("the model must return a single tensor that depends on its input")
        out = self.view(self.data_of[output], per_sample=False)
        inputs = tuple((n.name, shape) for n, shape in zip(placeholders, shapes)) if len(shapes) > 1 else ()
        return prune(self.nodes if self.live else fuse_bias(self.nodes), out, self.batched, inputs)

    def fail(self, fx_node: fx.Node, reason: str, name: str) -> None:
        self.failures.append((reason, name))
        self.data_of[fx_node] = _FAILED

    def step(self, fx_node: fx.Node) -> None:
        """Evaluate one call node; fold it or translate it into graph nodes."""
        gm, values, data_of = self.gm, self.values, self.data_of
        target = _target(gm, fx_node)
        args, kwargs = pytree.tree_map(
            lambda a: values[a] if isinstance(a, fx.Node) else a, (fx_node.args, fx_node.kwargs)
        )
        try:
            value = (
                target(*args, **kwargs)
                if not isinstance(target, str)
                else getattr(args[0], target)(*args[1:], **kwargs)
            )
        except Exception as exc:  # the original model fails on its own example input
            raise ModelLoadError(
                f"node {fx_node.name}: evaluating {_describe(target)} failed: {exc}"
            ) from exc
        values[fx_node] = value
        is_data = lambda a: isinstance(a, fx.Node) and a in data_of
        sources = [a for a in pytree.tree_leaves((fx_node.args, fx_node.kwargs)) if is_data(a)]
        item = _piece(fx_node, target, data_of)
        if (
            not sources
            or (isinstance(target, torch.nn.Module) and Onnx2TorchClass.of(type(target)) == _ONNX_SHAPE)
            or (not isinstance(target, torch.nn.Module) and target in _STATIC and item is None)
        ):
            return  # a constant given the input's shape: folded
        # ONNX models: name the ONNX node (the submodule path onnx2torch gives it) and its ONNX type
        name, kind = self.names.get(fx_node.target, (fx_node.name, _describe(target)))
        if item is not None:  # one piece of a split (or of max(x, dim)): the producer, then the piece
            producer = fx_node.args[0]
            name, kind = self.names.get(producer.target, (producer.name, _describe(_target(gm, producer))))
            call = replace(data_of[producer], name=name, out_value=value, item=item)
        elif any(isinstance(data_of[a], Call) for a in sources):
            return self.fail(fx_node, f"{kind}: takes the pieces of a split all at once", name)
        else:
            call = _call(fx_node, target, name, values, data_of, self.batched, self.live)
        pieces = isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value)
        if pieces and call.item is None and converter_for(target) is not None:
            data_of[fx_node] = call  # several outputs (Split): translated piece by piece, where each is used
            return
        if not isinstance(value, Tensor):
            return self.fail(fx_node, f"{kind}: output is not a tensor", name)
        if converter_for(call.target) is None:
            return self.fail(fx_node, kind, name)
        try:
            op, call = self.convert(call)
        except ConversionError as exc:
            if isinstance(exc, MovesBatch):
                self.moved.append(name)
            return self.fail(fx_node, f"{kind}: {exc}", name)
        except Exception as exc:  # noqa: BLE001 (a converter meeting an unexpected use: report it, never crash)
            return self.fail(fx_node, f"{kind}: cannot translate ({type(exc).__name__}: {exc})", name)
        if op is None:
            data_of[fx_node] = call.data[0].node
            return
        steps = (
            op.steps if isinstance(op, Composite) else ((op, tuple(range(len(call.data))), call.out_shape),)
        )
        refs = [d.node for d in call.data]
        for m, (step, operands, shape) in enumerate(steps):
            name = fx_node.name if m == len(steps) - 1 else f"{fx_node.name}.{m}"
            self.nodes.append(Node(name, step, tuple(refs[k] for k in operands), shape))
            refs.append(len(self.nodes) - 1)
        if steps[-1][2] != call.out_shape:
            raise ModelLoadError(
                f"node {name}: translated to shape {steps[-1][2]}, expected {call.out_shape}"
            )
        data_of[fx_node] = len(self.nodes) - 1
        if call.batched and not self.batched:
            self.squeezed.add(len(self.nodes) - 1)

    def convert(self, call: Call) -> tuple[Any, Call]:
        """The converter's translation of a call, and the view of the call it translated (see
        ``translate``): the call itself in a batched walk; in an unbatched one, the call as one sample of
        a batch where its tensors all keep a leading 1 and that translation succeeds, else the call on
        whole tensors, checked on the example."""
        converter = converter_for(call.target)
        if self.batched:
            return converter(call), call
        if all(t.dim() >= 2 and t.shape[0] == 1 for t in [call.out_value, *(d.value for d in call.data)]):
            sample = replace(
                call, batched=True, data=[Data(self.view(d.node, True), d.value) for d in call.data]
            )
            with contextlib.suppress(ConversionError):  # e.g. a Softmax over dim 0: on the whole tensors
                op = converter(sample)
                if op is None or _reproduces(op, sample):
                    return op, sample
        whole = replace(call, data=[Data(self.view(d.node, False), d.value) for d in call.data])
        op = converter(whole)
        if op is not None and not _reproduces(op, whole):
            raise ConversionError("acts on the tensor's leading dimension in a way without bound rules")
        return op, whole

    def view(self, k: int, per_sample: bool) -> int:
        """Node k's tensor without its leading 1 (``per_sample``) or with it: k itself or an exact reshape."""
        if (k in self.squeezed) == per_sample:
            return k
        if (k, per_sample) not in self.views:
            shape = self.nodes[k].shape
            new = tuple(shape[1:]) if per_sample else (1, *shape)
            size = int(torch.Size(shape).numel())
            self.nodes.append(Node(f"{self.nodes[k].name}.view", Rearrange((size,), new), (k,), new))
            self.views[(k, per_sample)] = len(self.nodes) - 1
            if per_sample:
                self.squeezed.add(len(self.nodes) - 1)
        return self.views[(k, per_sample)]


def _reproduces(op: Any, call: Call) -> bool:
    """Whether a translation (an Op or a Composite) gives the call's output on the call's own inputs."""
    steps = op.steps if isinstance(op, Composite) else ((op, tuple(range(len(call.data))), None),)
    values = [d.value if call.batched else d.value.unsqueeze(0) for d in call.data]
    try:
        for step, operands, _ in steps:
            values.append(step.forward(*[values[k] for k in operands]))
        got = values[-1] if call.batched else values[-1][0]
    except Exception:  # noqa: BLE001 (an operator that cannot even run on these shapes: not reproduced)
        return False
    expected = call.out_value.to(got.dtype)  # [1, *shape] when batched, both
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def _input_nodes(placeholders: list[fx.Node], shapes: list[tuple[int, ...]]) -> tuple[list[Node], dict]:
    """The graph's input nodes and the node index of each placeholder. One input is node 0 itself; several
    are ranges of one flat node 0 of shape ``(n,)`` (their concatenation, flattened row-major in order),
    each read by an exact ``Rearrange`` into the input's per-sample shape (``graph`` module docstring)."""
    if len(shapes) == 1:
        return [Node("input", None, (), shapes[0])], {placeholders[0]: 0}
    sizes = [int(torch.Size(shape).numel()) for shape in shapes]
    total = sum(sizes)
    nodes = [Node("inputs", None, (), (total,))]
    data_of: dict = {}
    for placeholder, shape, start, size in zip(placeholders, shapes, _starts(sizes), sizes):
        index = torch.arange(start, start + size)
        nodes.append(Node(placeholder.name, Rearrange((total,), shape, index), (0,), shape))
        data_of[placeholder] = len(nodes) - 1
    return nodes, data_of


def _starts(sizes: list[int]) -> list[int]:
    """Offset of each piece in the concatenation of pieces of these sizes."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _piece(fx_node, target, data_of) -> int | None:
    """Which output of an operator with several outputs (kept as a ``Call``) this node reads: ``out[k]``,
    or the ``values`` / ``indices`` fields of ``torch.max(x, dim)``; None for any other node."""
    producer = fx_node.args[0] if target in (operator.getitem, getattr) and fx_node.args else None
    if not isinstance(data_of.get(producer), Call):
        return None
    if target is operator.getitem:
        return fx_node.args[1]
    return {"values": 0, "indices": 1}.get(fx_node.args[1], -1)  # -1: no such piece, the converter refuses


def _call(fx_node, target, name, values, data_of, batched, live) -> Call:
    """The converter's view of a node: graph tensors in its arguments marked as :class:`Data`."""
    is_data = lambda a: isinstance(a, fx.Node) and a in data_of
    marked = lambda a: (
        Data(data_of[a], values[a]) if is_data(a) else (values[a] if isinstance(a, fx.Node) else a)
    )
    call_args, call_kwargs = pytree.tree_map(marked, (fx_node.args, fx_node.kwargs))
    data = [a for a in pytree.tree_leaves((call_args, call_kwargs), is_leaf=lambda a: isinstance(a, Data))
            if isinstance(a, Data)]  # fmt: skip
    return Call(name, target, tuple(call_args), dict(call_kwargs), batched, values[fx_node], data, live)


def _fetch_attr(gm: fx.GraphModule, target: str, live: bool) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) and not live else obj

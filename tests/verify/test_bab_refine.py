"""Refinement of intermediate bounds by branch and bound (``verify.bab.refine``): every refined bound holds
the neuron's exact range (MILP over the network up to that neuron), it is never looser than before, and
``verify-model``'s ReLU splitting uses it only when a first search gives no answer."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

import verifier
from tests.exact.milp import minimise
from tests.exact.nets import ReluNet, Sizes, random_direction, random_net
from tests.exact.properties import ExactCase, write_instance
from verifier.engine.bounds import intermediate_bounds
from verifier.engine.params import Params
from verifier.engine.state import BoundConfig, BoundState
from verifier.spec.vnnlib import load_property
from verifier.verify.bab import refine
from verifier.verify.bab.input_split import InputSplitConfig
from verifier.verify.bab.relu_split import ReluSplit, ReluSplitConfig
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline
from verifier.verify.instance import VerifyConfig, load_model, verify_instance
from verifier.verify.spec_batch import spec_batch

DEEP = Sizes(inputs=(4, 6), depth=(3, 3), width=(8, 12), outputs=(2, 3))
# 6-16-16-16-3 nets whose property (exact margin 0.05) a search from the alpha-CROWN root alone does not
# settle in 60 s, and one from refined roots does in about 20 (seed 11)
HARD = Sizes(inputs=(6, 6), depth=(3, 3), width=(16, 16), outputs=(3, 3))
CONFIG = VerifyConfig(timeout=60, extra_attack_seconds=0.2, input_split=InputSplitConfig(max_inputs=0))


def _refined(net: ReluNet, seconds: float) -> tuple[BoundState, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """The CROWN bounds of every node of ``net`` over its box, refined for at most ``seconds``, and the
    bounds before refining."""
    lo, hi = net.box()
    model = verifier.load(net.module(), lo)
    state = BoundState(model.graph, verifier.Box(lo, hi), BoundConfig(method="crown"))
    with torch.no_grad():
        intermediate_bounds(state)
    before = {k: (lo_.clone(), hi_.clone()) for k, (lo_, hi_) in state.bounds.items()}
    refine.refine(state, time.monotonic() + seconds)
    return state, before


def _pre_activations(state: BoundState) -> list[int]:
    """The nodes of the hidden layers' pre-activations, in order (``net.layers[m]`` gives the m-th)."""
    return [k for k, node in enumerate(state.graph.nodes) if type(node.op).__name__ == "Linear"][:-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_bounds_hold_every_neurons_exact_range_and_are_tighter(seed):
    net = random_net(seed, DEEP)
    state, before = _refined(net, 3.0)
    gained = 0.0
    for m, k in list(enumerate(_pre_activations(state)))[1:]:  # the first layer's bounds are exact
        lo, hi = (t[0].double().numpy() for t in state.bounds[k])
        old_lo, old_hi = (t[0].double().numpy() for t in before[k])
        assert (lo >= old_lo).all() and (hi <= old_hi).all(), f"node {k}: refined bounds looser than before"
        gained += float((old_hi - old_lo).sum() - (hi - lo).sum())
        prefix = dataclasses.replace(net, layers=net.layers[: m + 1])  # its output: layer m's pre-activations
        for j in np.flatnonzero((old_lo < 0) & (old_hi > 0)):
            e = np.zeros(len(lo))
            e[j] = 1.0
            least, most = minimise(prefix, e).value, -minimise(prefix, -e).value
            assert lo[j] <= least + 1e-5 * (1 + abs(least)), f"node {k} neuron {j}: {lo[j]} above min {least}"
            assert hi[j] >= most - 1e-5 * (1 + abs(most)), f"node {k} neuron {j}: {hi[j]} below max {most}"
    assert gained > 0, "refining gained nothing on a 3-layer net with unstable neurons"


def test_worst_takes_each_objectives_lowest_leaf_first():
    leaves = refine._Leaves(
        obj=torch.tensor([0, 0, 1, 1, 2]), lower=torch.tensor([-1.0, -3.0, -0.5, -0.2, -9.0]), splits={},
        params=Params(), node=torch.zeros(5, dtype=torch.long), pos=torch.zeros(5, dtype=torch.long),
    )  # fmt: skip
    splittable = torch.tensor([True, True, True, True, False])
    assert refine._worst(leaves, splittable, 2).tolist() == [1, 2]  # objective 0's -3, then 1's -0.5
    assert refine._worst(leaves, splittable, 10).tolist() == [1, 2, 0, 3]  # then the next of each
    assert refine._worst(leaves, ~splittable, 10).tolist() == [4]


def _instance(directory, seed: int = 11, margin: float = 0.05):
    """A property of the ``HARD``-sized net of ``seed`` with exact margin ``margin``."""
    net = random_net(seed, HARD)
    c = random_direction(net, np.random.default_rng(10_000 + seed))
    return write_instance(ExactCase(net, c[None], (minimise(net, c),)), 0, margin, directory)


def test_refined_roots_bound_higher_than_plain_ones(tmp_path):
    instance = _instance(tmp_path)
    checker, model = load_model(instance.onnx)
    bounder = Bounder(model, spec_batch(load_property(instance.vnnlib), checker.dtype))
    brancher = ReluSplit(bounder, ReluSplitConfig(refine_share=0.5))
    plain = float(brancher.roots(np.arange(1), Deadline(60))["lower"][0, 0])
    refined = float(brancher.roots(np.arange(1), Deadline(4), refined=True)["lower"][0, 0])
    assert brancher.refined > 0
    assert refined > plain + 0.05, (plain, refined)
    assert refined <= instance.d + instance.margin + 1e-4  # never above the exact minimum


def test_an_easy_search_never_refines_and_a_long_one_does(tmp_path):
    easy = _instance(tmp_path, 4, 0.1)
    result = verify_instance(easy.onnx, easy.vnnlib, CONFIG)
    assert result.verdict == "unsat" and "refined_leaves" not in result.stats
    hard = _instance(tmp_path)
    result = verify_instance(hard.onnx, hard.vnnlib, dataclasses.replace(CONFIG, timeout=4))
    assert result.verdict in ("unsat", "timeout") and result.stats["refined_leaves"] > 0


@pytest.mark.slow
def test_refined_roots_settle_what_a_search_alone_does_not(tmp_path):
    instance = _instance(tmp_path)
    alone = verify_instance(
        instance.onnx,
        instance.vnnlib,
        dataclasses.replace(CONFIG, relu_split=ReluSplitConfig(refine_share=0)),
    )
    assert alone.verdict == "timeout"
    result = verify_instance(instance.onnx, instance.vnnlib, CONFIG)
    assert result.verdict == "unsat" and result.stats["refined_leaves"] > 0


def _mixed_net(*activations: type[torch.nn.Module]) -> verifier.BoundedModel:
    """4-10-...-10-2 with the given activation after each hidden layer (seeded weights)."""
    torch.manual_seed(0)
    parts, width = [], 4
    for act in activations:
        parts += [torch.nn.Linear(width, 10), act()]
        width = 10
    return verifier.load(torch.nn.Sequential(*parts, torch.nn.Linear(width, 2)).eval(), -torch.ones(1, 4))


def test_targets_are_nodes_read_by_relus_alone_after_a_split_node():
    graph = _mixed_net(torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.ReLU, torch.nn.ReLU).graph
    # nodes: 1 Linear, 2 ReLU, 3 Linear, 4 Sigmoid, 5 Linear, 6 ReLU, 7 Linear, 8 ReLU, 9 Linear
    assert refine.targets(graph) == [(5, [1, 3]), (7, [1, 3, 5])]
    assert refine.targets(_mixed_net(torch.nn.Sigmoid, torch.nn.Sigmoid).graph) == []
    assert refine.targets(_mixed_net(torch.nn.ReLU).graph) == []  # nothing before the only ReLU layer


def test_refined_bounds_hold_sampled_values_on_a_net_with_s_shaped_neurons():
    """Sigmoid neurons between ReLU layers: only nodes read by ReLUs alone are refined (the sigmoid's
    inputs stay as they were), splits of sigmoid inputs are allowed, and every bound holds sampled values."""
    model = _mixed_net(torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.ReLU, torch.nn.ReLU)
    lo, hi = -torch.ones(1, 4), torch.ones(1, 4)
    state = BoundState(model.graph, verifier.Box(lo, hi), BoundConfig(method="crown"))
    with torch.no_grad():
        intermediate_bounds(state)
    before = {k: (a.clone(), b.clone()) for k, (a, b) in state.bounds.items()}
    refine.refine(state, time.monotonic() + 3.0)
    sigmoid_input = next(k for k, n in enumerate(model.graph.nodes) if type(n.op).__name__ == "SShaped") - 1
    assert all(torch.equal(a, b) for a, b in zip(state.bounds[sigmoid_input], before[sigmoid_input]))
    assert any(not torch.equal(state.bounds[k][0], before[k][0]) for k in state.bounds), "nothing refined"
    x = lo + (hi - lo) * torch.rand(20000, 4, generator=torch.Generator().manual_seed(1))
    values = {0: x}
    with torch.no_grad():
        for k, node in enumerate(model.graph.nodes[1:], start=1):
            values[k] = node.op.forward(*[values[i] for i in node.inputs])
    for k, (a, b) in state.bounds.items():
        assert (values[k] >= a - 1e-5).all() and (values[k] <= b + 1e-5).all(), f"node {k}"


def _crown_state(seed: int) -> BoundState:
    """CROWN's bounds of every node of a ``DEEP`` random net over its box."""
    net = random_net(seed, DEEP)
    lo, hi = net.box()
    model = verifier.load(net.module(), lo)
    state = BoundState(model.graph, verifier.Box(lo, hi), BoundConfig(method="crown"))
    with torch.no_grad():
        intermediate_bounds(state)
    return state


def test_refining_stops_at_the_first_check_that_finds_the_root_verified():
    state = _crown_state(0)
    first = refine.targets(state.graph)[0][0]
    objectives = 2 * int(((state.bounds[first][0] < 0) & (state.bounds[first][1] > 0)).sum())
    asked = []
    config = refine.RefineConfig(check_seconds=0.0)
    visited = refine.refine(state, time.monotonic() + 60, config, lambda: asked.append(1) or 1.0)
    assert asked == [1] and visited == objectives > 0  # the first leaves only, then the check


@pytest.mark.parametrize(
    ("gain", "rounds"),
    [(0.0, 2), (0.09, 2), (0.11, 3), (None, 3)],  # a round's gain, as a share of the distance to 0
)
def test_refining_stops_after_a_round_that_gained_too_little(monkeypatch, gain, rounds):
    """From the second round on, a round that raised the root's margin by less than ``stall`` of its
    distance to 0 is the last (the first round is not judged); without a margin every round runs."""
    state = _crown_state(0)
    nodes = refine.targets(state.graph)
    calls = []

    def node(root, k, before, until, config, enough, reached):
        calls.append(k)
        return 0, enough()

    monkeypatch.setattr(refine, "_refine_node", node)

    def margin() -> float:  # after round r (0-based): -(1 - gain)^(r + 1), so each round gains ``gain``
        return -((1 - gain) ** ((len(calls) - 1) // len(nodes) + 1))

    refine.refine(
        state, time.monotonic() + 600, refine.RefineConfig(stall=0.1), None if gain is None else margin
    )
    assert len(calls) == rounds * len(nodes)


def test_each_neurons_values_at_points_are_found_once_over_the_rounds(monkeypatch):
    """The descent to the values an objective reaches at points (``_reached``) does not depend on the
    bounds that refining tightens: a later round reuses the first one's (on oval21 cifar_deep it took
    most of a first round)."""
    state = _crown_state(0)
    visits, descents = [], []
    node, reached = refine._refine_node, refine._reached

    def counted_node(root, k, *args):
        visits.append(k)
        return node(root, k, *args)

    def counted_descent(root, k, pos, sign, steps, starts):
        descents.append((k, len(pos)))
        return reached(root, k, pos, sign, steps, starts)

    monkeypatch.setattr(refine, "_refine_node", counted_node)
    monkeypatch.setattr(refine, "_reached", counted_descent)
    refine.refine(state, time.monotonic() + 3.0, refine.RefineConfig(max_batch=8))
    nodes = [k for k, _ in refine.targets(state.graph)]
    assert len(visits) > len(nodes), "a second round must visit the nodes again"
    assert sorted(k for k, _ in descents) == sorted(set(visits)), "one descent per node"

"""ReLU splitting's branching rules: filtered smart branching (FSB) against the BaBSR-style score alone,
on random 6-w-w-3 ReLU networks whose property's exact margin (MILP) is 0.01."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import verifier
from tests.exact.milp import minimise
from tests.exact.nets import Sizes, random_direction, random_net
from tests.exact.properties import ExactCase, write_instance
from verifier.engine import branching
from verifier.engine.state import BoundConfig, BoundState
from verifier.spec.vnnlib import load_property
from verifier.verify.bab import driver
from verifier.verify.bab.input_split import InputSplitConfig
from verifier.verify.bab.relu_split import ReluSplit, ReluSplitConfig, cascades
from verifier.verify.bounding import Bounder
from verifier.verify.deadline import Deadline
from verifier.verify.instance import VerifyConfig, load_model, verify_instance
from verifier.verify.spec_batch import spec_batch

SEED = 4
# input splitting off (these nets have few inputs); one parent per iteration, so that the number of
# domains does not depend on measured speed
CONFIG = VerifyConfig(timeout=120, extra_attack_seconds=0.2, input_split=InputSplitConfig(max_inputs=0))


def _instance(directory, seed: int, width: int):
    net = random_net(seed, Sizes(inputs=(6, 6), depth=(2, 2), width=(width, width), outputs=(3, 3)))
    c = random_direction(net, np.random.default_rng(10_000 + seed))
    return write_instance(ExactCase(net, c[None], (minimise(net, c),)), 0, 0.01, directory)


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    return _instance(tmp_path_factory.mktemp("fsb"), 4, 16)


def _root(instance, rule: str, **config) -> tuple[ReluSplit, dict]:
    """The brancher of ``rule`` (and other ``ReluSplitConfig`` fields) and its bounded root domain (next
    neuron chosen)."""
    checker, model = load_model(instance.onnx)
    bounder = Bounder(model, spec_batch(load_property(instance.vnnlib), checker.dtype))
    with torch.no_grad():
        bounder.run("crown", Deadline(30))
    brancher = ReluSplit(bounder, ReluSplitConfig(branching=rule, **config))
    roots = brancher.roots(np.arange(1))
    return brancher, driver.settle(brancher, roots, driver.Problem(bounder, None, None, None))


def _children_score(brancher: ReluSplit, domains: dict) -> float:
    """Sum over the two children of ``domains``' chosen split of their optimised scores, capped at 0."""
    children = driver.settle(
        brancher, brancher.split(domains), driver.Problem(brancher.bounder, None, None, None)
    )
    return float(children[driver.BOUND].clamp(max=0).sum())


def test_fsb_picks_a_split_that_gains_at_least_as_much_as_the_babsr_pick(tmp_path):
    """At this root one BaBSR candidate closes one child outright and FSB finds it. (The estimate is a
    heuristic: at the root of the 16-wide net of ``instance`` its pick gains less than BaBSR's.)"""
    instance = _instance(tmp_path, 3, 24)
    fsb, fsb_root = _root(instance, "fsb")
    babsr, babsr_root = _root(instance, "babsr")
    assert fsb_root[driver.BOUND] < 0, "the root must need splitting"
    picks = [(int(d["branch_node"][0]), int(d["branch_pos"][0])) for d in (fsb_root, babsr_root)]
    assert picks[0] != picks[1], "on this net the two rules should disagree at the root"
    assert _children_score(fsb, fsb_root) >= _children_score(babsr, babsr_root) - 1e-6


def test_children_lower_is_sound_on_each_side(instance):
    """The cheap estimate is a bound too: sampled points of each child's side lie above it."""
    brancher, root = _root(instance, "fsb")
    state, params = brancher._unpack(root)
    rows = brancher._rows(root)
    nodes, pos = root["branch_node"], root["branch_pos"]
    with torch.no_grad():
        lower = branching.children_lower(state, params, rows, nodes, pos)  # [1, 2]
        lo, hi = (torch.as_tensor(t, dtype=torch.float32) for t in (instance.net.lo, instance.net.hi))
        x = lo + (hi - lo) * torch.rand(20000, lo.numel(), generator=torch.Generator().manual_seed(1))
        values = {0: x}
        for k, node in enumerate(brancher.graph.nodes[1:], start=1):
            values[k] = node.op.forward(*[values[i] for i in node.inputs])
    y = values[brancher.graph.output] @ rows[:, 0].T  # [n, 1]
    pre = values[int(nodes[0])].flatten(1)[:, int(pos[0])]
    for side, sign in ((0, -1), (1, 1)):
        mine = pre * sign >= 0
        assert mine.any()
        assert (y[mine, 0] >= lower[0, side] - 1e-4).all()


def test_fsb_needs_fewer_domains_than_babsr(instance):
    domains = {}
    for rule in ("fsb", "babsr"):
        config = dataclasses.replace(
            CONFIG, relu_split=ReluSplitConfig(branching=rule, max_batch=1, refine_share=0)
        )
        result = verify_instance(instance.onnx, instance.vnnlib, config)
        assert result.verdict == "unsat" and result.method == "bab-relu"
        domains[rule] = result.stats["domains"]
    assert domains["fsb"] < domains["babsr"], domains


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown branching"):
        ReluSplitConfig(branching="random")


def test_first_node_first_ranks_every_free_neuron_of_the_first_node_above_the_rest():
    scores = {
        4: torch.tensor([[0.1, -torch.inf, 0.5], [-torch.inf, -torch.inf, -torch.inf]]),
        7: torch.tensor([[2.9, 0.2, -torch.inf], [1.0, -torch.inf, 3.0]]),
    }
    ranked = branching.first_node_first(scores)
    assert torch.equal(ranked[7], scores[7])
    assert torch.equal(torch.isinf(ranked[4]), torch.isinf(scores[4]))  # no neuron becomes splittable
    nodes, pos, ok = branching.top_candidates(ranked, 3)
    assert nodes[0].tolist() == [4, 4, 7] and pos[0].tolist() == [2, 0, 0]  # first node's order kept
    assert nodes[1, :2].tolist() == [7, 7] and ok[1].tolist() == [True, True, False]  # none left there


def _unstable_state(onnx) -> tuple[BoundState, list[int]]:
    """A state of the net in ``onnx`` whose every bounded neuron is unstable, and its bounded nodes."""
    _, model = load_model(onnx)
    lo, hi = (torch.zeros(1, *model.graph.input_shape), torch.ones(1, *model.graph.input_shape))
    state = BoundState(model.graph, verifier.Box(lo, hi), BoundConfig())
    nodes = sorted(model.graph.needs_bounds())
    for k in nodes:
        shape = (1, *model.graph.nodes[k].shape)
        state.bounds[k] = (-torch.ones(shape), torch.ones(shape))
    return state, nodes


def test_cascades_reads_the_deepest_relu_layer_of_a_multi_layer_net(instance, tmp_path):
    state, nodes = _unstable_state(instance.onnx)
    assert len(nodes) == 2 and cascades(state)
    lo, hi = state.bounds[nodes[-1]]
    some_stable = torch.where(torch.arange(hi.numel()).reshape(hi.shape) % 5 == 0, -1.0, hi)
    state.bounds[nodes[-1]] = (lo, some_stable)
    assert not cascades(state)  # 80% unstable: below CASCADE
    first = state.bounds[nodes[0]][0]
    state.bounds[nodes[0]] = (2 * first, first)  # the first layer stable: it does not count
    state.bounds[nodes[-1]] = (lo, hi)
    assert cascades(state)
    net = random_net(5, Sizes(inputs=(6, 6), depth=(1, 1), width=(16, 16), outputs=(3, 3)))
    single, nodes = _unstable_state(net.save_onnx(tmp_path / "single.onnx"))
    assert len(nodes) == 1 and not cascades(single)  # one ReLU layer: nothing to cascade from


@pytest.mark.parametrize("margin", [0.01, -0.01])
def test_shallow_first_search_splits_the_first_layer_first_and_agrees_with_the_exact_margin(tmp_path, margin):
    net = random_net(4, Sizes(inputs=(6, 6), depth=(2, 2), width=(16, 16), outputs=(3, 3)))
    c = random_direction(net, np.random.default_rng(10_004))
    inst = write_instance(ExactCase(net, c[None], (minimise(net, c),)), 0, margin, tmp_path)
    shallow = dataclasses.replace(CONFIG, relu_split=ReluSplitConfig(shallow=True))
    result = verify_instance(inst.onnx, inst.vnnlib, shallow)
    assert result.verdict == ("unsat" if margin > 0 else "sat"), result
    brancher, root = _root(inst, "babsr", shallow=True)
    first = min(brancher.nodes)
    assert any(key.startswith("lo:") for key in root)  # shallow-first refreshes the children's bounds
    assert int(root["branch_node"][0]) == first
    children = driver.settle(
        brancher, brancher.split(root), driver.Problem(brancher.bounder, None, None, None)
    )
    state, _ = brancher._unpack(children)
    parent, _ = brancher._unpack(root)
    for k in brancher.nodes[1:]:  # refreshed: never looser than the parent's, tighter somewhere
        assert (state.bounds[k][0] >= parent.bounds[k][0]).all() and (
            state.bounds[k][1] <= parent.bounds[k][1]
        ).all()

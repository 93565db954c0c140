"""scripts/train_lipschitz.py and scripts/eval_lipschitz.py end to end on a few MNIST batches; the evaluation
rows are consistent; the Lipschitz radius of the shipped Sandwich network is never beaten by an L2 attack;
every shipped L2 model reproduces its card's test accuracy."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import verifier
from tests.lipschitz.test_certify import l2_pgd
from verifier.datasets import read_mnist
from verifier.training.l2 import (
    build_net,
    check_rows,
    lipschitz_radius,
    load_net,
    margin_loss,
    radius_accuracy,
)

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "data" / "mnist"
L2_CARDS = sorted(p for p in (REPO / "models").glob("*.json") if "weights" in json.loads(p.read_text()))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist() -> Path:
    if not MNIST.is_dir():
        pytest.skip(f"{MNIST} not available")
    return MNIST


def test_train_and_evaluate_end_to_end(mnist, tmp_path):
    train = _script("train_lipschitz")
    common = ["--data-root", str(mnist), "--train-n", "256", "--batch-size", "64", "--epochs", "1",
              "--widths", "784", "16", "10", "--models-dir", str(tmp_path)]  # fmt: skip
    assert (
        train.main([*common, "--kind", "sandwich", "--gamma", "2", "--margin", "0.5", "--name", "lip"]) == 0
    )
    assert train.main([*common, "--kind", "mlp", "--noise", "0.5", "--name", "noisy"]) == 0
    card = json.loads((tmp_path / "lip.json").read_text())
    assert card["gamma"] == 2 and card["widths"] == [784, 16, 10] and len(card["history"]) == 1
    assert 0 <= card["test_accuracy"]["clean"] <= 1 and card["command"].startswith(
        "scripts/train_lipschitz.py"
    )
    net, _ = load_net(tmp_path / "lip.json")
    assert net.lipschitz_bound() == 2
    out = tmp_path / "eval.json"
    evaluate = _script("eval_lipschitz")
    argv = ["--data-root", str(mnist), "--lipschitz", str(tmp_path / "lip.json"), "--smoothed",
            str(tmp_path / "noisy.json"), "--n", "20", "--n0", "20", "--samples", "100", "--json", str(out)]  # fmt: skip
    assert evaluate.main(argv) == 0  # non-zero when check_rows finds an inconsistency
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["lipschitz (gamma)", "lipschitz (estimated)", "crown", "crown+lipschitz",
                                           "crown+lipschitz (gamma)", "smoothing"]  # fmt: skip
    assert not check_rows(rows) and all(set(r["certified"]) == {"0.5", "1", "1.58"} for r in rows)
    assert rows[-1]["deterministic"] is False and rows[-1]["alpha"] == 0.001
    by_name = {r["method"]: r["certified"] for r in rows}
    for r in ("0.5", "1", "1.58"):  # per row the tighter of two sound bounds: at least each alone
        best = by_name["crown+lipschitz (gamma)"][r]
        assert best >= max(by_name["crown"][r], by_name["lipschitz (gamma)"][r])
        assert by_name["crown+lipschitz"][r] >= max(by_name["crown"][r], by_name["lipschitz (estimated)"][r])


def test_check_rows_finds_inconsistent_rows():
    good = {"method": "a", "clean": 0.9, "certified": {"0.5": 0.8, "1": 0.5}}
    assert check_rows([good]) == []
    above = {"method": "b", "clean": 0.5, "certified": {"0.5": 0.6, "1": 0.4}}
    rising = {"method": "c", "clean": 0.9, "certified": {"0.5": 0.4, "1": 0.5}}
    assert len(check_rows([above, rising])) == 2


def test_radius_accuracy_and_margin_loss():
    radius, correct = torch.tensor([0.0, 0.5, 1.0, 2.0]), torch.tensor([False, True, True, True])
    assert radius_accuracy(radius, correct, [0.0, 0.5, 1.0]) == {"0": 0.75, "0.5": 0.5, "1": 0.25}
    logits, labels = torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0])
    assert torch.allclose(
        lipschitz_radius(logits, labels, 1.0), torch.tensor([2 / 2**0.5], dtype=torch.float64)
    )
    plain = margin_loss(logits, labels)
    assert margin_loss(logits, labels, 1.0) > plain  # wrong logits raised: a harder target
    raised = torch.nn.functional.cross_entropy(logits + torch.tensor([[0.0, 2.0, 2.0]]), labels)
    torch.testing.assert_close(margin_loss(logits, labels, 2.0), raised)


def test_mlp_builder_refuses_gamma():
    with pytest.raises(ValueError):
        build_net("mlp", [4, 3], gamma=1.0)
    with pytest.raises(ValueError):
        build_net("sandwich", [4, 3])


@pytest.mark.parametrize("card", [c for c in L2_CARDS if "sandwich" in c.stem], ids=lambda p: p.stem)
def test_shipped_lipschitz_radius_is_never_beaten_by_an_attack(card, mnist):
    torch.set_num_threads(1)
    net, info = load_net(card)
    images, labels = read_mnist(mnist, "test")
    x, y = torch.from_numpy(images[:8]).flatten(1), torch.from_numpy(labels[:8])
    model = verifier.load(net, x[:1])
    with torch.no_grad():
        logits = copy.deepcopy(net).double()(x.double())
    radius = lipschitz_radius(logits, y, info["gamma"])
    correct = radius > 0
    assert correct.sum() >= 6
    found = l2_pgd(model, x[correct], y[correct], radius[correct].float() * (1 - 1e-5), steps=50, restarts=2)
    assert (found > 0).all()


@pytest.mark.parametrize("card", L2_CARDS, ids=lambda p: p.stem)
def test_shipped_l2_model_reproduces_its_card(card, mnist):
    net, info = load_net(card)
    images, labels = read_mnist(mnist, "test")
    x, y = torch.from_numpy(images).flatten(1), torch.from_numpy(labels)
    with torch.no_grad():
        clean = float((net(x).argmax(1) == y).double().mean())
    assert abs(clean - info["test_accuracy"]["clean"]) <= 2 / len(
        y
    )  # float32 sums may differ across machines

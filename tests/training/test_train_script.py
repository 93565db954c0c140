"""scripts/train_certified.py end to end on a small slice of MNIST: epochs, checkpoint and resume, ONNX
export and card; and every model shipped in models/ with a card reproduces the card's check."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import verifier
from verifier.datasets import read_mnist
from verifier.training.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
# the cards of certified-training runs (those with a check); the Lipschitz cards are tests/training/test_l2.py's
CARDS = [p for p in sorted((REPO / "models").glob("*.json")) if "check" in json.loads(p.read_text())]


def _script():
    spec = importlib.util.spec_from_file_location("train_certified", REPO / "scripts" / "train_certified.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    return path


def test_train_resume_export_and_card(tmp_path, capsys):
    root = _data("mnist")
    script = _script()
    common = ["--data-root", str(root), "--model", "mlp", "--eps", "0.05", "--train-n", "512", "--val-n", "64",
              "--batch-size", "64", "--warmup", "0.5", "--ramp", "1", "--threads", "1",
              "--checkpoint", str(tmp_path / "ckpt.pt"), "--models-dir", str(tmp_path), "--name", "tiny"]  # fmt: skip
    assert script.main([*common, "--epochs", "1", "--no-export"]) == 0
    first = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert first["epoch"] == 1 and len(first["history"]) == 1
    assert script.main([*common, "--epochs", "2", "--resume", "--eval-n", "50"]) == 0
    assert "resumed" in capsys.readouterr().out
    card = json.loads((tmp_path / "tiny.json").read_text())
    assert card["epochs"] == 2 and [row["epoch"] for row in card["history"]] == [1, 2]
    assert card["history"][0] == first["history"][0]  # the first epoch was not trained again
    assert card["evaluation"]["n"] == 50 and card["check"]["n"] == script.CHECK_N
    assert 0 <= card["evaluation"]["verified"]["best"] <= card["evaluation"]["clean"] <= 1
    assert card["evaluation"]["contradicted"] == 0
    shipped = verifier.load(str(tmp_path / "tiny.onnx"))
    x = torch.from_numpy(read_mnist(root, "test")[0][:8]).unsqueeze(1)
    net = script.build("mlp", (1, 28, 28), 10, batch_norm=True)
    net.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"])
    torch.testing.assert_close(shipped(x), net.eval()(x), atol=1e-5, rtol=1e-4)


def test_fused_crown_ibp_trains_and_needs_a_crown_pass(tmp_path):
    script = _script()
    common = ["--data-root", str(_data("mnist")), "--model", "mlp", "--eps", "0.05", "--train-n", "256",
              "--val-n", "64", "--batch-size", "64", "--warmup", "0", "--ramp", "1", "--threads", "1",
              "--checkpoint", str(tmp_path / "ckpt.pt"), "--no-export", "--epochs", "1"]  # fmt: skip
    assert script.main([*common, "--method", "crown-ibp", "--fused"]) == 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert state["args"]["fused"] and math.isfinite(state["history"][0]["loss"])
    with pytest.raises(SystemExit):
        script.parse([*common, "--method", "ibp", "--fused"])


def test_time_budget_shortens_the_run():
    script = _script()
    args = script.parse(["--epochs", "10", "--minutes", "1", "--milestones", "0.5", "0.9"])
    sched = torch.optim.lr_scheduler.MultiStepLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)]), [5, 9]
    )
    script.fit_budget(args, sched, done=2, seconds=30.0)  # 15 s per epoch: 4 epochs fit in a minute
    assert args.epochs == 4 and sorted(sched.milestones) == [4]  # 0.9 * 4; 0.5 * 4 = 2 is already past
    script.fit_budget(args, sched, done=3, seconds=45.0)  # still on time: nothing changes
    assert args.epochs == 4


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.stem)
def test_shipped_model_reproduces_its_card(card):
    """The ONNX file reloads and gives the card's check (clean, PGD and verified accuracy on the first test
    images) again, up to one example (the last digits of float32 sums may differ across machines)."""
    info = json.loads(card.read_text())
    images, labels = read_mnist(_data(info["dataset"]), "test")
    n = info["check"]["n"]
    model = verifier.load(str(card.with_name(info["onnx"])))
    x, y = torch.from_numpy(images[:n]), torch.from_numpy(labels[:n])
    row = evaluate(model, x, y, [info["eps"]], info["methods"], lazy=info["lazy"])[0]
    assert row["contradicted"] == 0
    for key in ("clean", "pgd"):
        assert abs(row[key] - info["check"][key]) <= 1 / n, key
    for method, value in info["check"]["verified"].items():
        assert abs(row["verified"][method] - value) <= 1 / n, method

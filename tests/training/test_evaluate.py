"""Robustness evaluation: PGD finds what exists and stays in the clipped ball, verified examples resist
every attack, ``best`` is the OR of the methods, eps 0 verifies exactly the correct examples, and the
script runs end to end on a tiny ONNX model and real MNIST images."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import verifier
from verifier.training.evaluate import evaluate, format_table, margin, pgd_attack, verified_mask

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "data" / "mnist"
METHODS = ("ibp", "crown", "alpha-crown")


def tiny(n_in: int = 4, hidden: int = 16, n_out: int = 3, seed: int = 0) -> verifier.BoundedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)).eval()
    return verifier.load(net, torch.zeros(1, n_in))


def own_labels(model, n: int, n_in: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs in [0, 1] labelled by the model itself (every example correctly classified)."""
    x = torch.rand(n, n_in, generator=torch.Generator().manual_seed(seed))
    return x, model(x).argmax(1)


def test_pgd_finds_a_known_adversarial_example():
    # logits = x (identity layers, ReLU inactive on [0, 1]): class 0 holds iff x0 > x1.
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    model = verifier.load(net, torch.zeros(1, 2))
    x, y = torch.tensor([[0.5, 0.45], [0.9, 0.1]]), torch.tensor([0, 0])
    adv = pgd_attack(model, x, y, eps=0.1, steps=10)
    # (0.4, 0.55) lies in the first ball and is misclassified; the second ball holds no such point.
    assert margin(model(adv), y).tolist()[0] < 0 < margin(model(adv), y).tolist()[1]
    assert torch.equal(adv, pgd_attack(model, x, y, eps=0.1, steps=10)), "seeded: the same run twice"


def test_pgd_stays_inside_the_clipped_ball():
    model = tiny()
    x = torch.rand(64, 4, generator=torch.Generator().manual_seed(2))
    x[:8] = 0.0
    x[8:16] = 1.0
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(3))
    eps = 0.3
    adv = pgd_attack(model, x, y, eps, steps=8, restarts=2, step_size=0.5)  # steps overshoot the ball
    assert (adv >= 0).all() and (adv <= 1).all()
    assert ((adv - x).abs() <= eps + 1e-6).all()


def test_verified_examples_resist_attack_and_sampling():
    model = tiny()
    x, y = own_labels(model, 200)
    eps = 0.05
    masks = verified_mask(model, x, y, eps, METHODS, lazy=())
    verified = masks["best"]
    assert 0 < verified.sum() < len(x), "the case must have verified and unverified examples"
    adv = pgd_attack(model, x, y, eps, steps=20, restarts=2)
    assert (margin(model(adv), y)[verified] > 0).all()
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        point = (x + eps * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
        assert (margin(model(point), y)[verified] > 0).all()


def test_best_is_the_or_of_the_methods_and_lazy_masks_are_cumulative():
    model = tiny(seed=5)
    x, y = own_labels(model, 120, seed=6)
    own = verified_mask(model, x, y, 0.04, METHODS, lazy=())
    lazy = verified_mask(model, x, y, 0.04, METHODS)
    for masks in (own, lazy):
        assert torch.equal(masks["best"], masks["ibp"] | masks["crown"] | masks["alpha-crown"])
    assert torch.equal(lazy["ibp"], own["ibp"]) and torch.equal(lazy["crown"], own["crown"])
    assert not (own["ibp"] | own["crown"])[~lazy["alpha-crown"]].any()


def test_eps_zero_verifies_exactly_the_correctly_classified_examples():
    model = tiny(seed=7)
    x = torch.rand(100, 4, generator=torch.Generator().manual_seed(8))
    y = torch.randint(0, 3, (100,), generator=torch.Generator().manual_seed(9))
    correct = margin(model(x), y) > 0
    assert 0 < correct.sum() < len(x)
    masks = verified_mask(model, x, y, 0.0, METHODS, lazy=())
    for key, mask in masks.items():
        assert torch.equal(mask, correct), key


def test_evaluate_rows_bracket_the_robust_accuracy():
    model = tiny()
    x, _ = own_labels(model, 90)
    y = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(10))
    y[:60] = model(x[:60]).argmax(1)
    rows = evaluate(model, x, y, [0.0, 0.05], METHODS, batch_size=32, pgd_steps=5)
    for row in rows:
        best = row["verified"]["best"]
        assert row["n"] == 90 and row["contradicted"] == 0
        assert max(row["verified"].values()) == best <= row["pgd"] <= row["clean"]
    assert rows[0]["verified"]["best"] == rows[0]["clean"]
    table = format_table(rows)
    assert len(table.splitlines()) == 3 and "alpha-crown" in table


def tiny_onnx(path: Path) -> Path:
    """Flatten -> Gemm(784, 16) -> Relu -> Gemm(16, 10) on input [1, 1, 28, 28], random weights."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)
             for name, shape, s in [("w1", (16, 784), 0.05), ("b1", (16,), 0.1), ("w2", (10, 16), 0.5),
                                    ("b2", (10,), 0.1)]]  # fmt: skip
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]  # fmt: skip
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_script_runs_end_to_end(tmp_path):
    if not MNIST.is_dir():
        pytest.skip(f"{MNIST} not available")
    out, png = tmp_path / "rows.json", tmp_path / "plot.png"
    plotting = importlib.util.find_spec("matplotlib") is not None
    command = [sys.executable, str(REPO / "scripts" / "eval_certified.py"), "--model", str(tiny_onnx(tmp_path / "t.onnx")),
               "--data-root", str(MNIST), "--n", "12", "--eps", "0", "0.01", "--methods", "ibp", "crown", "--batch-size", "5", "--pgd-steps", "3",
               "--threads", "1", "--json", str(out)] + (["--plot", str(png)] if plotting else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["eps"] for row in rows] == [0.0, 0.01] and rows[0]["n"] == 12
    assert rows[0]["verified"]["best"] == rows[0]["clean"]
    assert "crown" in done.stdout
    assert png.is_file() == plotting

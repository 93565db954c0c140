"""The branch-and-bound domain queue: order of pops, global bound, pickling."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from verifier.verify.bab.queue import BOUND, DomainQueue


def batch(bounds: list[float], first_id: int) -> dict[str, torch.Tensor]:
    n = len(bounds)
    return {
        BOUND: torch.tensor(bounds, dtype=torch.float64),
        "id": torch.arange(first_id, first_id + n),
        "lo": torch.arange(2 * n, dtype=torch.float32).reshape(n, 2) + first_id,
    }


def test_pop_returns_the_lowest_bounds_first_across_pushes():
    queue = DomainQueue()
    queue.push(batch([3.0, -1.0, 2.0], 0))
    queue.push(batch([0.0, -5.0], 3))
    assert len(queue) == 5 and queue.global_bound() == -5.0
    first = queue.pop(2)
    assert first["id"].tolist() == [4, 1] and first[BOUND].tolist() == [-5.0, -1.0]
    assert first["lo"].tolist() == [[5.0, 6.0], [2.0, 3.0]]  # every key follows its domain
    assert len(queue) == 3 and queue.global_bound() == 0.0
    queue.push(batch([-2.0], 5))
    assert queue.pop(10)["id"].tolist() == [5, 3, 2, 0]
    assert len(queue) == 0 and queue.global_bound() == math.inf
    with pytest.raises(IndexError):
        queue.pop(1)


def test_empty_batches_are_ignored_and_the_bound_key_is_required():
    queue = DomainQueue()
    queue.push(batch([], 0))
    assert len(queue) == 0
    with pytest.raises(KeyError, match=BOUND):
        queue.push({"lo": torch.zeros(1, 2)})


def test_pickle_round_trip_keeps_domains_and_order():
    queue = DomainQueue()
    queue.push(batch([1.0, -3.0], 0))
    queue.push(batch([-4.0, 2.0, 0.5], 2))
    again = pickle.loads(pickle.dumps(queue))
    assert len(again) == len(queue) and again.global_bound() == -4.0
    for left, right in zip(again.pop(5).values(), queue.pop(5).values()):
        torch.testing.assert_close(left, right)

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


def test_pop_by_another_key_takes_its_lowest_and_leaves_the_rest():
    queue = DomainQueue()
    domains = batch([1.0, -3.0, 0.0], 0)
    domains["margin"] = torch.tensor([0.5, 9.0, -1.0], dtype=torch.float64)
    queue.push(domains)
    assert queue.global_bound("margin") == -1.0
    assert queue.pop(2, key="margin")["id"].tolist() == [2, 0]
    assert queue.pop(1)["id"].tolist() == [1]


def test_pops_equal_those_of_one_concatenated_batch_over_many_pushes():
    """The queue keeps pushed batches apart and merges them lazily; every pop must still return what
    ``topk`` over the open domains concatenated in push order returns (ties included)."""
    generator = torch.Generator().manual_seed(6)
    queue, reference, next_id = DomainQueue(), None, 0
    for _ in range(300):  # past MAX_PARTS pushes: merges too
        n = int(torch.randint(0, 40, (), generator=generator))
        domains = batch(torch.randint(-5, 5, (n,), generator=generator).double().tolist(), next_id)
        domains["margin"] = torch.randint(-3, 3, (n,), generator=generator).double()
        next_id += n
        queue.push(domains)
        if n:
            old = reference or {k: v[:0] for k, v in domains.items()}
            reference = {k: torch.cat([old[k], v]) for k, v in domains.items()}
        key = "margin" if int(torch.randint(0, 3, (), generator=generator)) == 0 else BOUND
        count = int(torch.randint(1, 30, (), generator=generator))
        if reference is None or not len(reference[BOUND]):
            continue
        values = reference[key]
        first = torch.topk(values, min(count, len(values)), largest=False, sorted=True).indices
        rest = torch.ones(len(values), dtype=torch.bool)
        rest[first] = False
        expected = {k: v[first] for k, v in reference.items()}
        reference = {k: v[rest] for k, v in reference.items()}
        popped = queue.pop(count, key=key)
        assert popped.keys() == expected.keys()
        for k, value in expected.items():
            assert torch.equal(popped[k], value), k
        assert len(queue) == len(reference[BOUND])
        assert queue.global_bound() == min(reference[BOUND].tolist(), default=math.inf)


def test_nbytes_counts_every_held_tensor_until_popped_rows_are_compacted_away():
    queue = DomainQueue()
    assert queue.nbytes() == 0
    per_domain = 8 + 8 + 2 * 4  # BOUND float64, id int64, lo two float32
    queue.push(batch([0.0] * 10, 0))
    queue.push(batch([1.0] * 6, 10))
    open_rows = 16 * 8  # the open-row index of each part (int64)
    assert queue.nbytes() == 16 * per_domain + open_rows
    queue.pop(4)  # the first part keeps 6 of 10 rows open: not compacted, its popped rows still held
    assert queue.nbytes() == 16 * per_domain + 12 * 8
    queue.pop(2)  # 4 of 10 open: compacted to those 4
    assert queue.nbytes() == 10 * per_domain + 10 * 8

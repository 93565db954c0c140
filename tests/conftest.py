"""Every test starts from the same state of torch's global random generator (seed 0), so a test that
draws from it (module initialisation, ``torch.randn`` without a generator) sees the same numbers when run
alone as in the whole suite, whatever ran before it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_torch():
    torch.manual_seed(0)

"""One torch thread for these tests, as the command line uses: the nets are small, and on a busy CPU
several threads per process make them many times slower."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

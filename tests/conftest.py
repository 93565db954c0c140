"""Suite-wide settings.

* Every test starts from the same state of torch's global random generator (seed 0), so a test that
  draws from it (module initialisation, ``torch.randn`` without a generator) sees the same numbers when
  run alone as in the whole suite, whatever ran before it.
* The model cache of ``verifier.verify.disk_cache`` lives in a temporary folder, never in the user's own
  cache (subprocesses inherit it through the environment).
"""

import pytest
import torch

from verifier.verify.disk_cache import ENV_DIR


@pytest.fixture(autouse=True)
def _seeded_torch():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_DIR, str(tmp_path_factory.mktemp("model-cache")))
        yield

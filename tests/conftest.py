"""Suite-wide settings: the model cache of ``verifier.verify.disk_cache`` lives in a temporary folder, never
in the user's own cache (subprocesses inherit it through the environment)."""

import pytest

from verifier.verify.disk_cache import ENV_DIR


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_DIR, str(tmp_path_factory.mktemp("model-cache")))
        yield

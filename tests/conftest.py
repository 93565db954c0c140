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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """The address of a local Ray cluster of 2 CPUs, started once for the session by ``ray start --head``
    (as a user would) and stopped at its end; tests that take it are skipped when Ray is not installed
    (the default environment: Ray is the optional ``distributed`` extra, which CI installs)."""
    pytest.importorskip("ray")
    import os
    import re
    import shutil
    import subprocess
    import sys

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    temp = tmp_path_factory.mktemp("ray")
    # a throw-away cluster on this machine: no token authentication, for it and for the drivers that join it
    quiet = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **quiet}
    start = [ray, "start", "--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
             f"--object-store-memory={256 * 2**20}", "--port=0", f"--temp-dir={temp}"]  # fmt: skip
    started = subprocess.run(start, check=False, capture_output=True, text=True, env=env, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"ray start failed: {started.stderr[-2000:]}")
    found = re.search(r"--address='([^']+)'", started.stdout + started.stderr)
    if found is None:
        subprocess.run([ray, "stop", "--force"], check=False, capture_output=True, env=env, timeout=120)
        pytest.fail(f"ray start printed no address: {started.stderr[-2000:]}")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in quiet.items():
                patch.setenv(key, value)
            yield found.group(1)
    finally:
        subprocess.run([ray, "stop", "--force"], check=False, capture_output=True, env=env, timeout=120)

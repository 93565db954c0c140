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
    (the default environment: Ray is the optional ``distributed`` extra, which CI installs).

    The head runs with ``--block`` and is stopped by ending that process, which stops this cluster only
    (``ray stop`` would stop every cluster of the machine, another test session's too)."""
    pytest.importorskip("ray")
    import os
    import re
    import shutil
    import subprocess
    import sys
    import time

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    temp = tmp_path_factory.mktemp("ray")
    # a throw-away cluster on this machine: no token authentication, for it and for the drivers that join it
    quiet = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    start = [ray, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--object-store-memory={256 * 2**20}", "--port=0",
             f"--temp-dir={temp}"]  # fmt: skip
    log = temp / "start.log"
    with log.open("w") as out:
        head = subprocess.Popen(start, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **quiet})
    try:
        found, waited = None, time.monotonic()
        while found is None and head.poll() is None and time.monotonic() - waited < 120:
            time.sleep(0.2)
            found = re.search(r"--address='([^']+)'", log.read_text())
        if found is None:
            pytest.fail(f"ray start gave no address: {log.read_text()[-2000:]}")
        with pytest.MonkeyPatch.context() as patch:
            for key, value in quiet.items():
                patch.setenv(key, value)
            yield found.group(1)
    finally:
        head.terminate()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()

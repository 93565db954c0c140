"""Ray, the optional ``distributed`` extra behind ``--cluster``: imported here, and only when asked for.

Batch runs (``verify.cluster``: one Ray task per instance) and sharded branch and bound
(``verify.bab.shards``: one Ray actor per worker) connect through ``connect``.
"""

from __future__ import annotations

from verifier.errors import InputError

MISSING_RAY = "--cluster needs Ray, which is not installed: pip install 'verifier[distributed]'"


def import_ray():
    """The ``ray`` module, or ``InputError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(MISSING_RAY) from None
    return ray


def connect(address: str):
    """``ray``, connected to the cluster at ``address`` (``"auto"``: the one this machine belongs to);
    ``InputError`` when Ray is missing or no cluster is found there (an address where nothing answers
    is Ray's to give up on: it keeps retrying for minutes)."""
    ray = import_ray()
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as error:
        raise InputError(f"--cluster {address}: {str(error).splitlines()[0]}") from None
    return ray


def slots(ray, workers: int) -> int:
    """How many tasks or actors to run at once: ``workers`` if above 1, else one per CPU of the cluster."""
    return workers if workers > 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))

"""``verifier.memory``: after ``import verifier``, freed memory stays with the process for reuse."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, os, sys
import verifier
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
pages = lambda: int(open("/proc/self/statm").read().split()[1])  # resident pages
size = 16 * 2**20  # under the mmap threshold that verifier sets, far over glibc's initial one
before = pages()
block = libc.malloc(size)
ctypes.memset(block, 1, size)  # fault every page in
libc.free(block)
print((pages() - before) * os.sysconf("SC_PAGE_SIZE") / size)
"""


def kept_share(**env) -> float:
    """The share of a freed 16 MB block still resident, in a fresh process importing verifier."""
    settings = ("VERIFIER_KEEP_FREED_MEMORY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    base = {k: v for k, v in os.environ.items() if k not in settings}  # only what the test sets
    out = subprocess.run([sys.executable, "-c", PROBE], env=base | env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux) only")
def test_import_keeps_freed_memory_unless_told_not_to():
    from verifier.memory import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt refused")
    assert kept_share() > 0.9  # the block came from the heap and its pages stayed
    # glibc's default: a fresh mapping, returned at free; and glibc's own settings are left alone
    assert kept_share(VERIFIER_KEEP_FREED_MEMORY="0") < 0.1
    assert kept_share(MALLOC_MMAP_THRESHOLD_=str(2**17)) < 0.1

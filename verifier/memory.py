"""The C allocator under torch's CPU tensors: keep freed memory for reuse instead of returning it at once.

torch allocates CPU tensors with the C library's ``malloc``. glibc serves a large request by mapping fresh
pages and unmaps them when the tensor is freed, or trims the top of its heap as soon as more than a few
megabytes there are free; either way the next tensor of that size faults its pages in again, one by one,
each zeroed by the kernel. A bound pass allocates and frees tensors of megabytes per step, in chunks of
rows, so it pays that over and over: on the oval21 CNN (CROWN, batch 1) about half of the pass's time.

``keep_freed_memory`` raises both of glibc's thresholds: requests up to ``MMAP_BYTES`` come from the heap,
and up to ``TRIM_BYTES`` of free memory at its top stays mapped. The process then holds, after a peak, up
to ``TRIM_BYTES`` more than it uses. ``import verifier`` calls it once, unless the environment says
otherwise (``VERIFIER_KEEP_FREED_MEMORY=0``, or glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``, which it leaves to glibc). On other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_BYTES = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_BYTES = 256 * 2**20

_ENV = ("VERIFIER_KEEP_FREED_MEMORY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(mmap_bytes: int = MMAP_BYTES, trim_bytes: int = TRIM_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); whether both were accepted (False
    off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # setting either threshold ends glibc's own adjustment of both (it would raise the trim threshold with the
    # mmap threshold), so both are set
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))


def on_import() -> None:
    """``keep_freed_memory`` unless the environment sets ``VERIFIER_KEEP_FREED_MEMORY=0`` or glibc's own
    thresholds."""
    if os.environ.get(_ENV[0], "1") != "0" and not any(name in os.environ for name in _ENV[1:]):
        keep_freed_memory()

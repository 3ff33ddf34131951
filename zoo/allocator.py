"""CPU training memory: keep freed blocks in the process instead of handing them back to the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and returns it with ``munmap`` when freed.  A training step that allocates such tensors
(TiSASRec's ``[B, L, L, d]`` interval embeddings and their gradients, 164 MB each at B 256, L 50,
d 64; MIRACLE's and HORAE's full-softmax logits) then page-faults on every page of every one of
them, every step, and the kernel zeroes each page first: measured on TiSASRec's step, half its
CPU time was kernel time (1.1 of 2.0 CPU s, 650,000 page faults a step).

:func:`retain_freed_memory` asks glibc (``mallopt``) to serve large blocks from the heap and never
to trim it, so a freed block is reused by the next step without a fault; the numbers computed do
not change (the same kernels run on the same values).  The price is memory: the heap holds the
step's peak and its fragmentation (TiSASRec's peak RSS 1.8 -> 2.4 GB).  :func:`release_freed_memory`
restores glibc's defaults and returns the free heap to the kernel (``malloc_trim``).  Both do
nothing where the C library is not glibc (macOS, Windows, musl).  ``zoo fit`` applies them around
CPU training and evaluation (``--cpu_allocator retain``, the default; ``system`` keeps glibc's
behaviour): docs/performance.md.
"""

from __future__ import annotations

import ctypes
import platform
from functools import lru_cache

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536  # glibc's default number of mmapped blocks
DEFAULT_TRIM_THRESHOLD = 128 * 1024
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse; False where not glibc
    (nothing changed) or glibc refused."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def release_freed_memory() -> bool:
    """glibc's defaults again, and the heap's free memory back to the kernel; False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD))
    libc.malloc_trim(0)
    return ok

"""Keep a partition task's freed memory for its next image instead of handing it back to the kernel.

A task allocates and frees the same tens of megabytes for every image (rays, pixels, assignment buffers, Zarr's
chunk buffers). glibc returns freed blocks over 128 kB (its threshold grows only up to 32 MB, and the top of the
heap is trimmed once 2x that is free), so the next image faults every page in again: hundreds of thousands of
page faults per run, and unmapping memory that other threads have touched is costly on a VM. Fixing both
thresholds keeps freed memory in the heap for reuse by the process's later allocations, for the rest of its life
(with the inline engine, the driver's); what it holds stays bounded by its largest batch. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations up to glibc's largest mmap threshold (32 MB on 64-bit) come from the heap and are reused.
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept rather than trimmed: more than a batch frees at once.
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True where they were set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not kept:
        log.debug("mallopt refused the heap thresholds; freed memory goes back to the kernel")
    return kept

"""numba, where installed: the partitioning kernels compile to machine code. Without it (a GPU machine that has
only torch, say) they stay plain Python functions that nothing calls: `partitioning.numpy_kernels` runs instead,
with the same results, several times slower.

numba's on-disk cache tracks only the file that defines a kernel: a kernel compiled with a call into another file
(`assign._assign` calls `voxels.march`) keeps the old callee after an edit to that file alone. `make clean`
removes the caches; a fresh install or clone never sees a stale one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:
    import numba
except ImportError:
    numba = None

F = TypeVar("F", bound=Callable)

#: Whether the compiled kernels are available.
COMPILED = numba is not None


def jit(function: F) -> F:
    """Compile `function` with numba (cached on disk, releasing the GIL) when numba is installed."""
    return numba.njit(cache=True, nogil=True)(function) if COMPILED else function


def inlined(function: F) -> F:
    """`jit`, and inlined into its compiled callers: a hot helper taking arrays then costs no call and no
    reference counting of its arguments."""
    return numba.njit(cache=True, nogil=True, inline="always")(function) if COMPILED else function

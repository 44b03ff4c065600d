"""Large arrays a partition process reuses from batch to batch.

Every batch needs the same large arrays again: each image's pixels, rays and (ray, block) pairs, and the buffers
its rays are laid out in. Left to malloc, a batch faults their pages in afresh wherever the heap does not hand
back the memory it freed: always for arrays over glibc's largest mmap threshold (32 MB, the pairs of a 24 MP
image), and for smaller ones when other allocations moved the heap (on the benchmark's 16 images of 1.2 MP, 225
MB a run, from three images that needed more pairs than their buffers held). A `Pool` keeps them instead, until
the run's batches are over (`partitioning.tasks.release_buffers`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

B = TypeVar("B")


class Pool(Generic[B]):
    """Free buffers of one kind, for a process's next batch. `take(size)` gives the smallest free buffer holding at
    least `size` items, else a new one; `give` takes buffers back once nothing reads or writes them. It holds at most
    as many buffers as were in use at once (a buffer too small for a request makes way for the new one), each as
    large as the largest request it served: a task's memory stays bounded by its largest batch."""

    def __init__(self, allocate: Callable[[int], B], size_of: Callable[[B], int]) -> None:
        self._allocate = allocate
        self._size_of = size_of
        self._free: list[B] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> B:
        with self._lock:
            sizes = [self._size_of(buffer) for buffer in self._free]
            fitting = [i for i, s in enumerate(sizes) if s >= size]
            if fitting:
                return self._free.pop(min(fitting, key=sizes.__getitem__))
            if sizes:
                self._free.pop(max(range(len(sizes)), key=sizes.__getitem__))
        return self._allocate(size)

    def give(self, buffers: Iterable[B]) -> None:
        with self._lock:
            self._free.extend(buffers)

    def clear(self) -> None:
        """Drop every free buffer (a run is over: its process may go on to other work)."""
        with self._lock:
            self._free.clear()

    def __len__(self) -> int:
        """Free buffers held."""
        return len(self._free)

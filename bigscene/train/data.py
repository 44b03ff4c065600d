"""Streaming a block's `rays.zarr` into training batches, and its held-out views into validation.

The stream never loads a whole store: each data worker owns a share of the store's stored chunks (its
`RayStore.pieces`, split over DDP ranks and workers), reads them in a fresh random order every pass, and
draws batches from a shuffle buffer of at most `buffer_rays` rays refilled chunk by chunk. Memory per worker
is the buffer plus one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from bigscene.store.blocks import open_ray_store
from bigscene.train.optim import RayBudget
from bigscene.train.views import ValView

#: Columns a training batch carries (the store's `pixel` column is not needed).
COLUMNS = ("origins", "dirs", "rgb", "near_far", "image_id")


@dataclass(frozen=True)
class Shard:
    """Which of the store's pieces (stored chunks) a reader owns: those with position % count == index."""

    index: int = 0
    count: int = 1


class ShuffleBuffer:
    """Column arrays of up to `capacity` rays (plus their store indices) from which batches are drawn."""

    def __init__(self, capacity: int, template: dict[str, np.ndarray]) -> None:
        self.columns = {k: np.empty((capacity, *v.shape[1:]), v.dtype) for k, v in template.items()}
        self.size = 0

    @property
    def capacity(self) -> int:
        return len(self.columns["ray_id"])

    def add(self, rays: dict[str, np.ndarray]) -> None:
        n = len(rays["ray_id"])
        for name, column in self.columns.items():
            column[self.size : self.size + n] = rays[name]
        self.size += n

    def shuffle(self, rng: np.random.Generator) -> None:
        order = rng.permutation(self.size)
        for column in self.columns.values():
            column[: self.size] = column[order]

    def pop(self, n: int) -> dict[str, np.ndarray]:
        """The last n rays (copies), removed from the buffer."""
        self.size -= n
        return {name: column[self.size : self.size + n].copy() for name, column in self.columns.items()}


class RayStream(IterableDataset):
    """An endless stream of shuffled ray batches from a block's store; batch size from a shared RayBudget.

    Each batch is a dict of tensors: origins (N, 3), dirs (N, 3) float32, rgb (N, 3) uint8, near_far (N, 2)
    float32, image_id (N,) int64, ray_id (N,) int64 (the ray's logical index in the store, in [0, count): the
    surface cache key).
    """

    def __init__(self, path: str, budget: RayBudget, max_rays: int, buffer_rays: int, seed: int) -> None:
        self.path = path
        self.budget = budget
        self.max_rays = max_rays
        self.buffer_rays = buffer_rays
        self.seed = seed
        self.rank = Shard()

    def set_rank(self, rank: int, world_size: int) -> None:
        """Split the pieces over DDP ranks (each rank's workers then split its share)."""
        self.rank = Shard(rank, world_size)

    def _shard(self) -> Shard:
        worker = get_worker_info()
        workers, index = (1, 0) if worker is None else (worker.num_workers, worker.id)
        return Shard(self.rank.index * workers + index, self.rank.count * workers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        store = open_ray_store(self.path)
        reader = store.chunk_reader(COLUMNS)
        chunk = store.chunk
        shard = self._shard()
        pieces = store.pieces()  # (P, 3) start row, stop row, logical start
        mine = pieces[shard.index :: shard.count]
        if not len(mine):  # fewer pieces than readers: every reader streams all of them, in its own order
            mine = pieces
        rng = np.random.default_rng([self.seed, shard.index, shard.count])
        # room for a full buffer, one more chunk, and batches drawn down to half a buffer
        capacity = max(self.buffer_rays, 2 * self.max_rays) + chunk
        buffer: ShuffleBuffer | None = None
        low = (capacity - chunk) // 2

        def read(piece: np.ndarray) -> dict[str, np.ndarray]:
            start, stop, logical = (int(v) for v in piece)
            rays = reader.rows(start, stop)
            rays["ray_id"] = np.arange(logical, logical + stop - start, dtype=np.int64)
            return rays

        while True:
            for piece in rng.permutation(mine):
                rays = read(piece)
                if buffer is None:
                    buffer = ShuffleBuffer(capacity, rays)
                buffer.add(rays)
                if buffer.size + chunk <= capacity:
                    continue
                buffer.shuffle(rng)
                while buffer.size > low:
                    yield to_batch(buffer.pop(min(self.budget.rays, buffer.size)))


def to_batch(rays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    batch = {name: torch.from_numpy(np.ascontiguousarray(column)) for name, column in rays.items()}
    batch["image_id"] = batch["image_id"].long()
    return batch


class ViewSet(Dataset):
    """Validation views, one item per view."""

    def __init__(self, views: list[ValView]) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> ValView:
        return self.views[index]


class RayDataModule(pl.LightningDataModule):
    """Training rays streamed from the block's store; validation views rendered whole."""

    def __init__(
        self,
        rays_path: str,
        views: list[ValView],
        budget: RayBudget,
        max_rays: int,
        buffer_rays: int,
        num_workers: int,
        seed: int,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.stream = RayStream(rays_path, budget, max_rays, buffer_rays, seed)
        self.views = views
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.stream.set_rank(self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ViewSet(self.views), batch_size=None, collate_fn=_identity)


def _identity(view: ValView) -> ValView:
    return view

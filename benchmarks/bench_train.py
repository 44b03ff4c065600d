"""Block training throughput on CPU (one thread), on the tiny synthetic city's 2x2 blocks.

- Per block: training steps/s and samples/s (training time only, validation excluded) with the surface-guided
  sampler, against the uniform sampler at the same samples-per-step target, in the same run.
- Loader: rays/s the streaming loader (random chunk order, shuffle buffer, bounded memory) delivers from a
  block's `rays.zarr`, against indexing random batches out of the whole store held in memory; and rays/s of its
  chunk reads straight from the store's shards, against Zarr's reads of the same chunks.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from benchmarks.table import BenchRow, print_table
from benchmarks.workspaces import partitioned_city
from bigscene.config import Config, load_config
from bigscene.store.blocks import open_ray_store, rays_path, read_rays
from bigscene.train import fit_block
from bigscene.train.data import COLUMNS, RayStream
from bigscene.train.optim import RayBudget

log = logging.getLogger(__name__)

#: Bundled config with the toy model and sampler every CPU check trains.
TOY_CONFIG = "cpu_toy"
BLOCKS = ("b000", "b001", "b002", "b003")
STEPS = 40
SYNTH = {"gt_mesh": False, "width": 48, "height": 36, "ambient_occlusion": False}
PARTITION = ["partition.engine=inline", "partition.chunk_rays=2048", "partition.voxel_size=1.0"]
#: The small model the tests train: seconds per block on one CPU thread.
SMALL = [
    f"train.steps={STEPS}",
    "train.rays_per_batch=256",
    "train.target_samples=4096",
    "train.max_rays_per_batch=1024",
    "train.ckpt_every=1000",
    "train.val_views=0",
    "train.voxel_update_every=20",
    "train.num_workers=0",
    "train.shuffle_buffer=8192",
    "train.engine=inline",
    "logging.tracker=none",
]
LOADER_BATCHES, LOADER_RAYS = 400, 1024


def _config(*overrides: str) -> Config:
    return load_config(TOY_CONFIG, [*PARTITION, *SMALL, *overrides])


def _train(ws: str, block: str, config: Config) -> tuple[float, float]:
    """(steps/s, samples/s) of a fresh run of `block` in its own copy of the checkpoints."""
    result = fit_block(ws, block, config, progress_bar=False, overwrite=True)
    return result.steps_per_second or 0.0, result.samples_per_second or 0.0


def _loader_rows(ws: str) -> list[BenchRow]:
    path = rays_path(ws, "b000")
    stream = iter(RayStream(path, RayBudget(LOADER_RAYS), LOADER_RAYS, buffer_rays=8192, seed=0))
    next(stream)
    started = time.perf_counter()
    for _ in range(LOADER_BATCHES):
        next(stream)
    streamed = LOADER_BATCHES * LOADER_RAYS / (time.perf_counter() - started)
    started = time.perf_counter()
    store = read_rays(path)  # the naive loader: the whole store in memory ...
    rng = np.random.default_rng(0)
    for _ in range(LOADER_BATCHES):  # ... and random batches indexed out of it
        pick = rng.integers(0, len(store), LOADER_RAYS)
        {name: torch.from_numpy(getattr(store, name)[pick]) for name in ("origins", "dirs", "rgb", "near_far")}
    in_memory = LOADER_BATCHES * LOADER_RAYS / (time.perf_counter() - started)
    return [
        BenchRow(
            "ray loader rays/s, Zarr stream + shuffle buffer (b000)",
            streamed,
            "whole store in memory",
            in_memory,
            "rays/s",
        ),
        _chunk_read_row(path),
    ]


def _chunk_read_row(path: str) -> BenchRow:
    """Rays/s reading every stored chunk of a store, each once, as the loader does: its chunk reader against
    Zarr's own reads of the same rows."""
    store = open_ray_store(path)
    pieces = store.pieces()
    rays = int((pieces[:, 1] - pieces[:, 0]).sum())
    reader, arrays = store.chunk_reader(COLUMNS), store.columns(COLUMNS)
    started = time.perf_counter()
    for start, stop, _ in pieces:
        reader.rows(start, stop)
    direct = rays / (time.perf_counter() - started)
    started = time.perf_counter()
    for start, stop, _ in pieces:
        {name: array[start:stop] for name, array in arrays.items()}
    through_zarr = rays / (time.perf_counter() - started)
    return BenchRow("chunk reads rays/s, shards read directly (b000)", direct, "Zarr's reads", through_zarr, "rays/s")


def run() -> list[BenchRow]:
    with partitioned_city("tiny", SYNTH, PARTITION, "bench_train_") as ws:
        rows = []
        for block in BLOCKS:
            guided = _train(ws, block, _config())
            uniform = _train(ws, block, _config("sampler.kind=uniform", "sampler.num_samples=32"))
            rows.append(BenchRow(f"{block} train steps/s, surface-guided", guided[0], "uniform", uniform[0], "steps/s"))
            rows.append(
                BenchRow(f"{block} train samples/s, surface-guided", guided[1], "uniform", uniform[1], "samples/s")
            )
        return rows + _loader_rows(ws)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print_table("block training (CPU, 1 thread)", run())

"""Lay one batch's assigned rays out per block, shuffled, in a single copy.

A block's rays in a batch are shuffled in runs of SHUFFLE_RUN consecutive rays (`shuffle_order`) of its rays
in batch order (image by image, pixel by pixel). Instead of gathering each image's rays per block, joining
them and then permuting them, `scatter` writes every (ray, block) pair of an image straight to its final row:
the run it falls in has a known output start (`run_starts`), so each ray is copied once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigscene.store.blocks import RAY_COLUMNS, Rays
from partitioning.compiled import COMPILED, jit

#: Rays are shuffled in runs of this many consecutive rays (16 x 4 pixels in tile order): a 64k-ray chunk still
#: mixes about a thousand patches of every image in the batch, and the copy stays cache-friendly. Training
#: shuffles individual rays again in its buffer.
SHUFFLE_RUN = 64


def shuffle_order(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count,) int64 permutation moving runs of SHUFFLE_RUN consecutive indices to random places."""
    runs = rng.permutation(-(-count // SHUFFLE_RUN))
    order = (runs[:, None] * SHUFFLE_RUN + np.arange(SHUFFLE_RUN)).reshape(-1)
    return order[order < count]


def run_starts(count: int, rng: np.random.Generator) -> np.ndarray:
    """(runs,) int64 output row of each input run under `shuffle_order(count, rng)` (the same draw): input ray
    i lands on row starts[i // SHUFFLE_RUN] + i % SHUFFLE_RUN."""
    runs = rng.permutation(-(-count // SHUFFLE_RUN))  # runs[j]: the input run placed j-th
    place = np.empty_like(runs)
    place[runs] = np.arange(len(runs))
    starts = place * SHUFFLE_RUN
    if len(runs):
        short = len(runs) * SHUFFLE_RUN - count  # the last input run is this much shorter
        starts[place > place[-1]] -= short
    return starts


@dataclass
class ImageRays:
    """One image's rays and their assignment: origins, dirs (N, 3) float32, rgb (N, 3) uint8, pixel (N, 2)
    uint16, and the M (ray, block) pairs ray (M,) int64, block (M,) int32, near_far (M, 2) float32, in ray
    order."""

    image_id: int
    origins: np.ndarray
    dirs: np.ndarray
    rgb: np.ndarray
    pixel: np.ndarray
    ray: np.ndarray
    block: np.ndarray
    near_far: np.ndarray


def lay_out(images: list[ImageRays], num_blocks: int, seeds: list[list[int]]) -> list[Rays]:
    """Each block's rays of `images`, in batch order shuffled by `shuffle_order` with a generator seeded by
    seeds[block]; one Rays per block (empty where a block got none)."""
    counts = np.zeros(num_blocks, dtype=np.int64)
    for image in images:
        counts += np.bincount(image.block, minlength=num_blocks)
    offsets = np.concatenate([[0], np.cumsum(counts)])  # block b's rows: [offsets[b], offsets[b + 1])
    starts = [run_starts(int(n), np.random.default_rng(seeds[b])) + offsets[b] for b, n in enumerate(counts)]
    first_run = np.concatenate([[0], np.cumsum([len(s) for s in starts])])
    starts_all = np.concatenate(starts).astype(np.int64)
    total = int(offsets[-1])
    out = Rays(**{name: np.empty((total, *shape), dtype) for name, (shape, dtype) in RAY_COLUMNS.items()})
    filled = np.zeros(num_blocks, dtype=np.int64)  # rays already placed per block
    copy = _scatter if COMPILED else _scatter_numpy
    for image in images:
        copy(
            image.ray,
            image.block,
            image.near_far,
            image.origins,
            image.dirs,
            image.rgb,
            image.pixel,
            np.int32(image.image_id),
            filled,
            first_run,
            starts_all,
            out.origins,
            out.dirs,
            out.rgb,
            out.near_far,
            out.image_id,
            out.pixel,
        )
    return [out.take(slice(offsets[b], offsets[b + 1])) for b in range(num_blocks)]


@jit
def _scatter(
    ray: np.ndarray,
    block: np.ndarray,
    near_far: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    rgb: np.ndarray,
    pixel: np.ndarray,
    image_id: np.int32,
    filled: np.ndarray,
    first_run: np.ndarray,
    starts: np.ndarray,
    out_origins: np.ndarray,
    out_dirs: np.ndarray,
    out_rgb: np.ndarray,
    out_near_far: np.ndarray,
    out_image_id: np.ndarray,
    out_pixel: np.ndarray,
) -> None:
    """Copy each pair's ray to its block's next row in shuffled order; `filled` counts the rays placed."""
    for m in range(len(ray)):
        b, r = block[m], ray[m]
        i = filled[b]
        filled[b] = i + 1
        row = starts[first_run[b] + i // SHUFFLE_RUN] + i % SHUFFLE_RUN
        for a in range(3):
            out_origins[row, a] = origins[r, a]
            out_dirs[row, a] = dirs[r, a]
            out_rgb[row, a] = rgb[r, a]
        out_near_far[row, 0] = near_far[m, 0]
        out_near_far[row, 1] = near_far[m, 1]
        out_image_id[row] = image_id
        out_pixel[row, 0] = pixel[r, 0]
        out_pixel[row, 1] = pixel[r, 1]


def _scatter_numpy(
    ray: np.ndarray,
    block: np.ndarray,
    near_far: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    rgb: np.ndarray,
    pixel: np.ndarray,
    image_id: np.int32,
    filled: np.ndarray,
    first_run: np.ndarray,
    starts: np.ndarray,
    out_origins: np.ndarray,
    out_dirs: np.ndarray,
    out_rgb: np.ndarray,
    out_near_far: np.ndarray,
    out_image_id: np.ndarray,
    out_pixel: np.ndarray,
) -> None:
    """`_scatter` vectorised, for machines without numba."""
    by_block = np.argsort(block, kind="stable")  # pairs grouped by block, in ray order within each
    sorted_block = block[by_block]
    group_start = np.searchsorted(sorted_block, np.arange(len(filled)))
    i = filled[sorted_block] + np.arange(len(by_block)) - group_start[sorted_block]  # (M,) rank in its block
    rows = starts[first_run[sorted_block] + i // SHUFFLE_RUN] + i % SHUFFLE_RUN
    r = ray[by_block]
    out_origins[rows] = origins[r]
    out_dirs[rows] = dirs[r]
    out_rgb[rows] = rgb[r]
    out_near_far[rows] = near_far[by_block]
    out_image_id[rows] = image_id
    out_pixel[rows] = pixel[r]
    filled += np.bincount(block, minlength=len(filled))

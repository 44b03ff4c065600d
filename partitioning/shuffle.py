"""Lay one batch's assigned rays out per block, shuffled, in a single copy.

A block's rays in a batch are shuffled in runs of SHUFFLE_RUN consecutive rays (`shuffle_order`) of its rays
in batch order (image by image, pixel by pixel). Instead of gathering each image's rays per block, joining
them and then permuting them, `BatchLayout.lay_out` copies every (ray, block) pair of an image straight to its
final row: the run it falls in has a known output start (`run_starts`), so each ray is copied once.
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


class BatchLayout:
    """Where one batch's rays go: each block's rays of `images` in batch order, shuffled by `shuffle_order` with a
    generator seeded by seeds[block]. `lay_out` copies the rays of a range of blocks into a buffer reused from
    range to range, so a task holds one range's rays at a time rather than the whole batch's twice."""

    def __init__(self, images: list[ImageRays], num_blocks: int, seeds: list[list[int]]) -> None:
        self.images = images
        self.image_counts = np.zeros((len(images), num_blocks), dtype=np.int64)  # rays of each image per block
        for row, image in zip(self.image_counts, images, strict=True):
            row += np.bincount(image.block, minlength=num_blocks)
        self.counts = self.image_counts.sum(axis=0)  # rays per block
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # block b's rows: [offsets[b], offsets[b + 1])
        starts = [
            run_starts(int(n), np.random.default_rng(seeds[b])) + self.offsets[b] for b, n in enumerate(self.counts)
        ]
        self.first_run = np.concatenate([[0], np.cumsum([len(s) for s in starts])])  # block b's runs start here
        self.starts = np.concatenate(starts).astype(np.int64)  # (runs,) output row of each run, all blocks
        self._buffer = Rays.empty()

    def ranges(self, max_rays: int) -> list[tuple[int, int]]:
        """Consecutive block ranges [lo, hi) of at most max_rays rays each (or one block, if it holds more)."""
        out, lo = [], 0
        for b in range(1, len(self.counts) + 1):
            if b == len(self.counts) or self.offsets[b + 1] - self.offsets[lo] > max_rays:
                out.append((lo, b))
                lo = b
        return out

    def lay_out(self, lo: int, hi: int) -> list[Rays]:
        """The rays of blocks lo..hi-1, one Rays each (empty where a block got none): views into the buffer, valid
        until the next call."""
        base, total = int(self.offsets[lo]), int(self.offsets[hi] - self.offsets[lo])
        if len(self._buffer) < total:
            self._buffer = Rays(
                **{name: np.empty((total, *shape), dtype) for name, (shape, dtype) in RAY_COLUMNS.items()}
            )
        out = self._buffer
        filled = np.zeros(len(self.counts), dtype=np.int64)  # rays already placed per block
        for image in self.images:
            if not COMPILED:
                _scatter_numpy(image, lo, hi, base, filled, self.first_run, self.starts, out)
                continue
            _scatter(
                image.ray,
                image.block,
                image.near_far,
                image.origins,
                image.dirs,
                image.rgb,
                image.pixel,
                np.int32(image.image_id),
                lo,
                hi,
                base,
                filled,
                self.first_run,
                self.starts,
                out.origins,
                out.dirs,
                out.rgb,
                out.near_far,
                out.image_id,
                out.pixel,
            )
        return [out.take(slice(self.offsets[b] - base, self.offsets[b + 1] - base)) for b in range(lo, hi)]


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
    lo: int,
    hi: int,
    base: int,
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
    """Copy the ray of each pair of a block in [lo, hi) to that block's next row in shuffled order, less `base`;
    `filled` counts the rays placed per block."""
    for m in range(len(ray)):
        b, r = block[m], ray[m]
        if b < lo or b >= hi:
            continue
        i = filled[b]
        filled[b] = i + 1
        row = starts[first_run[b] + i // SHUFFLE_RUN] + i % SHUFFLE_RUN - base
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
    image: ImageRays,
    lo: int,
    hi: int,
    base: int,
    filled: np.ndarray,
    first_run: np.ndarray,
    starts: np.ndarray,
    out: Rays,
) -> None:
    """`_scatter` for one image, vectorised, for machines without numba."""
    block = image.block
    in_range = np.flatnonzero((block >= lo) & (block < hi))
    by_block = in_range[np.argsort(block[in_range], kind="stable")]  # pairs grouped by block, in ray order
    sorted_block = block[by_block]
    group_start = np.searchsorted(sorted_block, np.arange(len(filled)))
    i = filled[sorted_block] + np.arange(len(by_block)) - group_start[sorted_block]  # (M,) rank in its block
    rows = starts[first_run[sorted_block] + i // SHUFFLE_RUN] + i % SHUFFLE_RUN - base
    r = image.ray[by_block]
    out.origins[rows] = image.origins[r]
    out.dirs[rows] = image.dirs[r]
    out.rgb[rows] = image.rgb[r]
    out.near_far[rows] = image.near_far[by_block]
    out.image_id[rows] = image.image_id
    out.pixel[rows] = image.pixel[r]
    filled += np.bincount(sorted_block, minlength=len(filled))

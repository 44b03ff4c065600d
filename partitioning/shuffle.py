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
from partitioning.buffers import Pool
from partitioning.compiled import COMPILED, jit

#: Buffers `BatchLayout.lay_out` fills in turn: a range's rays are written while the next range is laid out.
LAYOUT_BUFFERS = 2

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


def _allocate_rays(count: int) -> Rays:
    return Rays(**{name: np.empty((count, *shape), dtype) for name, (shape, dtype) in RAY_COLUMNS.items()})


#: Each process's layout buffers, reused by its next batch (see `partitioning.buffers`).
_LAYOUT_BUFFERS: Pool[Rays] = Pool(_allocate_rays, len)


def release_layout_buffers() -> None:
    """Drop the layout buffers kept for a next batch."""
    _LAYOUT_BUFFERS.clear()


@dataclass
class ImageRays:
    """One image's rays and their assignment: origin (3,) float32 (the camera centre, every ray's origin), dirs
    (N, 3) float32, rgb (N, 3) uint8, pixel (N, 2) uint16, and the M (ray, block) pairs ray (M,) int32, block (M,)
    int32, near_far (M, 2) float32, in ray order."""

    image_id: int
    origin: np.ndarray
    dirs: np.ndarray
    rgb: np.ndarray
    pixel: np.ndarray
    ray: np.ndarray
    block: np.ndarray
    near_far: np.ndarray


class BatchLayout:
    """Where one batch's rays go: each block's rays of `images` in batch order, shuffled by `shuffle_order` with a
    generator seeded by seeds[block]. `lay_out` copies the rays of a range of blocks into one of LAYOUT_BUFFERS
    buffers reused in turn, so a task holds a few ranges' rays at a time rather than the whole batch's twice;
    `release` gives them back for the next batch. Each image's pairs are grouped by block once (a counting sort), so
    a range visits only its own pairs, and a block's copies read its rays and write its rows front to back."""

    def __init__(self, images: list[ImageRays], num_blocks: int, seeds: list[list[int]]) -> None:
        self.images = images
        self.image_counts = np.zeros((len(images), num_blocks), dtype=np.int64)  # rays of each image per block
        for row, image in zip(self.image_counts, images, strict=True):
            row += np.bincount(image.block, minlength=num_blocks)
        # image k's pairs of block b: by_block[k][bounds[k, b]:bounds[k, b + 1]], ranked from first_rank[k, b] on
        self.bounds = np.zeros((len(images), num_blocks + 1), dtype=np.int64)
        np.cumsum(self.image_counts, axis=1, out=self.bounds[:, 1:])
        self.first_rank = np.cumsum(self.image_counts, axis=0) - self.image_counts
        self.by_block = [_group_by_block(im.block, bounds) for im, bounds in zip(images, self.bounds, strict=True)]
        self.counts = self.image_counts.sum(axis=0)  # rays per block
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # block b's rows: [offsets[b], offsets[b + 1])
        starts = [
            run_starts(int(n), np.random.default_rng(seeds[b])) + self.offsets[b] for b, n in enumerate(self.counts)
        ]
        self.first_run = np.concatenate([[0], np.cumsum([len(s) for s in starts])])  # block b's runs start here
        self.starts = np.concatenate(starts).astype(np.int64)  # (runs,) output row of each run, all blocks
        self._buffers: list[Rays | None] = [None] * LAYOUT_BUFFERS
        self._turn = 0

    def release(self) -> None:
        """Give the buffers back for the process's next batch: no ray `lay_out` returned is read after this."""
        _LAYOUT_BUFFERS.give(buffer for buffer in self._buffers if buffer is not None)
        self._buffers = [None] * LAYOUT_BUFFERS

    def ranges(self, max_rays: int) -> list[tuple[int, int]]:
        """Consecutive block ranges [lo, hi) of at most max_rays rays each (or one block, if it holds more)."""
        out, lo = [], 0
        for b in range(1, len(self.counts) + 1):
            if b == len(self.counts) or self.offsets[b + 1] - self.offsets[lo] > max_rays:
                out.append((lo, b))
                lo = b
        return out

    def lay_out(self, lo: int, hi: int) -> list[Rays]:
        """The rays of blocks lo..hi-1, one Rays each (empty where a block got none): views into a buffer, valid
        until LAYOUT_BUFFERS more calls."""
        base, total = int(self.offsets[lo]), int(self.offsets[hi] - self.offsets[lo])
        turn, self._turn = self._turn, (self._turn + 1) % LAYOUT_BUFFERS
        out = self._buffers[turn]
        if out is None or len(out) < total:
            self._buffers[turn] = None  # given back once: `release` must not give it again
            if out is not None:
                _LAYOUT_BUFFERS.give([out])
            out = self._buffers[turn] = _LAYOUT_BUFFERS.take(total)
        for k, image in enumerate(self.images):
            if not COMPILED:
                _scatter_numpy(self, k, lo, hi, base, out)
                continue
            _scatter(
                self.by_block[k],
                self.bounds[k],
                self.first_rank[k],
                image.ray,
                image.near_far,
                image.origin,
                image.dirs,
                image.rgb,
                image.pixel,
                np.int32(image.image_id),
                lo,
                hi,
                base,
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


def _group_by_block(block: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(M,) int32 pair indices grouped by block, in pair order within a block (a stable sort of block (M,)), given
    each block's first position bounds (B + 1,)."""
    if not COMPILED:
        return np.argsort(block, kind="stable").astype(np.int32)
    return _counting_sort(block, bounds)


@jit
def _counting_sort(block: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    order = np.empty(len(block), dtype=np.int32)
    next_slot = bounds[:-1].copy()
    for m in range(len(block)):
        b = block[m]
        order[next_slot[b]] = m
        next_slot[b] += 1
    return order


@jit
def _scatter(
    by_block: np.ndarray,
    bounds: np.ndarray,
    first_rank: np.ndarray,
    ray: np.ndarray,
    near_far: np.ndarray,
    origin: np.ndarray,
    dirs: np.ndarray,
    rgb: np.ndarray,
    pixel: np.ndarray,
    image_id: np.int32,
    lo: int,
    hi: int,
    base: int,
    first_run: np.ndarray,
    starts: np.ndarray,
    out_origins: np.ndarray,
    out_dirs: np.ndarray,
    out_rgb: np.ndarray,
    out_near_far: np.ndarray,
    out_image_id: np.ndarray,
    out_pixel: np.ndarray,
) -> None:
    """Copy the ray of each of an image's pairs of blocks lo..hi-1 to its block's row in shuffled order, less
    `base`: the i-th ray of block b (counting from first_rank[b]) goes to the i % SHUFFLE_RUN-th row of its run, so
    consecutive pairs fill consecutive rows up to the end of a run."""
    for b in range(lo, hi):
        i = first_rank[b]
        k, end = bounds[b], bounds[b + 1]
        while k < end:
            offset = i % SHUFFLE_RUN
            count = min(SHUFFLE_RUN - offset, end - k)  # pairs landing in this run
            row = starts[first_run[b] + i // SHUFFLE_RUN] + offset - base
            for s in range(count):
                m = by_block[k + s]
                r = ray[m]
                out_origins[row, 0], out_origins[row, 1], out_origins[row, 2] = origin[0], origin[1], origin[2]
                out_dirs[row, 0], out_dirs[row, 1], out_dirs[row, 2] = dirs[r, 0], dirs[r, 1], dirs[r, 2]
                out_rgb[row, 0], out_rgb[row, 1], out_rgb[row, 2] = rgb[r, 0], rgb[r, 1], rgb[r, 2]
                out_near_far[row, 0], out_near_far[row, 1] = near_far[m, 0], near_far[m, 1]
                out_image_id[row] = image_id
                out_pixel[row, 0], out_pixel[row, 1] = pixel[r, 0], pixel[r, 1]
                row += 1
            k += count
            i += count


def _scatter_numpy(layout: BatchLayout, k: int, lo: int, hi: int, base: int, out: Rays) -> None:
    """`_scatter` for image k of the layout, vectorised, for machines without numba."""
    image, bounds = layout.images[k], layout.bounds[k]
    pairs = layout.by_block[k][bounds[lo] : bounds[hi]]
    block = image.block[pairs]
    rank = layout.first_rank[k, block] + np.arange(bounds[lo], bounds[hi]) - bounds[block]  # (M,) rank in its block
    rows = layout.starts[layout.first_run[block] + rank // SHUFFLE_RUN] + rank % SHUFFLE_RUN - base
    r = image.ray[pairs]
    out.origins[rows] = image.origin
    out.dirs[rows] = image.dirs[r]
    out.rgb[rows] = image.rgb[r]
    out.near_far[rows] = image.near_far[pairs]
    out.image_id[rows] = image.image_id
    out.pixel[rows] = image.pixel[r]

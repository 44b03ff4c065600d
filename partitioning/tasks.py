"""The task functions every engine runs: probe a batch, write a batch.

Each takes one job and the shared `Plan`, touches only its own files, and returns a small JSON-able
record, so Ray can retry it and the inline engine can call it in-process. `write_batch` writes each
block's rays straight into the batch's own slot of that block's store (whole chunks no other batch
touches) and records the batch as done, with each block's ray count and checksum, in a marker written
last. A killed attempt leaves at most chunks in its own slot, unread; the retry shuffles the same
rays the same way and rewrites them. A task holds one batch of rays.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import numpy as np

from bigscene.errors import InputError
from bigscene.scene.cameras import Camera
from bigscene.scene.images import load_image
from bigscene.store.blocks import SlotWrite, batch_marker_path, rays_path, start_slot
from bigscene.store.workspace import join, write_json_atomic
from partitioning.assign import GROUP, Assignment, BlockBoxes, PairBuffers, assign, tile_order
from partitioning.buffers import Pool
from partitioning.camera_rays import image_rays
from partitioning.compiled import COMPILED
from partitioning.heap import keep_freed_memory
from partitioning.shuffle import LAYOUT_BUFFERS, BatchLayout, ImageRays, release_layout_buffers
from partitioning.voxels import VisibilityGrid

log = logging.getLogger(__name__)

#: Environment variable for recovery tests: "<batch>:<raise|exit|hang>" makes that batch's first attempt
#: fail after writing its rays and before recording it as done, "<batch>:midway" raise while its first rays are
#: being written; FAULT_DIR in the workspace keeps a flag per injected fault, so the retry runs clean and a test
#: can see that the fault fired.
FAULT_ENV = "BIGSCENE_PARTITION_FAULT"
FAULT_DIR = "partition_faults"


#: Rays laid out and written at once (a range of blocks; about 90 MB): a task holds LAYOUT_BUFFERS of these, not its
#: whole batch, twice.
LAYOUT_RAYS = 1 << 21


@dataclass(frozen=True)
class ImageJob:
    """One training image: global index, file path, intrinsics and (4, 4) camera-to-world pose."""

    index: int
    path: str
    camera: Camera
    c2w: np.ndarray


@dataclass(frozen=True)
class BatchJob:
    """The images one task handles; `index` orders batches in every block's store, `slot` is the first row
    of the batch's slot in each (see `bigscene.store.blocks.slot_rows`)."""

    index: int
    images: tuple[ImageJob, ...]
    slot: int


@dataclass(frozen=True)
class Plan:
    """What every task shares: the layout, the visibility grid and the write options."""

    workspace: str
    block_ids: tuple[str, ...]
    boxes: BlockBoxes
    grid: VisibilityGrid
    visibility_margin: float
    sky: str
    background: tuple[float, float, float] | None  # RGBA images are composited on this colour
    skip_bad_images: bool
    probe_stride: int
    seed: int
    fault: str = ""  # FAULT_ENV as read by the driver


@dataclass
class _ImageBuffers:
    """What reading an image of up to N pixels fills and its batch keeps: rgb (N, 3) uint8, dirs (N, 3) float32, and
    room for its pairs (with numba). They come from `_IMAGE_BUFFERS` on the task's thread and go back when the batch is
    written, so that every batch of a process reuses the same memory (see `partitioning.buffers`)."""

    rgb: np.ndarray
    dirs: np.ndarray
    pairs: PairBuffers | None
    #: The most pairs per pixel of an image read into these buffers (the kernel allocated its own pairs where they
    #: outgrew `pairs`).
    pairs_per_pixel: float = 0.0

    @classmethod
    def for_pixels(cls, n: int) -> _ImageBuffers:
        pairs = PairBuffers.for_rays(n) if COMPILED else None  # the numpy fallback makes its own
        return cls(np.empty((n, 3), np.uint8), np.empty((n, 3), np.float32), pairs)

    def fit_pairs(self, pairs_per_pixel: float, group_room: int) -> None:
        """Make room for an eighth more pairs than `pairs_per_pixel` of these buffers' pixels and `group_room` (the
        room the kernel keeps for a group of rays) need, if `pairs` holds fewer: allocated on the task's thread, like
        the rest (a reader thread's arena gives large arrays back to the kernel)."""
        needed = int(pairs_per_pixel * len(self.rgb)) + group_room
        if self.pairs is not None and needed > len(self.pairs.ray):
            self.pairs = PairBuffers.for_pairs(needed + needed // 8)


#: Each process's image buffers, reused by its next batch.
_IMAGE_BUFFERS: Pool[_ImageBuffers] = Pool(_ImageBuffers.for_pixels, lambda buffers: len(buffers.rgb))


def _assign(
    job: ImageJob, pixels: np.ndarray, plan: Plan, buffers: _ImageBuffers | None = None
) -> tuple[np.ndarray, np.ndarray, Assignment]:
    """The rays through `pixels` (N, 2) of the job's camera, origins and dirs (N, 3), and their assignment; dirs and
    pairs written into `buffers` when given."""
    if buffers is None:
        rays, pairs = None, None
    else:
        origins = np.empty((len(pixels), 3), np.float32)  # dropped once assigned: a reader's first heap reuses it
        rays, pairs = (origins, buffers.dirs[: len(pixels)]), buffers.pairs
    origins, dirs = image_rays(job.camera, job.c2w, pixels, rays)
    found = assign(origins, dirs, plan.boxes, plan.grid, plan.visibility_margin, plan.sky, pairs)
    if buffers is not None and len(pixels):
        buffers.pairs_per_pixel = max(buffers.pairs_per_pixel, len(found.ray) / len(pixels))
    return origins, dirs, found


def probe_batch(batch: BatchJob, plan: Plan) -> list[int]:
    """Foreground rays per block from every `probe_stride`-th pixel of the batch's images (no image I/O)."""
    counts = np.zeros(len(plan.block_ids), dtype=np.int64)
    s = plan.probe_stride
    for job in batch.images:
        grid_y, grid_x = np.meshgrid(
            np.arange(s // 2, job.camera.height, s), np.arange(s // 2, job.camera.width, s), indexing="ij"
        )
        pixels = np.stack([grid_x.reshape(-1), grid_y.reshape(-1)], axis=-1)  # (n, 2)
        _, _, found = _assign(job, pixels, plan)
        counts += np.bincount(found.block[~found.background], minlength=len(counts))
    return counts.tolist()


@functools.lru_cache(maxsize=2)
def _tiled_pixels(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """An image size's pixels tile by tile (`tile_order`): row-major indices (W*H,) int64 and (x, y) (W*H, 2)
    uint16 (the store's pixel dtype). Cached, as a batch's images mostly share a size: callers must not modify
    them."""
    order = tile_order(width, height)
    return order, np.stack(np.divmod(order, width)[::-1], axis=-1).astype(np.uint16)


def _load(job: ImageJob, plan: Plan) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a training image; InputError if missing, corrupt or of the wrong size."""
    rgb = load_image(job.path, plan.background)
    if rgb.shape[:2] != (job.camera.height, job.camera.width):
        raise InputError(
            job.path,
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but its camera is calibrated for "
            f"{job.camera.width}x{job.camera.height}; re-ingest the scene",
        )
    return rgb


def _read_image(
    job: ImageJob, plan: Plan, order: np.ndarray, pixel: np.ndarray, buffers: _ImageBuffers
) -> tuple[ImageRays, Assignment]:
    """One image of a batch read, its rays made and assigned into `buffers`: its rays in tile order
    (`_tiled_pixels`) with their (ray, block) pairs, and the assignment they come from. InputError if the image is
    missing, corrupt or of the wrong size."""
    pixels = _load(job, plan).reshape(-1).view("V3")  # (H*W,) 3-byte items: gathered 4x faster than (H*W, 3) rows
    rgb = buffers.rgb[: len(order)]
    pixels.take(order, out=rgb.view("V3").reshape(-1), mode="clip")  # tile order; "clip": not via a copy
    origins, dirs, found = _assign(job, pixel, plan, buffers)
    origin = origins[0].copy()  # every ray's: the camera centre
    return ImageRays(job.index, origin, dirs, rgb, pixel, found.ray, found.block, found.near_far), found


#: Threads per process that read and assign a batch's images (decoding and the compiled kernels release the GIL):
#: with the chunk writers, a task keeps a few cores busy while it reads, as it does while it writes.
IMAGE_READERS = 4


@functools.cache
def _image_readers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(IMAGE_READERS, os.cpu_count() or 1), "ray-images")


@contextmanager
def _image_buffers(num_blocks: int) -> Iterator[list[_ImageBuffers]]:
    """A list for the image buffers a batch takes from `_IMAGE_BUFFERS` (see `_reading`), given back when the block
    exits (by then nothing reads them), each with room for as many pairs per pixel as the batch's images had, and
    for the pairs a group of rays may add, one per block, before the kernel makes room."""
    taken: list[_ImageBuffers] = []
    try:
        yield taken
    finally:
        pairs_per_pixel = max((buffers.pairs_per_pixel for buffers in taken), default=0.0)
        for buffers in taken:
            buffers.fit_pairs(pairs_per_pixel, GROUP * num_blocks)
        _IMAGE_BUFFERS.give(taken)


def release_buffers() -> None:
    """Drop this process's buffers kept for its next batch (`_IMAGE_BUFFERS`, the layout's): the run is over."""
    _IMAGE_BUFFERS.clear()
    release_layout_buffers()


@contextmanager
def _reading(jobs: Sequence[ImageJob], plan: Plan, taken: list[_ImageBuffers]) -> Iterator[list[Future]]:
    """`_read_image` of each job under way, IMAGE_READERS at a time, in batch order, into buffers it adds to `taken`;
    when the block exits (a bad image that fails the task), the images not yet begun are cancelled and those begun
    waited for."""
    reading: list[Future] = []
    try:
        for job in jobs:  # each size's tiles found once, and every image's buffers taken, on this thread
            tiles = _tiled_pixels(job.camera.width, job.camera.height)
            taken.append(_IMAGE_BUFFERS.take(job.camera.width * job.camera.height))
            reading.append(_image_readers().submit(_read_image, job, plan, *tiles, taken[-1]))
        yield reading
    finally:
        for future in reading:
            future.cancel()
        futures.wait(reading)  # no reader of this task still running once it fails (a retry may follow at once)


@dataclass
class _BatchRead:
    """A batch's images read and assigned (those that could be read), and their tallies."""

    images: list[ImageRays]
    pixels: int
    assigned_pixels: int
    dropped: dict[str, int]
    skipped: list[str]
    background: np.ndarray  # (B,) int64 background rays per block


def write_batch(batch: BatchJob, plan: Plan) -> dict:
    """Read, assign and write one batch; returns (and records in the workspace) the batch's marker."""
    keep_freed_memory()
    num_blocks = len(plan.block_ids)
    with _image_buffers(num_blocks) as taken:
        read = _read_batch(batch, plan, taken)
        layout = BatchLayout(read.images, num_blocks, [[plan.seed, batch.index, b] for b in range(num_blocks)])
        try:
            rays_written, checksums = _write_layout(batch, plan, layout)
        finally:
            layout.release()
    block_images = [
        [image.image_id for image, n in zip(read.images, column, strict=True) if n] for column in layout.image_counts.T
    ]
    _inject_fault(plan, batch.index, midway=False)
    marker = {
        "batch": batch.index,
        "slot": batch.slot,
        "images": [job.index for job in batch.images],
        "pixels": read.pixels,
        "assigned_pixels": read.assigned_pixels,
        "dropped": read.dropped,
        "skipped_images": read.skipped,
        "rays": rays_written,
        "checksums": checksums,
        "background": {plan.block_ids[b]: int(n) for b, n in enumerate(read.background) if n},
        "block_images": {plan.block_ids[b]: ims for b, ims in enumerate(block_images) if ims},
    }
    write_json_atomic(batch_marker_path(plan.workspace, batch.index), marker)
    return marker


def _read_batch(batch: BatchJob, plan: Plan, taken: list[_ImageBuffers]) -> _BatchRead:
    """Read and assign the batch's images into buffers added to `taken`; a bad image fails the batch, or is skipped
    and counted with `skip_bad_images`."""
    num_blocks = len(plan.block_ids)
    read = _BatchRead([], 0, 0, {"bad_image": 0, "invalid_ray": 0, "sky": 0}, [], np.zeros(num_blocks, np.int64))
    with _reading(batch.images, plan, taken) as reading:
        for job, future in zip(batch.images, reading, strict=True):
            count = job.camera.width * job.camera.height
            read.pixels += count
            try:
                image, found = future.result()
            except InputError as err:
                if not plan.skip_bad_images:
                    raise
                log.warning("skipping %s", err)
                read.dropped["bad_image"] += count
                read.skipped.append(job.path)
                continue
            for reason, n in found.dropped.items():
                read.dropped[reason] += n
            distinct = np.count_nonzero(found.ray[1:] != found.ray[:-1]) + bool(len(found.ray))  # pairs in ray order
            read.assigned_pixels += int(distinct)
            read.background += np.bincount(found.block[found.background], minlength=num_blocks)
            read.images.append(image)
    return read


def _write_layout(batch: BatchJob, plan: Plan, layout: BatchLayout) -> tuple[dict[str, int], dict[str, str]]:
    """Lay the batch's rays out range by range and write them to its slot of each block's store, a range's chunks
    compressed while the next range is laid out; returns each block's ray count and checksum. On failure, no
    write of the batch is still running when the error leaves."""
    rays_written, checksums = {}, {}
    writing: deque[tuple[list[str], SlotWrite]] = deque()  # ranges whose chunks are being written, oldest first
    try:
        for lo, hi in layout.ranges(LAYOUT_RAYS):
            if len(writing) == LAYOUT_BUFFERS:  # its buffer is the next to be laid out
                _finish_write(writing, checksums)
            laid_out = zip(range(lo, hi), layout.lay_out(lo, hi), strict=True)
            parts = {plan.block_ids[b]: rays for b, rays in laid_out if len(rays)}
            stores = [(rays_path(plan.workspace, block_id), rays) for block_id, rays in parts.items()]
            writing.append((list(parts), start_slot(batch.slot, stores)))
            rays_written.update({block_id: len(rays) for block_id, rays in parts.items()})
            _inject_fault(plan, batch.index, midway=True)
        while writing:
            _finish_write(writing, checksums)
    except BaseException:
        for _, write in writing:
            write.abandon()
        raise
    return rays_written, checksums


def _finish_write(writing: deque[tuple[list[str], SlotWrite]], checksums: dict[str, str]) -> None:
    """Wait for the oldest write under way and record its blocks' checksums; it stays queued if it failed."""
    block_ids, write = writing[0]
    checksums.update(zip(block_ids, write.result(), strict=True))
    writing.popleft()


def _inject_fault(plan: Plan, batch: int, midway: bool) -> None:
    """The recovery tests' fault: on the first attempt at the named batch, raise, exit or hang once its rays are
    written, or raise `midway` through writing them."""
    if not plan.fault:
        return
    target, _, kind = plan.fault.partition(":")
    if int(target) != batch or (kind == "midway") != midway:
        return
    flag = join(plan.workspace, FAULT_DIR, f"{batch:06d}")
    fs, p = fsspec.core.url_to_fs(flag)
    if fs.exists(p):
        return
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    fs.touch(p)
    if kind == "exit":
        os._exit(1)
    if kind == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected fault in batch {batch} ({FAULT_ENV})")

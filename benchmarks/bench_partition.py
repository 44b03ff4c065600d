"""Partitioning throughput and memory.

- Assignment: rays/s on one core for the compiled assignment (one pass over the rays, all blocks at once,
  one visibility march per ray) against a straightforward per-block numpy loop (a numpy slab test per
  block, then one march per later (ray, block) pair), on the same rays; the two must agree exactly. Both run
  with freed memory kept in the heap, as partition tasks run (`partitioning.heap`); a second row gives the
  compiled assignment on glibc's defaults, under which every call faults its output arrays in again, and a
  third the same rays into 32 x 32 blocks (more pairs per ray, and many more boxes to pass over).
- End to end: rays written by `run_partition` with the inline engine (tasks one after another) on 1.2 MP images
  (six batches: the first allocates the buffers the others reuse), per second of wall time against a
  straightforward partitioner (per image, the per-block numpy loop, then each block's rays written to its store),
  and per second of wall time, of its batch phase alone (what a run of thousands of images is made of: the
  per-block set-up and finishing do not grow with the images) and per CPU second (all threads: chunks are
  compressed on a thread pool) against the floor the issue names: decoding the images once and compressing the
  same number of rays into one store; and per CPU second against that floor plus making and assigning every
  pixel's ray on one thread (the work a partition cannot skip), which leaves what the partition adds: laying the
  rays out shuffled, checksums, threads and Python.
- Memory: peak RSS of a whole partition run in a fresh process for 1k and 10k image poses: it must stay
  flat, since memory is bounded by a batch, not by the scene.
"""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.table import BenchRow, print_table
from bigscene.config import load_config
from bigscene.scene import Camera, ImageRecord, Scene, SparsePoints
from bigscene.scene.images import load_image
from bigscene.store import read_scene, write_scene
from bigscene.store.blocks import Rays, RayStoreWriter, rays_path, read_rays
from partitioning.assign import BlockBoxes, assign, nearest_footprint, slab, tile_order
from partitioning.camera_rays import image_rays
from partitioning.heap import keep_freed_memory
from partitioning.layout import XStrips, grid_cells, make_blocks, order_cells
from partitioning.stage import run_partition
from partitioning.voxels import Lattice, VisibilityGrid, visibility_grid

log = logging.getLogger(__name__)

ROI = np.array([[-1.0, -1.0, -0.05], [1.0, 1.0, 0.5]])
GRID = 8  # GRID x GRID blocks
LARGE_GRID = 32  # a layout of many blocks, for how assignment scales with them
VOXEL = 0.02
MARGIN = 0.1


def city_points(seed: int = 0) -> np.ndarray:
    """(P, 3) points on a ground plane and random box buildings inside the ROI."""
    rng = np.random.default_rng(seed)
    ground = np.column_stack([rng.uniform(-1, 1, (60_000, 2)), np.zeros(60_000)])
    walls = []
    for _ in range(40):
        lo = rng.uniform(-0.95, 0.8, 2)
        size = rng.uniform(0.05, 0.15, 2)
        height = rng.uniform(0.1, 0.45)
        pts = rng.uniform(0, 1, (1500, 3)) * [*size, height] + [*lo, 0.0]
        face = rng.integers(0, 5, 1500)  # snap each sample to one of four walls or the roof
        pts[face == 0, 0] = lo[0]
        pts[face == 1, 0] = lo[0] + size[0]
        pts[face == 2, 1] = lo[1]
        pts[face == 3, 1] = lo[1] + size[1]
        pts[face == 4, 2] = height
        walls.append(pts)
    return np.concatenate([ground, *walls])


def poses(count: int, seed: int = 0) -> np.ndarray:
    """(count, 4, 4) oblique aerial cameras over the city, OpenCV camera-to-world."""
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (count, 1, 1))
    for i in range(count):
        position = np.array([*rng.uniform(-1.2, 1.2, 2), rng.uniform(0.9, 1.4)])
        z = np.array([*rng.uniform(-0.6, 0.6, 2), -1.0])
        z /= np.linalg.norm(z)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        out[i, :3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        out[i, :3, 3] = position
    return out


def layout(xyz: np.ndarray, side: int = GRID) -> tuple[BlockBoxes, VisibilityGrid]:
    """side x side blocks over the ROI, and their visibility grid."""
    cells = order_cells(grid_cells(ROI[:, :2], side, side))
    strips = XStrips(xyz)
    blocks = make_blocks(cells, strips, 0.15, 0.1, 2 * VOXEL)
    outer = np.stack([b.outer for b in blocks])
    boxes = BlockBoxes(
        outer.astype(np.float32),
        np.stack([b.inner[:, :2] for b in blocks]).astype(np.float32),
        np.array([b.ground for b in blocks], dtype=np.float32),
    )
    return boxes, visibility_grid(strips, outer, Lattice(ROI[0], VOXEL), 1 << 25)


#: One block's rays (K,) int64 and their segments (K, 2) float32.
BlockRays = tuple[np.ndarray, np.ndarray]


def per_block_loop(o: np.ndarray, d: np.ndarray, boxes: BlockBoxes, grid: VisibilityGrid) -> list[BlockRays]:
    """The straightforward baseline: one block at a time, one visibility march per (ray, block). Each block's rays
    and segments, its sky rays (an empty segment) after the others."""
    segments, crosses = [], []  # per block: (N, 2) entry and exit, (N,) crossing
    for b in range(len(boxes)):
        t0, t1 = slab(o, d, boxes.outer[b : b + 1, 0], boxes.outer[b : b + 1, 1])
        entry_z = o[:, 2] + t0[:, 0] * d[:, 2]
        segments.append(np.concatenate([t0, t1], axis=1))
        crosses.append((t1[:, 0] > t0[:, 0]) & ~((t0[:, 0] > 0) & (entry_z < boxes.ground[b])))
    first = np.min([np.where(c, s[:, 0], np.inf) for c, s in zip(crosses, segments, strict=True)], axis=0)
    sky = np.flatnonzero(np.isinf(first))
    sky_block, sky_t = nearest_footprint(o[sky], d[sky], boxes.inner_xy)
    out = []
    for b, segment in enumerate(segments):
        rays = np.flatnonzero(crosses[b])
        later = rays[segment[rays, 0] > first[rays]]
        hit = grid.first_hit(o[later], d[later], first[later], segment[later, 0] - MARGIN)
        seen = np.setdiff1d(rays, later[segment[later, 0] > hit + MARGIN])
        mine = sky_block == b
        out.append(
            (np.concatenate([seen, sky[mine]]), np.concatenate([segment[seen], np.repeat(sky_t[mine, None], 2, 1)]))
        )
    return out


def pair_set(per_block: list[BlockRays]) -> set[tuple[int, int]]:
    return {(int(r), b) for b, (rays, _) in enumerate(per_block) for r in rays}


def assignment_rows() -> list[BenchRow]:
    xyz = city_points()
    boxes, grid = layout(xyz)
    camera = Camera.pinhole(300.0, 300.0, 160.0, 120.0, 320, 240)
    origins, dirs = [], []
    for c2w in poses(4):
        pixels = camera.pixel_grid().numpy()[tile_order(camera.width, camera.height)]
        o, d = image_rays(camera, c2w, pixels)
        origins.append(o)
        dirs.append(d)
    o, d = np.concatenate(origins), np.concatenate(dirs)

    def best_of(fn: Callable[[], object], repeats: int = 2) -> tuple[float, object]:
        best, out = float("inf"), None
        for _ in range(repeats):
            started = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - started)
        return best, out

    # glibc's defaults first: each call then faults its output arrays in afresh (page faults and zeroing)
    fresh_s, _ = best_of(lambda: assign(o, d, boxes, grid, MARGIN), repeats=7)
    if not keep_freed_memory():  # as a partition task runs: freed memory stays in the heap for the next image
        log.warning("glibc's heap thresholds could not be set: both assignment rows run on its defaults")
    fast_s, found = best_of(lambda: assign(o, d, boxes, grid, MARGIN), repeats=7)
    slow_s, expected = best_of(lambda: per_block_loop(o, d, boxes, grid), repeats=2)
    if set(zip(found.ray.tolist(), found.block.tolist(), strict=True)) != pair_set(expected):
        raise AssertionError("compiled assignment disagrees with the per-block loop")
    n = len(o)
    log.info("assignment: %d rays, %d blocks, %.2f blocks per ray", n, len(boxes), len(found.ray) / n)
    many_boxes, many_grid = layout(xyz, LARGE_GRID)  # the same rays into 16x as many blocks
    many_s, many = best_of(lambda: assign(o, d, many_boxes, many_grid, MARGIN), repeats=7)
    log.info("assignment into %d blocks: %.2f blocks per ray", len(many_boxes), len(many.ray) / n)
    name = f"assigned rays/s/core, {GRID}x{GRID} blocks"
    kept = f"{name} (freed memory kept, as in a partition task)"
    return [
        BenchRow(kept, n / fast_s, "per-block loop", n / slow_s, "rays/s"),
        BenchRow(f"{name}, glibc's default heap", n / fresh_s, "freed memory kept", n / fast_s, "rays/s"),
        BenchRow(
            f"assigned rays/s/core, {LARGE_GRID}x{LARGE_GRID} blocks (freed memory kept)",
            n / many_s,
            f"{GRID}x{GRID} blocks",
            n / fast_s,
            "rays/s",
        ),
    ]


def make_workspace(root: Path, count: int, width: int, height: int) -> Path:
    """A workspace of `count` posed images (all one gradient picture: content does not matter here)."""
    root.mkdir(parents=True)
    images = root / "images"
    images.mkdir()
    gradient = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    Image.fromarray(gradient).save(images / "base.png")
    data = (images / "base.png").read_bytes()
    records = []
    for i in range(count):
        (images / f"{i:05d}.png").write_bytes(data)
        records.append(ImageRecord(f"{i:05d}.png", 0, i, "train"))
    xyz = city_points()
    points = SparsePoints(
        xyz, np.zeros((len(xyz), 3), np.uint8), np.full(len(xyz), 3, np.int32), np.zeros(len(xyz), np.float32)
    )
    camera = Camera.pinhole(0.9 * width, 0.9 * width, width / 2, height / 2, width, height)
    write_scene(root, Scene({0: camera}, records, poses(count), points, str(images), ROI))
    return root


#: End to end: images of a realistic size (1.2 MP), six tasks of 8.
E2E_IMAGES, E2E_WIDTH, E2E_HEIGHT = 48, 1280, 960


#: Images the straightforward end-to-end baseline partitions (it is about 40x slower than run_partition).
STRAIGHTFORWARD_IMAGES = 2


def straightforward_partition(ws: Path, out: Path, chunk: int) -> int:
    """The end-to-end baseline: each of the first STRAIGHTFORWARD_IMAGES training images decoded, its rays made and
    assigned one block at a time (`per_block_loop`), and each block's rays, unshuffled, written to its own store.
    Returns the rays written."""
    scene = read_scene(str(ws))
    boxes, grid = layout(city_points())
    parts: list[list[Rays]] = [[] for _ in range(len(boxes))]
    for index in scene.split_indices("train")[:STRAIGHTFORWARD_IMAGES]:
        record = scene.images[index]
        camera = scene.cameras[record.camera_id]
        rgb = load_image(str(Path(scene.image_root) / record.name)).reshape(-1, 3)
        pixels = camera.pixel_grid().numpy()
        o, d = image_rays(camera, scene.c2w[index], pixels)
        for block, (rays, segments) in enumerate(per_block_loop(o, d, boxes, grid)):
            parts[block].append(Rays(o[rays], d[rays], rgb[rays], segments, np.full(len(rays), index), pixels[rays]))
    written = 0
    for block, rays in enumerate(Rays.concat(p) for p in parts):
        writer = RayStoreWriter(str(out / f"{block:03d}.zarr"), len(rays), chunk)
        writer.append(rays)
        writer.close()
        written += len(rays)
    return written


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (Zarr compresses on a thread pool)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def end_to_end_rows(tmp: Path) -> list[BenchRow]:
    ws = make_workspace(tmp / "e2e", E2E_IMAGES, E2E_WIDTH, E2E_HEIGHT)
    overrides = ["partition.engine=inline", f"partition.rows={GRID}", f"partition.cols={GRID}"]
    config = load_config(None, [*overrides, f"partition.voxel_size={VOXEL}"])
    small = load_config(None, ["partition.engine=inline", "partition.rows=2", "partition.cols=2"])
    run_partition(str(make_workspace(tmp / "warm_up", 4, 160, 120)), small)  # kernels compiled or loaded: not timed
    started, cpu = time.perf_counter(), cpu_seconds()
    summary = run_partition(str(ws), config)
    e2e_s, e2e_cpu = time.perf_counter() - started, cpu_seconds() - cpu

    # the floor the issue names: decoding every image once and compressing the same rays into one store
    scene = read_scene(str(ws))
    largest = max(summary["rays_per_block"], key=summary["rays_per_block"].get)
    sample = read_rays(rays_path(str(ws), largest), 0, 1 << 20)
    writer = RayStoreWriter(str(tmp / "one.zarr"), summary["rays"], config.partition.chunk_rays)
    started, cpu = time.perf_counter(), cpu_seconds()
    for index in scene.split_indices("train"):
        load_image(str(Path(scene.image_root) / scene.images[index].name))
    for start in range(0, summary["rays"], len(sample)):
        writer.append(sample.take(slice(0, min(len(sample), summary["rays"] - start))))
    writer.close()
    floor_s, floor_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    assign_cpu = assignment_cpu_seconds(scene)

    started = time.perf_counter()
    straightforward_rays = straightforward_partition(ws, tmp / "straightforward", config.partition.chunk_rays)
    straightforward_s = time.perf_counter() - started
    log.info("straightforward: %d rays in %.1f s", straightforward_rays, straightforward_s)
    log.info(
        "end to end: %d pixels, %d rays in %.1f s, %.1f CPU s (floor %.1f s, %.1f CPU s)",
        summary["pixels"],
        summary["rays"],
        e2e_s,
        e2e_cpu,
        floor_s,
        floor_cpu,
    )
    size = f"{E2E_IMAGES} x {E2E_WIDTH}x{E2E_HEIGHT}, inline"
    floor = "decode the images + write the rays to one store"
    return [
        BenchRow(
            f"rays written/s end to end ({size})",
            summary["rays"] / e2e_s,
            f"per-block numpy loop end to end ({STRAIGHTFORWARD_IMAGES} of the images)",
            straightforward_rays / straightforward_s,
            "rays/s",
        ),
        BenchRow(
            f"rays written/s end to end ({size})",
            summary["rays"] / e2e_s,
            floor,
            summary["rays"] / floor_s,
            "rays/s",
        ),
        BenchRow(
            f"rays written/s by the batches alone ({size}; per-block set-up and finishing left out)",
            summary["rays"] / summary["timings"]["batches"],
            floor,
            summary["rays"] / floor_s,
            "rays/s",
        ),
        BenchRow(
            f"rays written per CPU second, all threads ({size})",
            summary["rays"] / e2e_cpu,
            floor,
            summary["rays"] / floor_cpu,
            "rays/CPU s",
        ),
        BenchRow(
            f"rays written per CPU second, all threads ({size})",
            summary["rays"] / e2e_cpu,
            "the same + make and assign every pixel's ray (the work no partition skips)",
            summary["rays"] / (floor_cpu + assign_cpu),
            "rays/CPU s",
        ),
    ]


def assignment_cpu_seconds(scene: Scene) -> float:
    """CPU seconds to make and assign the rays of every training pixel of `scene` on this thread, into the
    benchmark's blocks, as a partition task does (tile order, freed memory kept)."""
    boxes, grid = layout(city_points())
    keep_freed_memory()
    cpu = 0.0
    for index in scene.split_indices("train"):
        camera = scene.camera_of(int(index))
        pixels = camera.pixel_grid().numpy()[tile_order(camera.width, camera.height)]
        started = time.thread_time()
        origins, dirs = image_rays(camera, scene.c2w[index], pixels)
        assign(origins, dirs, boxes, grid, MARGIN)
        cpu += time.thread_time() - started
    return cpu


#: A whole partition run in a fresh process; prints its peak RSS (VmHWM, which unlike ru_maxrss does not
#: inherit the parent's peak across fork and exec) and the rays it wrote.
_CHILD = """
import re, sys
from bigscene.config import load_config
from partitioning.stage import run_partition
config = load_config(None, ["partition.engine=inline", "partition.images_per_task=64", "partition.probe_stride=4"])
summary = run_partition(sys.argv[1], config)
status = open("/proc/self/status").read()
print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), summary["rays"])
"""


def peak_rss_mib(ws: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(ws)], check=True, capture_output=True, text=True)
    kib, rays = out.stdout.split()[-2:]
    log.info("%s: %s rays, peak RSS %.0f MiB", ws.name, rays, int(kib) / 1024)
    return int(kib) / 1024


def memory_rows(tmp: Path) -> list[BenchRow]:
    small = peak_rss_mib(make_workspace(tmp / "poses_1k", 1_000, 16, 12))
    large = peak_rss_mib(make_workspace(tmp / "poses_10k", 10_000, 16, 12))
    return [BenchRow("peak RSS, 10k poses", large, "1k poses", small, "MiB", higher_is_better=False)]


def run() -> list[BenchRow]:
    torch.set_num_threads(1)
    rows = assignment_rows()
    with tempfile.TemporaryDirectory() as tmp:
        rows += end_to_end_rows(Path(tmp))
        rows += memory_rows(Path(tmp))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print_table("partitioning (CPU)", run())

"""Partitioning on the analytic test city: layout, assignment, stores, engines, recovery and bad input.

Real local Ray (2 CPUs) and real Zarr stores; the inline engine where the engine does not matter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from test_partition_scene import HEIGHT, ROI, WIDTH, make_city, nadir_poses, ray_depth, ring_poses, surface_points

from bigscene.config import Config, load_config
from bigscene.errors import ConfigError, InputError, WorkspaceError
from bigscene.scene.cameras import Camera, generate_rays
from bigscene.store import read_scene, scene_path
from bigscene.store.blocks import (
    RAY_COLUMNS,
    RayChecksum,
    Rays,
    block_json_path,
    open_ray_store,
    rays_path,
    read_rays,
    read_voxels,
    store_checksum,
)
from partitioning import assign as assign_module
from partitioning import camera_rays, mapplot, numpy_kernels, run_partition, shuffle, tasks
from partitioning.assign import (
    GROUP,
    BlockBoxes,
    PairBuffers,
    _assign,
    _may_cross,
    _safe,
    assign,
    nearest_footprint,
    slab,
    tile_order,
)
from partitioning.buffers import Pool
from partitioning.layout import XStrips, grid_cells, kd_cells, make_blocks, order_cells
from partitioning.tasks import FAULT_DIR, FAULT_ENV
from partitioning.voxels import Lattice, VisibilityGrid, visibility_grid

OVERRIDES = ["partition.images_per_task=3", "partition.chunk_rays=2048"]


def config(*overrides: str, engine: str = "inline") -> Config:
    return load_config(None, [*OVERRIDES, f"partition.engine={engine}", *overrides])


def copy_city(city: Path, dest: Path) -> str:
    """A private copy of the city workspace (the scene store points at the shared images)."""
    shutil.copytree(city / "scene.zarr", dest / "scene.zarr")
    return str(dest)


def block_stores(ws: str) -> dict[str, dict]:
    """Per block: the block.json record, and a checksum recomputed from the ray store's rays, segment by segment."""
    summary = json.loads((Path(ws) / "partition.json").read_text())
    out = {}
    for block_id in summary["rays_per_block"]:
        store = open_ray_store(rays_path(ws, block_id))
        digests, start = [], 0
        for _, n in store.segments:
            digest = RayChecksum()
            digest.update(read_rays(store.path, start, start + n))
            digests.append(digest.hexdigest())
            start += n
        record = json.loads(Path(block_json_path(ws, block_id)).read_text())
        recomputed = store_checksum(digests)
        out[block_id] = {"count": record["ray_count"], "checksum": record["checksum"], "recomputed": recomputed}
    return out


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_city(tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="module")
def inline_run(city: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    ws = copy_city(city, tmp_path_factory.mktemp("inline"))
    return ws, run_partition(ws, config())


@pytest.fixture(scope="module")
def ray_address() -> str:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# layout


@pytest.mark.parametrize("layout", ["grid", "kd"])
def test_inner_boxes_tile_the_roi_and_outer_boxes_grow_them(layout: str) -> None:
    xyz = surface_points()
    xyz = xyz[np.all((xyz >= ROI[0]) & (xyz <= ROI[1]), axis=1)]
    cells = grid_cells(ROI[:, :2], 2, 2) if layout == "grid" else kd_cells(ROI[:, :2], xyz[:, :2], 5)
    blocks = make_blocks(order_cells(cells), XStrips(xyz), 0.15, 0.1, 0.1)
    inner = np.stack([b.inner[:, :2] for b in blocks])  # (B, 2, 2)
    area = np.prod(inner[:, 1] - inner[:, 0], axis=1)
    assert area.sum() == pytest.approx(np.prod(ROI[1, :2] - ROI[0, :2]), rel=1e-12)
    assert np.all(inner[:, 0] >= ROI[0, :2]) and np.all(inner[:, 1] <= ROI[1, :2])
    for i in range(len(blocks)):
        for j in range(i + 1, len(blocks)):
            overlap = np.minimum(inner[i, 1], inner[j, 1]) - np.maximum(inner[i, 0], inner[j, 0])
            assert np.any(overlap <= 0), f"{blocks[i].id} and {blocks[j].id} overlap"
    for block in blocks:
        size = block.inner[1] - block.inner[0]
        np.testing.assert_allclose(block.outer[1] - block.outer[0], 1.15 * size)
        np.testing.assert_allclose(block.outer.mean(axis=0), block.inner.mean(axis=0))
        over = np.all((xyz[:, :2] >= block.outer[0, :2]) & (xyz[:, :2] <= block.outer[1, :2]), axis=1)
        assert np.all(xyz[over, 2] > block.inner[0, 2]) and np.all(xyz[over, 2] < block.inner[1, 2])
    if layout == "kd":
        counts = np.array([b.points for b in blocks])
        assert len(blocks) == 5 and counts.max() < 1.35 * counts.min(), counts


# assignment


def city_layout(rows: int = 3, cols: int = 3) -> tuple[BlockBoxes, VisibilityGrid]:
    xyz = surface_points()
    xyz = xyz[np.all((xyz >= ROI[0]) & (xyz <= ROI[1]), axis=1)]
    blocks = make_blocks(order_cells(grid_cells(ROI[:, :2], rows, cols)), XStrips(xyz), 0.15, 0.1, 0.1)
    outer = np.stack([b.outer for b in blocks])
    boxes = BlockBoxes(
        outer.astype(np.float32),
        np.stack([b.inner[:, :2] for b in blocks]).astype(np.float32),
        np.array([b.ground for b in blocks], dtype=np.float32),
    )
    return boxes, visibility_grid(XStrips(xyz), outer, Lattice(ROI[0], 0.05), 1 << 20)


def test_vectorised_assignment_matches_a_per_block_reference() -> None:
    boxes, grid = city_layout()
    rng = np.random.default_rng(1)
    origins = np.repeat(rng.uniform([-2.5, -2.5, 0.3], [2.5, 2.5, 1.5], (12, 3)), 512, axis=0)  # 12 cameras
    dirs = rng.normal(size=(len(origins), 3)) + [0.0, 0.0, -0.8]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    o, d = origins.astype(np.float32), dirs.astype(np.float32)
    found = assign(o, d, boxes, grid, 0.1)

    t0, t1 = slab(o, d, boxes.outer[:, 0], boxes.outer[:, 1])  # (N, B), every block
    crosses = (t1 > t0) & ~((t0 > 0) & (o[:, 2, None] + t0 * d[:, 2, None] < boxes.ground))
    first = np.where(crosses, t0, np.inf).min(axis=1)
    expected = {}
    for b in range(len(boxes)):
        rays = np.flatnonzero(crosses[:, b])
        hit = grid.first_hit(o[rays], d[rays], first[rays], t0[rays, b] - 0.1)
        for r in rays[(t0[rays, b] <= hit + 0.1) | (t0[rays, b] == first[rays])]:
            expected[(int(r), b)] = (t0[r, b], t1[r, b])
    fg = ~found.background
    got = dict(zip(zip(found.ray[fg].tolist(), found.block[fg].tolist(), strict=True), found.near_far[fg], strict=True))
    assert got.keys() == expected.keys() and len(expected) > 500
    np.testing.assert_allclose(np.array([got[k] for k in expected]), np.array(list(expected.values())), rtol=1e-6)
    sky = found.ray[found.background]
    assert set(sky.tolist()) == set(np.flatnonzero(~crosses.any(axis=1)).tolist())


def test_group_test_keeps_every_box_a_ray_of_its_group_crosses() -> None:
    """The slab test on a group's intervals may keep boxes no ray crosses, never drop one that a ray does: tiles of
    nadir cameras (directions that change sign mid-image, and exact zeros at the principal point) and of oblique
    ones. It prunes most boxes, and the numpy fallback keeps the same ones."""
    boxes, _ = city_layout(4, 4)
    camera = Camera.pinhole(40.0, 40.0, 31.5, 23.5, 64, 48)  # pixel (31, 23)'s centre is the principal point
    pixels = camera.pixel_grid().numpy()[tile_order(64, 48)]
    rays = [camera_rays.image_rays(camera, c2w, pixels) for c2w in [*nadir_poses(4), *ring_poses(4)]]
    for c2w in ring_poses(3):  # two cameras a little apart, their rays interleaved: groups of several origins
        moved = c2w.copy()
        moved[:3, 3] += [0.05, -0.03, 0.02]
        pair = [camera_rays.image_rays(camera, pose, pixels[: len(pixels) // 2]) for pose in (c2w, moved)]
        rays.append(tuple(np.stack([pair[0][k], pair[1][k]], axis=1).reshape(-1, 3) for k in range(2)))
    o, d = np.concatenate([r[0] for r in rays]), np.concatenate([r[1] for r in rays])
    assert np.any(d[:, :2] == 0.0)
    t0, t1 = slab(o, d, boxes.outer[:, 0], boxes.outer[:, 1])
    crossed = (t1 > t0).reshape(-1, GROUP, len(boxes)).any(axis=1)  # (groups, B): a ray of the group crosses
    inv = np.float32(1.0) / _safe(d)  # as the kernels invert directions
    grouped_o, grouped_inv = o.reshape(-1, GROUP, 3), inv.reshape(-1, GROUP, 3)
    kept = np.array(
        [
            [
                _may_cross(box, np.stack([go.min(axis=0), go.max(axis=0)]), np.stack([gi.min(axis=0), gi.max(axis=0)]))
                for box in boxes.outer
            ]
            for go, gi in zip(grouped_o, grouped_inv, strict=True)
        ]
    )
    assert crossed.sum() > 50 and np.all(kept[crossed])
    assert kept.mean() < 0.5, kept.mean()
    np.testing.assert_array_equal(numpy_kernels._may_cross(grouped_o, grouped_inv, boxes.outer), kept)


@pytest.mark.parametrize("rows", [3, 12], ids=["3x3", "12x12"])
def test_numpy_fallback_gives_the_compiled_results_exactly(rows: int) -> None:
    """Machines without numba run partitioning.numpy_kernels: the same pairs, segments and hits, bit for bit. 12 x 12
    blocks are 18 clusters of CLUSTER ids, which the compiled kernels test before their blocks: the image tiles of
    cameras around the city (over no footprint: their sky rays search for one) and above it are groups that only
    some clusters reach."""
    boxes, grid = city_layout(rows, rows)
    rng = np.random.default_rng(4)
    origins = np.repeat(rng.uniform([-2.5, -2.5, 0.3], [2.5, 2.5, 1.5], (10, 3)), 768, axis=0)  # 10 cameras
    dirs = rng.normal(size=(len(origins), 3)) + [0.0, 0.0, -0.5]  # many rays miss every box (sky)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    camera = Camera.pinhole(40.0, 40.0, 32.0, 24.0, 64, 48)
    pixels = camera.pixel_grid().numpy()[tile_order(64, 48)]
    tiles = [camera_rays.image_rays(camera, c2w, pixels) for c2w in [*ring_poses(3), *nadir_poses(2)]]
    o = np.concatenate([origins.astype(np.float32), *[t[0] for t in tiles]])
    d = np.concatenate([dirs.astype(np.float32), *[t[1] for t in tiles]])
    o[5, 0] = np.nan  # an invalid ray
    grid_args = (grid.distance, grid.origin, np.float32(grid.cell))
    args = (o, d, boxes.outer, boxes.inner_xy, boxes.ground, *grid_args, np.float32(0.1))
    for keep_sky in (True, False):
        pairs = PairBuffers.for_rays(100)  # too few: the kernel makes room
        compiled = _assign(*args, keep_sky, pairs.ray, pairs.block, pairs.near_far, pairs.background)
        fallback = numpy_kernels.assign_arrays(*args, keep_sky, group=GROUP)
        assert compiled[4] == fallback[4] == 1 and compiled[5] == fallback[5]
        assert len(compiled[0]) > len(o) and compiled[3].sum() > 500 if keep_sky else compiled[5] > 500
        for got, expected in zip(fallback[:4], compiled[:4], strict=True):
            np.testing.assert_array_equal(got, expected)
    o[5, 0] = 0.0
    start, stop = np.zeros(len(o), np.float32), np.full(len(o), 4.0, np.float32)
    hits = grid.first_hit(o, d, start, stop)
    assert np.isfinite(hits).sum() > 500
    np.testing.assert_array_equal(numpy_kernels.march_rays(o, d, start, stop, *grid_args), hits)
    for got, expected in zip(
        numpy_kernels.nearest_footprint(o, d, boxes.inner_xy), nearest_footprint(o, d, boxes.inner_xy), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "torch"])
def test_image_rays_are_generate_rays_bit_for_bit(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled pinhole loop and the sliced torch path both give `generate_rays`' rays exactly, distorted
    cameras included (which always take the torch path)."""
    monkeypatch.setattr(camera_rays, "COMPILED", compiled)
    monkeypatch.setattr(camera_rays, "RAY_SLICE", 1000)  # several slices
    rng = np.random.default_rng(6)
    c2w = np.eye(4)
    c2w[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    c2w[:3, 3] = rng.normal(size=3)
    pinhole = Camera.pinhole(90.0, 80.0, 31.5, 24.0, 64, 48)
    for camera in (pinhole, Camera("OPENCV", 64, 48, (90.0, 80.0, 31.5, 24.0, -0.1, 0.02, 0.001, -0.002))):
        pixels = camera.pixel_grid().numpy()[rng.permutation(64 * 48)].astype(np.uint16)
        origins, dirs = camera_rays.image_rays(camera, c2w, pixels)
        expected = generate_rays(camera, torch.tensor(c2w), torch.from_numpy(pixels.astype(np.int64)))
        assert origins.dtype == dirs.dtype == np.float32 and dirs.shape == (64 * 48, 3)
        np.testing.assert_array_equal(origins, expected[0].numpy())
        np.testing.assert_array_equal(dirs, expected[1].numpy())
        assert np.allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)


def test_first_hit_never_lies_behind_the_surface() -> None:
    _, grid = city_layout()
    rng = np.random.default_rng(2)
    o = np.tile(np.float32([0.3, -1.6, 1.2]), (400, 1))
    d = rng.uniform([-0.8, 0.5, -0.9], [0.8, 1.0, -0.2], (400, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    hit = grid.first_hit(o, d, np.zeros(400, np.float32), np.full(400, 5.0, np.float32))
    depth = ray_depth(o, d)
    on_roi = np.isfinite(depth) & np.all(np.abs(o[:, :2] + depth[:, None] * d[:, :2]) < 0.95, axis=1)
    assert on_roi.mean() > 0.5
    assert np.all(hit[on_roi] <= depth[on_roi])  # a lower bound on the surface the points sample
    # and exact: just past the hit the ray is in an occupied cell, and a dense march meets none before it
    finite = np.isfinite(hit)
    assert finite.mean() > 0.5
    past = o[finite] + (hit[finite] + 3e-4 * grid.cell)[:, None] * d[finite]
    assert np.all(grid.occupied[tuple(np.floor((past - grid.origin) / grid.cell).astype(int).T)])
    ts = np.arange(0.0, 5.0, grid.cell / 20, dtype=np.float32)
    ijk = np.floor((o[:, None] + ts[None, :, None] * d[:, None] - grid.origin) / grid.cell).astype(int)  # (N, S, 3)
    inside = np.all((ijk >= 0) & (ijk < grid.occupied.shape), axis=-1)
    occupied = inside & grid.occupied[tuple(np.clip(ijk, 0, np.array(grid.occupied.shape) - 1).transpose(2, 0, 1))]
    first = np.where(occupied.any(axis=1), ts[occupied.argmax(axis=1)], np.inf)
    assert np.all(first >= hit - 1e-3 * grid.cell)


# stores


def test_every_training_pixel_is_assigned_or_counted(inline_run: tuple[str, dict]) -> None:
    ws, summary = inline_run
    scene = read_scene(ws)
    train = set(scene.split_indices("train").tolist())
    assert summary["blocks"] == 4 and summary["pixels"] == len(train) * WIDTH * HEIGHT
    seen = set()
    for block_id in summary["rays_per_block"]:
        rays = read_rays(rays_path(ws, block_id))
        assert set(np.unique(rays.image_id).tolist()) <= train  # test views are held out
        keys = (rays.image_id.astype(np.int64) * HEIGHT + rays.pixel[:, 1]) * WIDTH + rays.pixel[:, 0]
        assert len(np.unique(keys)) == len(keys), f"{block_id} holds a pixel twice"
        seen.update(keys.tolist())
    assert len(seen) == summary["assigned_pixels"]
    assert summary["assigned_pixels"] + sum(summary["dropped"].values()) == summary["pixels"]
    assert summary["rays"] == sum(summary["rays_per_block"].values()) > summary["assigned_pixels"]
    assert summary["background_rays"] > 0  # the ring cameras see sky


def test_segments_cross_their_outer_box_and_start_before_the_surface(inline_run: tuple[str, dict]) -> None:
    ws, summary = inline_run
    margin = config().partition.visibility_margin
    rng = np.random.default_rng(0)
    for block_id in summary["rays_per_block"]:
        record = json.loads(Path(block_json_path(ws, block_id)).read_text())
        outer = np.array(record["outer"])
        rays = read_rays(rays_path(ws, block_id))
        np.testing.assert_allclose(np.linalg.norm(rays.dirs, axis=1), 1.0, atol=1e-6)
        near, far = rays.near_far[:, 0], rays.near_far[:, 1]
        fg = far > near
        assert fg.sum() + record["background_rays"] == len(rays) and np.all(near >= 0)
        u = rng.uniform(0.0, 1.0, size=(len(rays), 8))
        t = near[:, None] + u * (far - near)[:, None]
        points = rays.origins[:, None] + t[..., None] * rays.dirs[:, None]  # (N, 8, 3)
        inside = np.all((points >= outer[0] - 1e-4) & (points <= outer[1] + 1e-4), axis=-1)
        assert inside[fg].all(), f"{block_id}: a segment leaves the outer box"
        depth = ray_depth(rays.origins[fg], rays.dirs[fg])
        late = near[fg] > depth + margin + 1e-4
        assert not late.any(), f"{block_id}: {late.sum()} segments start behind the surface"


def test_rgb_and_voxels_are_stored_one_file_per_batch_and_column(inline_run: tuple[str, dict]) -> None:
    ws, summary = inline_run
    scene = read_scene(ws)
    block_id = next(iter(summary["rays_per_block"]))
    rays = read_rays(rays_path(ws, block_id), 0, 200)
    for image_id, (x, y), rgb in zip(rays.image_id, rays.pixel, rays.rgb, strict=True):
        image = np.asarray(Image.open(Path(scene.image_root) / scene.images[image_id].name))
        np.testing.assert_array_equal(image[y, x], rgb)
    root = zarr.open_group(rays_path(ws, block_id), mode="r")
    assert set(root.array_keys()) == set(RAY_COLUMNS) and root["origins"].chunks == (2048, 3)
    for block_id in summary["rays_per_block"]:  # one file per column for each batch that gave the block rays
        store = Path(rays_path(ws, block_id))
        segments = zarr.open_group(str(store), mode="r").attrs["segments"]
        shard = zarr.open_group(str(store), mode="r")["origins"].shards[0]
        assert all(start % shard == 0 for start, _ in segments)
        for name in RAY_COLUMNS:
            files = sorted(f.name for f in (store / name).iterdir() if f.name != "zarr.json")
            expected = sorted(f"c.{start // shard}" + (".0" if name != "image_id" else "") for start, _ in segments)
            assert files == expected, f"{block_id}/{name}"
    xyz = surface_points()
    for block_id in summary["rays_per_block"]:
        record = json.loads(Path(block_json_path(ws, block_id)).read_text())
        voxels = read_voxels(str(Path(ws) / "blocks" / block_id / "voxels.zarr"))
        assert len(voxels.coords) == record["voxel_count"] > 0
        outer = np.array(record["outer"])
        inside = xyz[np.all((xyz >= outer[0]) & (xyz <= outer[1]), axis=1)]
        lattice = Lattice(voxels.origin, voxels.voxel_size)
        stored = {tuple(v) for v in voxels.coords.tolist()}
        assert all(tuple(v) in stored for v in lattice.index(inside).tolist())
        assert len(stored) > len({tuple(v) for v in lattice.index(inside).tolist()})  # dilated


def test_stored_chunks_mix_the_images_of_a_batch(inline_run: tuple[str, dict]) -> None:
    ws, summary = inline_run
    block_id = max(summary["rays_per_block"], key=summary["rays_per_block"].get)
    first_batch = zarr.open_group(rays_path(ws, block_id), mode="r").attrs["segments"][0][1]
    first_chunk = read_rays(rays_path(ws, block_id), 0, min(first_batch, 2048))
    assert len(np.unique(first_chunk.image_id)) == 3  # partition.images_per_task=3
    count = 10 * shuffle.SHUFFLE_RUN + 5  # ten whole runs and a short one
    order = shuffle.shuffle_order(count, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(count))
    assert np.array_equal(order, shuffle.shuffle_order(count, np.random.default_rng(0)))
    breaks = np.count_nonzero(np.diff(order) != 1)
    assert 1 <= breaks <= 10  # runs of consecutive rays moved as wholes, not left in place


def test_a_layout_gives_each_buffer_back_once_when_a_larger_one_cannot_be_had(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range that needs a larger buffer gives its turn's buffer back before taking one; if that fails (memory),
    the buffer is not given back a second time by `release`: two ranges of a later batch never share one."""

    def allocate(count: int) -> Rays:
        if count > 1000:
            raise MemoryError("as a test")
        return shuffle._allocate_rays(count)

    pool = Pool(allocate, len)
    monkeypatch.setattr(shuffle, "_LAYOUT_BUFFERS", pool)
    rng = np.random.default_rng(3)
    ray = np.arange(3000, dtype=np.int32)
    block = np.repeat(np.arange(3, dtype=np.int32), [500, 2450, 50])  # block 1 needs more than the pool gives
    image = shuffle.ImageRays(
        0,
        np.zeros(3, np.float32),
        rng.normal(size=(3000, 3)).astype(np.float32),
        np.zeros((3000, 3), np.uint8),
        np.zeros((3000, 2), np.uint16),
        ray,
        block,
        np.zeros((3000, 2), np.float32),
    )
    layout = shuffle.BatchLayout([image], 3, [[0, b] for b in range(3)])
    layout.lay_out(0, 1)
    layout.lay_out(2, 3)
    layout.lay_out(0, 1)  # turn 0 again: the same buffer
    pool.give([shuffle._allocate_rays(800)])  # another batch's, larger than turn 1's but too small for block 1
    with pytest.raises(MemoryError):
        layout.lay_out(1, 2)  # turn 1 gives its buffer back; the 800 makes way, and no larger one can be had
    layout.release()
    assert len(pool) == 2 and len({id(buffer) for buffer in pool._free}) == 2  # turns 0 and 1's, each once


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
def test_lay_out_copies_each_ray_to_its_shuffled_row(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One copy per (ray, block) pair gives what joining each block's rays and shuffling them in runs gives."""
    monkeypatch.setattr(shuffle, "COMPILED", compiled)
    rng = np.random.default_rng(5)
    images = []
    for image_id, n in ((7, 900), (8, 0), (9, 2000)):
        ray = np.sort(rng.integers(0, max(n, 1), 2 * n))[: int(1.6 * n)]  # pairs in ray order, some rays twice
        images.append(
            shuffle.ImageRays(
                image_id,
                rng.normal(size=3).astype(np.float32),
                rng.normal(size=(n, 3)).astype(np.float32),
                rng.integers(0, 256, (n, 3), dtype=np.uint8),
                rng.integers(0, 1000, (n, 2), dtype=np.uint16),
                ray,
                rng.choice(3, len(ray), p=[0.2, 0.5, 0.3]).astype(np.int32),  # uneven; block 3 of 4 gets nothing
                rng.random((len(ray), 2), dtype=np.float32),
            )
        )
    seeds = [[1, 2, b] for b in range(4)]
    layout = shuffle.BatchLayout(images, 4, seeds)
    assert layout.ranges(1 << 20) == [(0, 4)]
    assert layout.ranges(int(layout.counts[:2].sum())) == [(0, 2), (2, 4)]  # blocks 0 and 1 fill the budget
    assert layout.ranges(1) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # each block alone: the buffer grows for block 1
    laid = {}
    for lo, hi in layout.ranges(1):
        copies = [rays.take(np.arange(len(rays))) for rays in layout.lay_out(lo, hi)]  # views of a reused buffer
        laid.update(zip(range(lo, hi), copies, strict=True))
    assert len(laid[3]) == 0 and sum(len(r) for r in laid.values()) == sum(len(i.ray) for i in images)
    assert dict(zip(range(4), layout.lay_out(0, 4), strict=True)).keys() == laid.keys()
    for b, got in laid.items():
        parts = []
        for image in images:
            pairs = np.flatnonzero(image.block == b)
            r = image.ray[pairs]
            parts.append(
                Rays(
                    np.tile(image.origin, (len(r), 1)),
                    image.dirs[r],
                    image.rgb[r],
                    image.near_far[pairs],
                    np.full(len(r), image.image_id),
                    image.pixel[r],
                )
            )
        joined = Rays.concat(parts)
        expected = joined.take(shuffle.shuffle_order(len(joined), np.random.default_rng(seeds[b])))
        for name in RAY_COLUMNS:
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_partition_map_colours_each_point_by_the_block_under_it(tmp_path: Path) -> None:
    xyz = surface_points()
    xyz = xyz[np.all((xyz >= ROI[0]) & (xyz <= ROI[1]), axis=1)]
    blocks = make_blocks(order_cells(grid_cells(ROI[:, :2], 2, 3)), XStrips(xyz), 0.15, 0.1, 0.1)
    inside = [np.all((xyz[:, :2] >= b.inner[0, :2]) & (xyz[:, :2] <= b.inner[1, :2]), axis=1) for b in blocks]
    expected = np.full(len(xyz), -1)
    for b, mask in enumerate(inside):
        expected[mask] = b  # the last block holding a point on a shared edge
    owner = mapplot.point_blocks(xyz[:, :2], blocks)
    np.testing.assert_array_equal(owner, expected)
    assert (owner >= 0).all() and len(np.unique(owner)) == 6
    centres = np.array([[0.0, 0.0, 2.0], [0.5, 0.2, 2.0]])
    path = tmp_path / "map.png"
    mapplot.draw_partition_map(str(path), blocks, xyz, centres, np.array([[0, 0, -1.0]] * 2), np.array([True, False]))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    assert all(colour in colours for colour in mapplot._palette(len(blocks)))  # every block's points are drawn


def test_rerun_is_a_no_op_and_outputs_are_written(inline_run: tuple[str, dict]) -> None:
    ws, summary = inline_run
    store = Path(rays_path(ws, "b000"))
    before = store.stat().st_mtime_ns
    assert run_partition(ws, config()) == summary
    assert store.stat().st_mtime_ns == before
    assert not (Path(ws) / "partition_work").exists()
    assert (Path(ws) / "partition.config.yaml").is_file()
    timings = summary["timings"]
    assert set(timings) == {"plan", "batches", "finish"} and min(timings.values()) > 0
    assert sum(timings.values()) <= summary["seconds"]
    with Image.open(summary["map"]) as image:
        assert image.size[0] > 500
    with pytest.raises(WorkspaceError, match="--overwrite"):
        run_partition(ws, config("partition.overlap=0.3"))


def test_kd_layout_run_tiles_and_accounts(city: Path, tmp_path: Path) -> None:
    ws = copy_city(city, tmp_path / "kd")
    summary = run_partition(ws, config("partition.layout=kd", "partition.num_blocks=3"))
    assert summary["blocks"] == 3 and summary["layout"] == "kd 3"
    records = [json.loads(Path(block_json_path(ws, b)).read_text()) for b in summary["rays_per_block"]]
    area = sum(np.prod(np.diff(np.array(r["inner"])[:, :2], axis=0)) for r in records)
    assert area == pytest.approx(np.prod(ROI[1, :2] - ROI[0, :2]))
    assert summary["assigned_pixels"] + sum(summary["dropped"].values()) == summary["pixels"]
    assert all(r["ray_count"] > 0 and r["images"] for r in records)


# engines and recovery


def test_ray_engine_with_a_failing_task_matches_inline(
    inline_run: tuple[str, dict], city: Path, tmp_path: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = block_stores(inline_run[0])
    for fault, dest in (("", "clean"), ("1:raise", "raise"), ("2:exit", "exit")):
        monkeypatch.setenv(FAULT_ENV, fault)
        ws = copy_city(city, tmp_path / dest)
        run_partition(ws, config(engine="ray"))
        stores = block_stores(ws)
        assert stores == reference, f"fault {fault!r}"
        assert all(s["checksum"] == s["recomputed"] for s in stores.values())
        if fault:  # the fault fired, and the run still finished
            assert (Path(ws) / FAULT_DIR / f"{int(fault[0]):06d}").is_file()


def test_killed_driver_then_rerun_matches_undisturbed_run(
    inline_run: tuple[str, dict], city: Path, tmp_path: Path, ray_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    ws = copy_city(city, tmp_path / "killed")
    script = (
        "import sys; from bigscene.config import load_config; from partitioning import run_partition; "
        f"run_partition(sys.argv[1], load_config(None, {OVERRIDES + ['partition.engine=ray']!r}), address=sys.argv[2])"
    )
    env = {**os.environ, FAULT_ENV: "3:hang"}
    driver = subprocess.Popen([sys.executable, "-c", script, ws, ray_address], env=env)
    hang_flag = Path(ws) / FAULT_DIR / "000003"
    deadline = time.monotonic() + 60
    while not hang_flag.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hang_flag.exists(), "the driver never reached batch 3"
    time.sleep(1.0)  # let the other worker finish a batch or two
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (Path(ws) / "partition.json").exists()
    finished = len(list((Path(ws) / "partition_work" / "batches").glob("*.json")))
    assert 0 < finished < 5
    with caplog.at_level("INFO", logger="partitioning"):
        run_partition(ws, config(engine="ray"), address=ray_address)
    assert f"{finished} of 5 batches already written" in caplog.text
    assert block_stores(ws) == block_stores(inline_run[0])


def test_a_task_failing_while_its_rays_are_written_is_retried_in_process(
    inline_run: tuple[str, dict], city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 raises while its first chunks are still being written on the write threads; the inline engine
    retries it in the same process, and the stores equal an undisturbed run's."""
    ws = copy_city(city, tmp_path / "midway")
    monkeypatch.setenv(FAULT_ENV, "1:midway")
    run_partition(ws, config())
    assert (Path(ws) / FAULT_DIR / "000001").is_file()
    stores = block_stores(ws)
    assert stores == block_stores(inline_run[0])
    assert all(s["checksum"] == s["recomputed"] for s in stores.values())


def test_leftovers_of_a_killed_attempt_are_rewritten_or_never_read(
    inline_run: tuple[str, dict], city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = 512  # several chunks per slot; the rays, so the checksums, do not depend on the chunking
    slot = -(-3 * WIDTH * HEIGHT // chunk) * chunk  # a batch of 3 images owns this many rows of every store
    ws = copy_city(city, tmp_path / "leftovers")
    monkeypatch.setenv(FAULT_ENV, "1:raise")  # batch 1 writes its rays, then dies before its marker
    with pytest.raises(WorkspaceError, match="write_batch failed"):
        run_partition(ws, config(f"partition.chunk_rays={chunk}", "partition.max_retries=0"))
    done = [json.loads(p.read_text()) for p in sorted((Path(ws) / "partition_work" / "batches").glob("*.json"))]
    assert [m["batch"] for m in done] == [0] and done[0]["slot"] == 0
    rng = np.random.default_rng(0)
    written = 0
    for block_id in inline_run[1]["rays_per_block"]:
        written += (Path(rays_path(ws, block_id)) / "image_id" / "c.1").is_file()  # batch 1's shard
        root = zarr.open_group(rays_path(ws, block_id), mode="r+")
        garbage = [(done[0]["rays"].get(block_id, 0), slot), (slot, 2 * slot)]  # past batch 0's count; batch 1
        for name, (shape, dtype) in RAY_COLUMNS.items():
            for start, stop in garbage:
                root[name][start:stop] = rng.integers(1, 100, (stop - start, *shape)).astype(dtype)
    assert written > 0  # batch 1's attempt did write
    run_partition(ws, config(f"partition.chunk_rays={chunk}"))
    assert block_stores(ws) == block_stores(inline_run[0])
    for block_id in inline_run[1]["rays_per_block"]:
        store = open_ray_store(rays_path(ws, block_id))
        assert store.chunk == chunk and store.segments
        for start, n in store.segments:
            assert start % chunk == 0 and start % slot == 0 and 0 < n <= slot  # from a batch's slot start


def test_a_run_left_by_an_older_schema_is_planned_again(
    inline_run: tuple[str, dict],
    city: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unfinished run whose plan an older bigscene wrote (stores of another layout) is not resumed: the re-run
    plans afresh and gives an undisturbed run's stores."""
    ws = copy_city(city, tmp_path / "older")
    monkeypatch.setenv(FAULT_ENV, "1:raise")
    with pytest.raises(WorkspaceError, match="write_batch failed"):
        run_partition(ws, config("partition.max_retries=0"))
    monkeypatch.delenv(FAULT_ENV)
    plan = Path(ws) / "partition_work" / "plan.json"
    saved = json.loads(plan.read_text())
    plan.write_text(json.dumps({**saved, "schema_version": saved["schema_version"] - 1}))
    with caplog.at_level("INFO", logger="partitioning"):
        run_partition(ws, config())
    assert "resuming" not in caplog.text and "already written" not in caplog.text
    assert block_stores(ws) == block_stores(inline_run[0])


# bad input


def test_buffer_pool_gives_the_smallest_fitting_buffer_and_holds_no_more_than_were_in_use() -> None:
    allocated = []

    def allocate(size: int) -> np.ndarray:
        allocated.append(size)
        return np.empty(size)

    pool = Pool(allocate, len)
    first = [pool.take(n) for n in (10, 30, 20)]
    pool.give(first)
    assert len(pool.take(15)) == 20 and len(pool.take(5)) == 10  # the smallest that holds the request
    assert pool.take(30) is first[1] and allocated == [10, 30, 20]
    pool.give(first)
    bigger = pool.take(40)  # none holds 40: the largest free buffer makes way for a new one
    assert len(bigger) == 40 and allocated[-1] == 40 and len(pool) == 2
    pool.give([bigger])
    assert len(pool) == 3  # as many as were in use at once


def test_batches_reuse_their_buffers_and_pair_buffers_grow_once(
    city: Path, inline_run: tuple[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's batches read their images into the same buffers and lay their rays out in the same buffers (a
    range at a time, larger ones as ranges need them); pair buffers too small for an image (the kernel then
    allocated its own) are enlarged once, for the next batch; the run drops them all when its batches are over. The
    stores are those of a run without reuse."""
    allocated: list[int] = []

    def allocate_small_pairs(n: int) -> tasks._ImageBuffers:  # room for few pairs: every first image outgrows it
        allocated.append(n)
        buffers = tasks._ImageBuffers.for_pixels(n)
        return dataclasses.replace(buffers, pairs=PairBuffers.for_pairs(16))

    images, layouts = Pool(allocate_small_pairs, lambda b: len(b.rgb)), Pool(shuffle._allocate_rays, len)
    monkeypatch.setattr(tasks, "_IMAGE_BUFFERS", images)
    monkeypatch.setattr(shuffle, "_LAYOUT_BUFFERS", layouts)
    monkeypatch.setattr(tasks, "LAYOUT_RAYS", 1000)  # ranges of one or a few blocks, of different sizes
    read, lay_out = tasks._read_image, shuffle.BatchLayout.lay_out
    pairs, grown, laid = [], [], []

    def read_image(job, plan, order, pixel, buffers):  # noqa: ANN001, ANN202 (tasks._read_image's)
        image, found = read(job, plan, order, pixel, buffers)
        pairs.append(len(found.ray))
        grown.append(not np.shares_memory(found.ray, buffers.pairs.ray))  # the kernel allocated the pairs
        return image, found

    def record_lay_out(layout: shuffle.BatchLayout, lo: int, hi: int) -> list[Rays]:
        out = lay_out(layout, lo, hi)
        laid.append((hi - lo, len(layouts)))
        return out

    monkeypatch.setattr(tasks, "_read_image", read_image)
    monkeypatch.setattr(shuffle.BatchLayout, "lay_out", record_lay_out)
    ws = copy_city(city, tmp_path / "ws")
    summary = run_partition(ws, config())
    per_task = 3  # OVERRIDES' images_per_task
    assert len(pairs) == 15 and len(allocated) == per_task  # later batches reused the first one's buffers
    assert sum(grown) <= per_task + 1 < len(grown)  # each batch's buffers then hold as many pairs per pixel
    assert len(laid) > 2 * 5 and len(layouts) == len(images) == 0  # several ranges a batch; dropped at the end
    assert summary["checksum"] == inline_run[1]["checksum"] and summary["rays"] == inline_run[1]["rays"]


def test_image_buffers_make_room_for_their_own_pixels_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a batch, each image buffer holds pairs for its own pixels at the batch's most pairs per pixel: a small
    image's buffer does not grow to a large image's pairs."""
    pool = Pool(tasks._ImageBuffers.for_pixels, lambda b: len(b.rgb))
    monkeypatch.setattr(tasks, "_IMAGE_BUFFERS", pool)
    with tasks._image_buffers(num_blocks=1) as taken:  # room for a group's pairs: GROUP = 256 per block
        taken += [pool.take(10_000), pool.take(100)]
        taken[0].pairs_per_pixel, taken[1].pairs_per_pixel = 1.5, 3.0  # the small image crossed more blocks
    large, small = sorted(pool._free, key=lambda b: len(b.rgb), reverse=True)
    assert len(large.pairs.ray) >= 3.0 * 10_000 + 256 and len(small.pairs.ray) >= 3.0 * 100 + 256
    assert len(small.pairs.ray) < 2 * (3.0 * 100 + 256)


def test_a_bad_image_fails_its_task_once_the_other_readers_stop(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images are read on threads: when one is bad, the task fails with its error only after every image being read
    has stopped (a retry may start at once) and the images not begun are not read."""
    ws = copy_city(city, tmp_path / "ws")
    read = tasks._read_image
    started, finished = [], []

    def slow_read(job, plan, *args):  # noqa: ANN001, ANN202 (tasks._read_image's)
        started.append(job.index)
        if len(started) == 1:
            raise InputError(job.path, "unreadable, as a test")
        time.sleep(0.3)
        finished.append(job.index)
        return read(job, plan, *args)

    monkeypatch.setattr(tasks, "_read_image", slow_read)
    with pytest.raises(InputError, match="unreadable, as a test"):
        run_partition(ws, config("partition.images_per_task=6"))
    assert len(started) > 1 and sorted(finished) == sorted(started[1:])  # the readers begun had all finished
    assert len(started) < 6  # images queued behind them were cancelled
    pairs = PairBuffers.for_rays(10)
    with pytest.raises(ValueError, match="PairBuffers.block"):
        PairBuffers(pairs.ray, pairs.background, pairs.near_far, pairs.background)  # the kernel writes unchecked
    monkeypatch.setattr(assign_module, "MAX_RAYS", 8)  # pairs index rays in int32
    with pytest.raises(ValueError, match="one image at a time"):
        boxes, grid = city_layout()
        assign(np.zeros((16, 3), np.float32), np.ones((16, 3), np.float32), boxes, grid, 0.1)
    with pytest.raises(ValueError, match="out arrays"):
        float64 = (np.zeros((16, 3)), np.zeros((16, 3)))
        camera_rays.image_rays(Camera.pinhole(4.0, 4.0, 2.0, 2.0, 4, 4), np.eye(4), np.zeros((16, 2)), float64)


def test_missing_and_corrupt_images(city: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(city / "images", images)
    ws = copy_city(city, tmp_path / "ws")
    scene_root = zarr.open_group(scene_path(ws), mode="r+")
    scene_root.attrs["image_root"] = str(images)
    (images / "view_001.png").unlink()
    with pytest.raises(InputError, match="view_001.png"):
        run_partition(ws, config())
    (images / "view_002.png").write_bytes(b"not a png")
    summary = run_partition(ws, config("partition.skip_bad_images=true"))
    assert sorted(Path(p).name for p in summary["skipped_images"]) == ["view_001.png", "view_002.png"]
    assert summary["dropped"]["bad_image"] == 2 * WIDTH * HEIGHT
    assert summary["assigned_pixels"] + sum(summary["dropped"].values()) == summary["pixels"]
    scene = read_scene(ws)
    first_batch = [scene.images[i].name for i in scene.split_indices("train")[:3]]  # OVERRIDES: 3 images a task
    for name in first_batch:  # a batch without a readable image writes no rays
        (images / name).write_bytes(b"not a png")
    summary = run_partition(ws, config("partition.skip_bad_images=true", "partition.seed=1"), overwrite=True)
    assert {Path(p).name for p in summary["skipped_images"]} == {*first_batch, "view_001.png", "view_002.png"}
    assert summary["assigned_pixels"] + sum(summary["dropped"].values()) == summary["pixels"]


def test_corrupt_image_error_crosses_ray(city: Path, tmp_path: Path, ray_address: str) -> None:
    images = tmp_path / "images"
    shutil.copytree(city / "images", images)
    ws = copy_city(city, tmp_path / "ws")
    zarr.open_group(scene_path(ws), mode="r+").attrs["image_root"] = str(images)
    (images / "view_004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="view_004.png"):
        run_partition(ws, config(engine="ray"))


def test_block_without_rays_fails_or_merges(tmp_path: Path) -> None:
    roi = np.array([[-1.0, -1.0, -0.1], [5.0, 1.0, 0.7]])  # cameras only look at x < 2
    ws = str(make_city(tmp_path / "ws", nadir_poses(9), roi=roi, test_every=0))
    with pytest.raises(ConfigError, match="merge_empty"):
        run_partition(ws, config("partition.rows=1", "partition.cols=3"))
    summary = run_partition(ws, config("partition.rows=1", "partition.cols=3", "partition.merge_empty=true"))
    assert summary["blocks"] == 2 and summary["merged_blocks"] == 1
    assert all(n > 0 for n in summary["rays_per_block"].values())


def test_no_points_in_roi_and_incomplete_scene(city: Path, tmp_path: Path) -> None:
    ws = copy_city(city, tmp_path / "ws")
    root = zarr.open_group(scene_path(ws), mode="r+")
    root.attrs["roi"] = [[10.0, 10.0, 10.0], [11.0, 11.0, 11.0]]
    with pytest.raises(InputError, match="no SfM points"):
        run_partition(ws, config())
    root.attrs["complete"] = False
    with pytest.raises(WorkspaceError, match="incomplete"):
        run_partition(ws, config())
    with pytest.raises(WorkspaceError, match="bigscene ingest"):
        run_partition(str(tmp_path / "empty"), config())
    with pytest.raises(ConfigError, match="engine=ray"):
        run_partition(copy_city(city, tmp_path / "ws2"), config(), address="127.0.0.1:6379")


_FAULTS = """
import resource, sys
import numpy as np
from partitioning.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def image():  # arrays of 1 to 14 MB alive together, then freed, as a task's per-image arrays
    arrays = [np.ones(mb << 17) for mb in (10, 14, 6, 12, 9, 3, 11)]
    return sum(a[0] for a in arrays)
image()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    image()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_tasks_keep_freed_memory_instead_of_faulting_it_in_again() -> None:
    """A task's per-image arrays (tens of MB, below glibc's 32 MB mmap cap) reuse freed heap memory: far fewer
    page faults than glibc's default, which unmaps them and faults every page in again."""
    runs = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True, text=True)
        kept, faults = out.stdout.split()
        runs[mode] = (kept == "True", int(faults))
    assert runs["keep"][0] and not runs["default"][0]
    assert runs["default"][1] > 20 * 1000  # glibc hands the arrays back and faults them in again
    assert runs["keep"][1] < runs["default"][1] / 20

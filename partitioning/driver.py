"""The partition driver: layout, voxels and empty block stores, then every batch of training images through
an engine, each writing its rays into its own slot of every block's store, then each store finalised.

A fresh plan creates every block's ray store, sized for one slot per batch, before `partition_work/plan.json`
is written; a resume keeps them. A batch with a marker is done and is not redone. Finalising a block is
metadata only: its segments (the batches' slots and ray counts, from the markers) and checksum, then
complete; a complete store is not finalised again. The driver never holds rays; memory is bounded by a
batch (images per task), never by the number of images or rays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bigscene.config import PartitionConfig
from bigscene.engine import Engine, make_engine
from bigscene.errors import ConfigError, InputError
from bigscene.scene.model import Scene
from bigscene.store.blocks import (
    BLOCKS_DIR,
    CHECKSUM_SCHEME,
    SCHEMA_VERSION,
    batch_marker_path,
    block_json_path,
    create_ray_stores,
    finish_ray_stores,
    plan_path,
    ray_store_info,
    rays_path,
    remove_tree,
    slot_rows,
    voxels_path,
    work_path,
    write_voxel_stores,
)
from bigscene.store.scene_store import scene_path
from bigscene.store.workspace import join, read_json, write_json_atomic
from partitioning.assign import BlockBoxes
from partitioning.layout import Block, XStrips, grid_cells, kd_cells, make_blocks, merge_cell, order_cells
from partitioning.mapplot import draw_partition_map
from partitioning.tasks import FAULT_ENV, BatchJob, ImageJob, Plan, probe_batch, release_buffers, write_batch
from partitioning.voxels import Lattice, surface_voxels, visibility_grid

log = logging.getLogger(__name__)

T = TypeVar("T")
MAP_NAME = "partition.png"
#: Largest image side the uint16 pixel column holds.
_MAX_SIDE = 65535


def roi_points(scene: Scene, min_track_length: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The ROI (2, 3) (the scene's, else the points' bounds) and the SfM points (P, 3) inside it with a
    track of at least `min_track_length`. InputError when no such point exists."""
    pts = scene.points
    keep = (pts.track_length >= min_track_length) & np.all(np.isfinite(pts.xyz), axis=1)
    xyz = np.asarray(pts.xyz, dtype=np.float64)[keep]
    if scene.roi is not None:
        roi = np.asarray(scene.roi, dtype=np.float64)
        xyz = xyz[np.all((xyz >= roi[0]) & (xyz <= roi[1]), axis=1)]
    elif len(xyz):
        roi = np.stack([xyz.min(axis=0), xyz.max(axis=0)])
    if not len(xyz):
        raise InputError(
            source,
            f"no SfM points with track length >= {min_track_length} inside the ROI, so there is nothing to "
            "lay blocks out on; lower partition.min_track_length or re-ingest with a larger scene.roi_margin",
        )
    return roi, xyz


def make_batches(scene: Scene, images_per_task: int, chunk_rays: int, source: str) -> tuple[list[BatchJob], int]:
    """Training images in scene order, `images_per_task` to a batch, each with its slot in the block stores;
    and the rows of a slot (a shard of every store)."""
    train = scene.split_indices("train")
    if not len(train):
        raise InputError(source, "no training images (every image is in the test or val split)")
    jobs = []
    for index in train:
        camera = scene.camera_of(int(index))
        if max(camera.width, camera.height) > _MAX_SIDE:
            raise InputError(scene.images[index].name, f"images wider or taller than {_MAX_SIDE} px are not supported")
        path = str(Path(scene.image_root) / scene.images[index].name)
        jobs.append(ImageJob(int(index), path, camera, scene.c2w[index]))
    groups = [tuple(jobs[start : start + images_per_task]) for start in range(0, len(jobs), images_per_task)]
    rows = slot_rows([sum(job.camera.width * job.camera.height for job in group) for group in groups], chunk_rays)
    return [BatchJob(b, group, b * rows) for b, group in enumerate(groups)], rows


def _track(results: Iterator[T], total: int, description: str) -> Iterator[T]:
    """Pass results through while a progress bar counts them."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=total)
        for item in results:
            progress.advance(task)
            yield item


class Driver:
    """One partition run of `scene` in `workspace` under `config`."""

    def __init__(self, workspace: str, scene: Scene, config: PartitionConfig, fingerprint: dict[str, Any]) -> None:
        self.workspace = workspace
        self.scene = scene
        self.config = config
        self.fingerprint = fingerprint
        source = scene_path(workspace)
        self.roi, self.xyz = roi_points(scene, config.min_track_length, source)
        self.strips = XStrips(self.xyz)  # sorted once for the layout, the visibility grid and the surface voxels
        self.batches, self.slot_rows = make_batches(scene, config.images_per_task, config.chunk_rays, source)
        self.lattice = Lattice(self.roi[0].copy(), config.voxel_size)

    def plan(self, blocks: list[Block]) -> Plan:
        outer = np.stack([b.outer for b in blocks])  # (B, 2, 3)
        cfg = self.config
        return Plan(
            workspace=self.workspace,
            block_ids=tuple(b.id for b in blocks),
            boxes=BlockBoxes(
                outer.astype(np.float32),
                np.stack([b.inner[:, :2] for b in blocks]).astype(np.float32),
                np.array([b.ground for b in blocks], dtype=np.float32),
            ),
            grid=visibility_grid(self.strips, outer, self.lattice, cfg.visibility_max_cells),
            visibility_margin=cfg.visibility_margin,
            sky=cfg.sky,
            background=self.scene.background,
            skip_bad_images=cfg.skip_bad_images,
            probe_stride=cfg.probe_stride,
            seed=cfg.seed,
            fault=os.environ.get(FAULT_ENV, ""),
        )

    def run(self, address: str | None) -> dict[str, Any]:
        """Plan (or resume), write every batch, finalise; returns the summary, with the seconds of each phase."""
        started = time.perf_counter()
        engine = make_engine("partition", self.config.engine, address, self.config.num_cpus, self.config.max_retries)
        with ThreadPoolExecutor(1, "partition-map") as mapper:
            with closing(engine):
                saved = read_json(plan_path(self.workspace))
                if (
                    saved is not None
                    and saved.get("fingerprint") == self.fingerprint
                    and saved.get("checksum_scheme") == CHECKSUM_SCHEME
                    and saved.get("schema_version") == SCHEMA_VERSION
                ):
                    log.info("resuming the partition run in %s", work_path(self.workspace))
                    blocks = [Block.from_json(doc) for doc in saved["blocks"]]
                    drawn = mapper.submit(self._draw_map, blocks)  # meanwhile: it needs only the blocks
                    plan = self.plan(blocks)
                else:
                    remove_tree(join(self.workspace, BLOCKS_DIR))
                    remove_tree(work_path(self.workspace))
                    blocks, plan, merged = self._layout(engine)
                    drawn = mapper.submit(self._draw_map, blocks)
                    voxels = self._write_voxels(blocks)
                    paths = [rays_path(self.workspace, b.id) for b in blocks]
                    capacity = len(self.batches) * self.slot_rows
                    create_ray_stores(paths, capacity, self.config.chunk_rays, self.slot_rows)
                    saved = {
                        "fingerprint": self.fingerprint,
                        "checksum_scheme": CHECKSUM_SCHEME,
                        "schema_version": SCHEMA_VERSION,
                        "blocks": [b.to_json() for b in blocks],
                        "merged": merged,
                        "voxels": voxels,
                    }
                    write_json_atomic(plan_path(self.workspace), saved)
                planned = time.perf_counter()
                try:
                    markers = self._write_batches(engine, plan)
                finally:
                    release_buffers()  # what the inline engine's tasks kept in this process
                written = time.perf_counter()
            stores = self._finalise(plan, markers)
            summary = self._records(blocks, saved, markers, stores)
            drawn.result()
        phases = {"plan": planned - started, "batches": written - planned, "finish": time.perf_counter() - written}
        return {**summary, "timings": {name: round(seconds, 3) for name, seconds in phases.items()}}

    def _cells(self) -> list[np.ndarray]:
        cfg = self.config
        if cfg.layout == "grid":
            return order_cells(grid_cells(self.roi[:, :2], cfg.rows, cfg.cols))
        return order_cells(kd_cells(self.roi[:, :2], self.xyz[:, :2], cfg.num_blocks))

    def _layout(self, engine: Engine) -> tuple[list[Block], Plan, list[list[list[float]]]]:
        """Blocks whose every member receives rays (probed on a pixel lattice), merging empty ones when
        `merge_empty`; returns the blocks, their plan, and the footprints of the merged-away cells."""
        cfg = self.config
        cells = self._cells()
        merged: list[list[list[float]]] = []
        while True:
            blocks = make_blocks(cells, self.strips, cfg.overlap, cfg.height_margin, 2 * cfg.voxel_size)
            plan = self.plan(blocks)
            counts = np.zeros(len(blocks), dtype=np.int64)
            for _, found in _track(engine.map(probe_batch, self.batches, plan), len(self.batches), "probing"):
                counts += np.asarray(found)
            empty = np.flatnonzero(counts == 0)
            if not empty.size:
                return blocks, plan, merged
            if not cfg.merge_empty:
                ids = ", ".join(blocks[i].id for i in empty)
                raise ConfigError(
                    f"{len(empty)} of {len(blocks)} blocks receive no rays ({ids}): no training camera sees "
                    "them; use fewer blocks (partition.rows/cols or partition.num_blocks) or set "
                    "partition.merge_empty=true to merge each into a neighbour"
                )
            log.warning("block %s receives no rays; merging it into a neighbour", blocks[empty[0]].id)
            merged.append(cells[empty[0]].tolist())
            cells = order_cells(merge_cell(cells, int(empty[0]), counts))

    def _write_voxels(self, blocks: list[Block]) -> dict[str, int]:
        stores = []
        for block in blocks:
            under = self.strips.points[self.strips.span(block.outer[0, 0], block.outer[1, 0])]
            coords = surface_voxels(under, block.outer, self.lattice)  # (V, 3) int32
            stores.append((voxels_path(self.workspace, block.id), coords))
        min_track_length = self.config.min_track_length
        write_voxel_stores(stores, self.lattice.origin, self.config.voxel_size, 1, min_track_length)
        return {block.id: len(coords) for block, (_, coords) in zip(blocks, stores, strict=True)}

    def _write_batches(self, engine: Engine, plan: Plan) -> list[dict]:
        markers: dict[int, dict] = {}
        for batch in self.batches:
            marker = read_json(batch_marker_path(self.workspace, batch.index))
            if marker is not None:
                markers[batch.index] = marker
        pending = [b for b in self.batches if b.index not in markers]
        if markers:
            log.info("%d of %d batches already written; %d to go", len(markers), len(self.batches), len(pending))
        for i, marker in _track(engine.map(write_batch, pending, plan), len(pending), "partitioning"):
            markers[pending[i].index] = marker
        return [markers[b.index] for b in self.batches]

    def _finalise(self, plan: Plan, markers: list[dict]) -> dict[str, dict]:
        """Each block's `{count, checksum}`, marking its store complete (segments from the markers) if not yet."""
        stores = {block_id: ray_store_info(rays_path(self.workspace, block_id)) for block_id in plan.block_ids}
        unfinished = [block_id for block_id, info in stores.items() if info is None]
        records = []
        for block_id in unfinished:
            done = [m for m in markers if block_id in m["rays"]]
            segments = [(m["slot"], m["rays"][block_id]) for m in done]
            records.append((rays_path(self.workspace, block_id), segments, [m["checksums"][block_id] for m in done]))
        stores.update(zip(unfinished, finish_ray_stores(records), strict=True))
        return stores

    def _draw_map(self, blocks: list[Block]) -> None:
        """The partition map, drawn on a thread of its own while the run goes on."""
        scene = self.scene
        draw_partition_map(
            join(self.workspace, MAP_NAME),
            blocks,
            self.xyz,
            scene.camera_centres(),
            scene.c2w[:, :3, 2],
            np.array([im.split == "train" for im in scene.images]),
        )

    def _records(
        self, blocks: list[Block], saved: dict[str, Any], markers: list[dict], stores: dict[str, dict]
    ) -> dict[str, Any]:
        """Write each block.json; return the summary."""
        images: dict[str, set[int]] = {b.id: set() for b in blocks}
        background = dict.fromkeys(images, 0)
        dropped: dict[str, int] = {}
        for marker in markers:
            for block_id, ims in marker["block_images"].items():
                images[block_id].update(ims)
            for block_id, n in marker["background"].items():
                background[block_id] += n
            for reason, n in marker["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + n
        for block in blocks:
            write_json_atomic(
                block_json_path(self.workspace, block.id),
                {
                    **block.to_json(),
                    "images": sorted(images[block.id]),
                    "ray_count": stores[block.id]["count"],
                    "background_rays": background[block.id],
                    "checksum": stores[block.id]["checksum"],
                    "voxel_count": saved["voxels"][block.id],
                    "voxel_size": self.config.voxel_size,
                    "rays": "rays.zarr",
                    "voxels": "voxels.zarr",
                },
            )
        rays = {b.id: stores[b.id]["count"] for b in blocks}
        assigned = sum(m["assigned_pixels"] for m in markers)
        foreground = {b: rays[b] - background[b] for b in rays}
        empty = [b for b, n in foreground.items() if n == 0]
        if empty:
            log.warning("blocks without foreground rays (their images were skipped?): %s", ", ".join(empty))
        checksum = hashlib.sha256("".join(stores[b.id]["checksum"] for b in blocks).encode()).hexdigest()
        cfg = self.config
        return {
            "blocks": len(blocks),
            "layout": f"grid {cfg.rows}x{cfg.cols}" if cfg.layout == "grid" else f"kd {cfg.num_blocks}",
            "merged_blocks": len(saved["merged"]),
            "images": sum(len(b.images) for b in self.batches),
            "batches": len(self.batches),
            "pixels": sum(m["pixels"] for m in markers),
            "assigned_pixels": assigned,
            "rays": sum(rays.values()),
            "overlap_ratio": round(sum(rays.values()) / assigned, 4) if assigned else 0.0,
            "background_rays": sum(background.values()),
            "dropped": dropped,
            "skipped_images": [path for m in markers for path in m["skipped_images"]],
            "rays_per_block": rays,
            "images_per_block": {b: len(ims) for b, ims in images.items()},
            "empty_blocks": empty,
            "checksum": checksum,
            "map": join(self.workspace, MAP_NAME),
        }

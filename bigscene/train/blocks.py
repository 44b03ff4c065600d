"""A partitioned block as training sees it: its record, its stores, and where its training outputs go.

Per block, under WS/blocks/<id>/ (beside partitioning's block.json, rays.zarr, voxels.zarr):
    ckpt/last.ckpt, ckpt/best.ckpt   Lightning checkpoints (last: every train.ckpt_every steps; best: by PSNR)
    model.pt                         the exported Lightning-free model (bigscene.train.export), written last
    train_status.json                live state for the scheduler's table (state, step, loss, PSNR, pid, attempt)
    val/<view>.png                   the latest validation renders
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigscene.config import Config
from bigscene.errors import InputError, WorkspaceError
from bigscene.store.blocks import block_dir, block_json_path, ray_store_info, rays_path, voxels_path
from bigscene.store.workspace import join, read_json

PARTITION_SUMMARY = "partition.json"
STATUS_NAME = "train_status.json"


def last_checkpoint_path(workspace: str, block_id: str) -> str:
    return join(block_dir(workspace, block_id), "ckpt", "last.ckpt")


@dataclass(frozen=True)
class BlockSpec:
    """One block of a partitioned workspace. inner, outer: (2, 3) float64 min and max corners."""

    workspace: str
    id: str
    inner: np.ndarray
    outer: np.ndarray
    ray_count: int
    checksum: str
    images: tuple[int, ...]

    @property
    def dir(self) -> str:
        return block_dir(self.workspace, self.id)

    @property
    def rays(self) -> str:
        return rays_path(self.workspace, self.id)

    @property
    def voxels(self) -> str:
        return voxels_path(self.workspace, self.id)

    @property
    def ckpt_dir(self) -> str:
        return join(self.dir, "ckpt")

    @property
    def last_ckpt(self) -> str:
        return last_checkpoint_path(self.workspace, self.id)

    @property
    def best_ckpt(self) -> str:
        return join(self.ckpt_dir, "best.ckpt")

    @property
    def model_path(self) -> str:
        return join(self.dir, "model.pt")

    @property
    def status_path(self) -> str:
        return join(self.dir, STATUS_NAME)

    @property
    def renders_dir(self) -> str:
        return join(self.dir, "val")


def partition_block_ids(workspace: str) -> list[str]:
    """The ids of a finished partition's blocks; WorkspaceError when the workspace has no partition output."""
    summary = read_json(join(workspace, PARTITION_SUMMARY))
    if summary is None or not summary.get("rays_per_block"):
        raise WorkspaceError(
            f"{join(workspace, PARTITION_SUMMARY)}: no partition output in {workspace}; "
            f"run `bigscene partition -w {workspace}` first"
        )
    return list(summary["rays_per_block"])


def read_block(workspace: str, block_id: str) -> BlockSpec:
    """The block's record and a check that its ray store is complete and holds rays (InputError if not)."""
    record = read_json(block_json_path(workspace, block_id))
    if record is None:
        raise WorkspaceError(
            f"{block_json_path(workspace, block_id)}: no such block record; re-run `bigscene partition -w {workspace}`"
        )
    info = ray_store_info(rays_path(workspace, block_id))
    if info is None:
        raise InputError(rays_path(workspace, block_id), "missing or unfinished ray store; re-run `bigscene partition`")
    if info["count"] == 0:
        raise InputError(
            rays_path(workspace, block_id),
            "block has no rays to train on (no training camera sees it); partition with fewer blocks or "
            "partition.merge_empty=true",
        )
    return BlockSpec(
        workspace=workspace,
        id=block_id,
        inner=np.asarray(record["inner"], dtype=np.float64),
        outer=np.asarray(record["outer"], dtype=np.float64),
        ray_count=int(info["count"]),
        checksum=str(info["checksum"]),
        images=tuple(int(i) for i in record.get("images", ())),
    )


def block_fingerprint(spec: BlockSpec, config: Config) -> str:
    """What a block's weights depend on: its rays and the model and sampler configs (not the schedule, so a
    finished block can be trained on for more steps)."""
    doc = {
        "block": spec.id,
        "rays": spec.checksum,
        "model": dataclasses.asdict(config.model),
        "sampler": dataclasses.asdict(config.sampler),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def scene_name(workspace: str) -> str:
    """The workspace's folder name: the W&B group of its block runs by default."""
    return os.path.basename(str(workspace).rstrip("/")) or "bigscene"


def read_status(spec: BlockSpec) -> dict[str, Any]:
    return read_json(spec.status_path) or {}

"""`bigscene partition`: the stage entry point, with completion, fingerprint and overwrite rules.

A finished run leaves `WS/partition.json` (written last) whose fingerprint is the partition config and
the scene's content; re-running with both unchanged is a no-op. An interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any

import numpy as np

from bigscene.config import Config, save_resolved
from bigscene.errors import WorkspaceError
from bigscene.scene.model import Scene
from bigscene.store import has_scene, read_scene, scene_path
from bigscene.store.blocks import ray_store_info, rays_path, remove_tree, work_path
from bigscene.store.workspace import exists, join, read_json, write_json_atomic
from partitioning.driver import Driver

log = logging.getLogger(__name__)

SUMMARY_NAME = "partition.json"
#: Partition keys that say how to run, not what to make: left out of the fingerprint.
EXECUTION_KEYS = ("engine", "num_cpus", "max_retries")


def scene_digest(scene: Scene) -> str:
    """SHA-256 of everything in the scene that partitioning reads."""
    digest = hashlib.sha256()
    for array in (scene.c2w, scene.points.xyz, scene.points.track_length, scene.roi):
        digest.update(b"none" if array is None else np.ascontiguousarray(array).tobytes())
    for record in scene.images:
        digest.update(f"{record.name}|{record.camera_id}|{record.split}\n".encode())
    for cid in sorted(scene.cameras):
        digest.update(repr(scene.cameras[cid]).encode())
    digest.update(f"{scene.image_root}|{scene.background}".encode())
    return digest.hexdigest()


def fingerprint(scene: Scene, config: Config) -> dict[str, Any]:
    keys = {k: v for k, v in dataclasses.asdict(config.partition).items() if k not in EXECUTION_KEYS}
    return {"scene": scene_digest(scene), "partition": keys}


def _complete(workspace: str, summary: dict[str, Any]) -> bool:
    return all(ray_store_info(rays_path(workspace, b)) is not None for b in summary.get("rays_per_block", {}))


def run_partition(
    workspace: str, config: Config, address: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Partition the workspace's scene into blocks (see DESIGN.md); returns the summary.

    `address` joins an existing Ray cluster; `overwrite` replaces a finished partition made with another
    config or scene (without it that is an error).
    """
    started = time.perf_counter()
    workspace = str(workspace)
    if not has_scene(workspace):
        state = "is incomplete (an interrupted write)" if exists(scene_path(workspace)) else "does not exist"
        raise WorkspaceError(
            f"{scene_path(workspace)} {state}; run `bigscene ingest` or `bigscene sfm` on this workspace first"
        )
    scene = read_scene(workspace)
    expected = fingerprint(scene, config)
    summary_path = join(workspace, SUMMARY_NAME)
    done = read_json(summary_path)
    if done is not None and done.get("fingerprint") == expected and _complete(workspace, done):
        log.info("partition already complete in %s", workspace)
        remove_tree(work_path(workspace))
        return done
    if done is not None and done.get("fingerprint") != expected:
        if not overwrite:
            raise WorkspaceError(
                f"{summary_path}: the workspace was partitioned with another config or scene; pass "
                "--overwrite to replace its blocks, or partition into another workspace"
            )
        remove_tree(summary_path)
    save_resolved(config, join(workspace, "partition.config.yaml"))
    summary = {"stage": "partition", **Driver(workspace, scene, config.partition, expected).run(address)}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["fingerprint"] = expected
    write_json_atomic(summary_path, summary)
    remove_tree(work_path(workspace))
    return summary

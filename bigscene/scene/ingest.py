"""The first stage: read an input scene (or run SfM on photos), check it, normalise it, write the workspace."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from bigscene.config import Config, SceneConfig, save_resolved
from bigscene.errors import InputError, WorkspaceError
from bigscene.scene.images import load_image
from bigscene.scene.model import Scene
from bigscene.scene.normalise import NormaliseOptions, normalise
from bigscene.store import has_scene, write_scene
from bigscene.store.workspace import join, read_json, write_json_atomic

log = logging.getLogger(__name__)


def normalise_options(cfg: SceneConfig) -> NormaliseOptions:
    scale: str | float = cfg.scale if cfg.scale == "roi" else float(cfg.scale)
    return NormaliseOptions(
        up=cfg.up,
        min_track_length=cfg.min_track_length,
        roi_percentile=cfg.roi_percentile,
        roi_margin=cfg.roi_margin,
        scale=scale,
    )


def check_images(scene: Scene, source: object) -> None:
    """Decode every image once: a missing, corrupt or wrongly sized file is an error naming it."""
    root = Path(scene.image_root)
    if not root.is_dir():
        raise InputError(root, f"image folder of {source} does not exist")
    for index in track(range(len(scene.images)), description="checking images", transient=True):
        record = scene.images[index]
        pixels = load_image(root / record.name, scene.background)  # (H, W, 3) uint8
        camera = scene.cameras[record.camera_id]
        if pixels.shape[:2] != (camera.height, camera.width):
            raise InputError(
                root / record.name,
                f"image is {pixels.shape[1]}x{pixels.shape[0]} but its camera {record.camera_id} "
                f"is calibrated for {camera.width}x{camera.height}",
            )


def claim_workspace(workspace: str, stage: str, fingerprint: dict[str, Any], overwrite: bool) -> dict | None:
    """The finished summary when this exact stage already ran here; refuse to clobber a different scene."""
    summary = read_json(join(workspace, f"{stage}.json"))
    if summary is not None and summary.get("fingerprint") == fingerprint and has_scene(workspace):
        return summary
    if has_scene(workspace) and not overwrite:
        raise WorkspaceError(
            f"{workspace}: already holds a different scene; pass --overwrite to replace it or use another workspace"
        )
    return None


def scene_summary(scene: Scene) -> dict[str, Any]:
    splits = {s: int(len(scene.split_indices(s))) for s in ("train", "val", "test")}
    return {
        "images": len(scene.images),
        "splits": splits,
        "cameras": len(scene.cameras),
        "points": len(scene.points),
        "roi": None if scene.roi is None else np.round(scene.roi, 6).tolist(),
        "scale": float(np.cbrt(abs(np.linalg.det(scene.world_from_input[:3, :3])))),
    }


def finish_scene(scene: Scene, workspace: str, config: Config, source: object) -> Scene:
    """Normalise (when asked), validate and write the scene store."""
    scene.image_root = str(Path(scene.image_root).resolve())
    scene.validate(source)
    if config.scene.normalise:
        scene = normalise(scene, normalise_options(config.scene))
    write_scene(workspace, scene)
    return scene


def run_ingest(
    source: str | os.PathLike, workspace: str, config: Config, fmt: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """`bigscene ingest`: any supported scene format into `<ws>/scene.zarr`; returns the summary."""
    from bigscene.scene.formats import detect_format, read_scene

    started = time.perf_counter()
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or directory")
    fmt = fmt or config.scene.format
    if fmt == "auto":
        fmt = detect_format(source)
    fingerprint = {"source": str(source.resolve()), "format": fmt, "scene": asdict(config.scene)}
    done = claim_workspace(workspace, "ingest", fingerprint, overwrite)
    if done is not None:
        log.info("ingest already complete in %s", workspace)
        return done

    result = read_scene(
        source, fmt, image_mismatch=config.scene.image_mismatch, background=tuple(config.scene.background)
    )
    check_images(result.scene, source)
    scene = finish_scene(result.scene, workspace, config, source)
    save_resolved(config, join(workspace, "ingest.config.yaml"))
    summary = {
        "stage": "ingest",
        "source": str(source.resolve()),
        "format": fmt,
        **scene_summary(scene),
        "skipped_frames": len(result.skipped),
        "skipped": list(result.skipped)[:20],
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fingerprint,
    }
    write_json_atomic(join(workspace, "ingest.json"), summary)
    return summary


def run_sfm_stage(images_dir: str | os.PathLike, workspace: str, config: Config, overwrite: bool = False) -> dict:
    """`bigscene sfm`: pycolmap SfM on a folder of photos, then the same normalise-and-write as ingest."""
    from bigscene.scene.sfm import SfmOptions, run_sfm

    started = time.perf_counter()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(images_dir, "image folder does not exist")
    cfg = config.scene
    fingerprint = {"source": str(images_dir.resolve()), "format": "sfm", "scene": asdict(cfg)}
    done = claim_workspace(workspace, "sfm", fingerprint, overwrite)
    if done is not None:
        log.info("sfm already complete in %s", workspace)
        return done
    if "://" in workspace:
        raise WorkspaceError(f"{workspace}: SfM needs a local workspace (COLMAP writes a database file)")

    options = SfmOptions(
        matcher=cfg.matcher,
        mapper=cfg.mapper,
        camera_model=cfg.camera_model,
        single_camera=cfg.single_camera,
        max_image_size=cfg.max_image_size,
        vocab_tree_path=cfg.vocab_tree_path or None,
        seed=config.train.seed,
    )
    result = run_sfm(images_dir, Path(workspace) / "sfm", options)
    scene = finish_scene(result.scene, workspace, config, images_dir)
    save_resolved(config, join(workspace, "sfm.config.yaml"))
    summary = {
        "stage": "sfm",
        "source": str(images_dir.resolve()),
        "total_images": result.total_images,
        "registered_images": result.registered_images,
        "unregistered": result.unregistered,
        "mean_reprojection_error_px": round(float(result.mean_reprojection_error_px), 4),
        **scene_summary(scene),
        "model_dir": str(result.model_dir),
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fingerprint,
    }
    write_json_atomic(join(workspace, "sfm.json"), summary)
    return summary

"""The Zarr layout of `<ws>/scene.zarr`: cameras, image index, poses, sparse points, ROI, transform.

Layout (schema version 1):
    cameras/{id (C,) int64, model (C,) str, width (C,) int64, height (C,) int64, params (C, 8) float64 NaN-padded}
    images/{name (I,) str, camera_id (I,) int64, appearance_id (I,) int64, split (I,) str, c2w (I, 4, 4) float64}
    points/{xyz (P, 3) float64, rgb (P, 3) uint8, track_length (P,) int32, error (P,) float32}
    attrs: schema_version, image_root, roi (2x3 or null), world_from_input (4x4), background, complete
The `complete` attribute is written last: a store without it is treated as absent.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from bigscene.errors import WorkspaceError
from bigscene.scene.cameras import Camera
from bigscene.scene.model import ImageRecord, Scene, SparsePoints
from bigscene.store.workspace import is_remote, join

SCENE_STORE = "scene.zarr"
SCHEMA_VERSION = 1
_MAX_PARAMS = 8
_CHUNK = 65536


def scene_path(workspace: str | os.PathLike) -> str:
    return join(workspace, SCENE_STORE)


def _array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    chunks = (min(max(len(data), 1), _CHUNK), *data.shape[1:])
    dtype = str if data.dtype.kind == "U" else data.dtype  # variable-length UTF-8, a Zarr v3 standard type
    arr = group.create_array(name, shape=data.shape, dtype=dtype, chunks=chunks)
    if data.size:
        arr[...] = data


def _write_group(path: str, scene: Scene) -> None:
    root = zarr.open_group(path, mode="w")
    ids = sorted(scene.cameras)
    cams = root.create_group("cameras")
    params = np.full((len(ids), _MAX_PARAMS), np.nan)
    for row, cid in enumerate(ids):
        params[row, : len(scene.cameras[cid].params)] = scene.cameras[cid].params
    _array(cams, "id", np.array(ids, dtype=np.int64))
    _array(cams, "model", np.array([scene.cameras[c].model for c in ids], dtype=str))
    _array(cams, "width", np.array([scene.cameras[c].width for c in ids], dtype=np.int64))
    _array(cams, "height", np.array([scene.cameras[c].height for c in ids], dtype=np.int64))
    _array(cams, "params", params)

    ims = root.create_group("images")
    _array(ims, "name", np.array([im.name for im in scene.images], dtype=str))
    _array(ims, "camera_id", np.array([im.camera_id for im in scene.images], dtype=np.int64))
    _array(ims, "appearance_id", np.array([im.appearance_id for im in scene.images], dtype=np.int64))
    _array(ims, "split", np.array([im.split for im in scene.images], dtype=str))
    _array(ims, "c2w", scene.c2w.astype(np.float64))

    pts = root.create_group("points")
    _array(pts, "xyz", np.asarray(scene.points.xyz, dtype=np.float64).reshape(-1, 3))
    _array(pts, "rgb", np.asarray(scene.points.rgb, dtype=np.uint8).reshape(-1, 3))
    _array(pts, "track_length", np.asarray(scene.points.track_length, dtype=np.int32))
    _array(pts, "error", np.asarray(scene.points.error, dtype=np.float32))

    root.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "image_root": scene.image_root,
            "roi": None if scene.roi is None else np.asarray(scene.roi).tolist(),
            "world_from_input": np.asarray(scene.world_from_input).tolist(),
            "background": None if scene.background is None else list(scene.background),
        }
    )
    root.attrs["complete"] = True


def write_scene(workspace: str | os.PathLike, scene: Scene) -> str:
    """Write `scene` to `<ws>/scene.zarr`; a local store is built aside and swapped in whole."""
    target = scene_path(workspace)
    if is_remote(target):
        _write_group(target, scene)
        return target
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_group(str(staging), scene)
        if final.exists():
            retired = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
            os.replace(final, retired)
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def has_scene(workspace: str | os.PathLike) -> bool:
    """True when the workspace holds a complete scene store."""
    try:
        root = zarr.open_group(scene_path(workspace), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return bool(root.attrs.get("complete", False))


def read_scene(workspace: str | os.PathLike) -> Scene:
    """Read `<ws>/scene.zarr` back into a Scene, identical to what was written."""
    path = scene_path(workspace)
    try:
        root = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise WorkspaceError(f"{path}: no scene here; run `bigscene ingest` or `bigscene sfm` first") from err
    version = root.attrs.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise WorkspaceError(
            f"{path}: written by a newer bigscene (schema {version}, this one reads up to {SCHEMA_VERSION}); "
            "upgrade bigscene or ingest into a new workspace"
        )
    if not root.attrs.get("complete", False):
        raise WorkspaceError(f"{path}: incomplete scene store (interrupted write); re-run the stage that writes it")

    cams = root["cameras"]
    cameras = {}
    for cid, model, width, height, params in zip(
        cams["id"][:], cams["model"][:], cams["width"][:], cams["height"][:], cams["params"][:], strict=True
    ):
        cameras[int(cid)] = Camera(str(model), int(width), int(height), tuple(params[~np.isnan(params)]))
    ims = root["images"]
    images = [
        ImageRecord(str(name), int(cid), int(aid), str(split))
        for name, cid, aid, split in zip(
            ims["name"][:], ims["camera_id"][:], ims["appearance_id"][:], ims["split"][:], strict=True
        )
    ]
    pts = root["points"]
    points = SparsePoints(pts["xyz"][:], pts["rgb"][:], pts["track_length"][:], pts["error"][:])
    roi = root.attrs.get("roi")
    background = root.attrs.get("background")
    return Scene(
        cameras=cameras,
        images=images,
        c2w=ims["c2w"][:],
        points=points,
        image_root=str(root.attrs.get("image_root", "")),
        roi=None if roi is None else np.array(roi, dtype=np.float64),
        world_from_input=np.array(root.attrs["world_from_input"], dtype=np.float64),
        background=None if background is None else tuple(background),
    )

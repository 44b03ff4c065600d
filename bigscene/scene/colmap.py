"""COLMAP sparse models (text or binary; 3.x three-file and 4.x five-file layouts) through pycolmap.

COLMAP poses are world-to-camera in the OpenCV convention, so reading only inverts them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pycolmap
import torch

from bigscene.errors import InputError
from bigscene.scene.cameras import CAMERA_MODELS, Camera
from bigscene.scene.images import ReadResult, check_images, report_missing
from bigscene.scene.model import ImageRecord, Scene, SparsePoints

log = logging.getLogger(__name__)

_MODEL_FILES = ("cameras", "images", "points3D")
#: Files pycolmap writes (4.x layout); the 3.x layout lacks rigs and frames.
_ALL_MODEL_FILES = ("cameras", "images", "points3D", "rigs", "frames")
#: What pycolmap raises for unreadable model files.
_PYCOLMAP_ERRORS = (ValueError, RuntimeError, IndexError, OSError)


def has_colmap_model(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds cameras, images and points3D files, all .bin or all .txt."""
    directory = Path(directory)
    return any(all((directory / f"{name}{ext}").is_file() for name in _MODEL_FILES) for ext in (".bin", ".txt"))


def default_image_root(model_dir: str | os.PathLike) -> Path:
    """`<model>/../../images` (a `sparse/0` layout), else `<model>/../images`, else the model's parent."""
    model_dir = Path(model_dir)
    for candidate in (model_dir.parent.parent / "images", model_dir.parent / "images"):
        if candidate.is_dir():
            return candidate
    return model_dir.parent


def _c2w(cam_from_world: np.ndarray) -> np.ndarray:
    """(3, 4) world-to-camera [R | t] -> (4, 4) camera-to-world."""
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = -rotation.T @ translation
    return c2w


def _w2c(c2w: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world -> (3, 4) world-to-camera [R | t], for a rigid c2w."""
    rotation = c2w[:3, :3].T
    return np.hstack([rotation, (-rotation @ c2w[:3, 3])[:, None]])


def read_colmap(model_dir: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ReadResult:
    """Read a COLMAP model into a Scene: its registered images, sorted by name, and its 3D points.

    `appearance_id` is the image's index in name order; camera ids are COLMAP's. Images whose file is
    missing under `image_root` (default: see `default_image_root`) are skipped and listed.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(model_dir, "COLMAP model directory does not exist")
    if not has_colmap_model(model_dir):
        raise InputError(
            model_dir, "no COLMAP model: expected cameras, images and points3D files, all .bin or all .txt"
        )
    reconstruction = pycolmap.Reconstruction()
    try:
        reconstruction.read(model_dir)
    except _PYCOLMAP_ERRORS as exc:
        raise InputError(model_dir, f"cannot read COLMAP model ({exc})") from exc
    if reconstruction.num_cameras() == 0 and reconstruction.num_images() == 0:
        raise InputError(model_dir, "empty COLMAP model (no cameras, no images)")
    registered = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not registered:
        raise InputError(model_dir, f"COLMAP model has no registered image ({reconstruction.num_images()} unposed)")

    root = Path(image_root) if image_root is not None else default_image_root(model_dir)
    missing = set(check_images(root, [im.name for im in registered]))
    report_missing(root, sorted(missing), len(registered), model_dir)
    kept = [im for im in registered if im.name not in missing]
    cameras = {cid: _camera(reconstruction.cameras[cid], model_dir) for cid in sorted({im.camera_id for im in kept})}
    images = [ImageRecord(im.name, im.camera_id, index) for index, im in enumerate(kept)]
    c2w = np.stack([_c2w(im.cam_from_world().matrix()) for im in kept])  # (I, 4, 4)

    scene = Scene(cameras, images, c2w, points=_points(reconstruction), image_root=str(root))
    scene.validate(model_dir)
    log.info(
        "read COLMAP model %s: %d images, %d cameras, %d points",
        model_dir,
        len(images),
        len(cameras),
        len(scene.points),
    )
    return ReadResult(scene, sorted(missing))


def _camera(camera: pycolmap.Camera, model_dir: Path) -> Camera:
    model = camera.model.name
    if model not in CAMERA_MODELS:
        supported = ", ".join(CAMERA_MODELS)
        raise InputError(model_dir, f"camera {camera.camera_id} uses unsupported model {model}; supported: {supported}")
    try:
        return Camera(model, int(camera.width), int(camera.height), tuple(camera.params))
    except InputError as exc:
        raise InputError(model_dir, f"camera {camera.camera_id}: {exc.problem}") from exc


def _points(reconstruction: pycolmap.Reconstruction) -> SparsePoints:
    points = [reconstruction.points3D[pid] for pid in sorted(reconstruction.point3D_ids())]
    if not points:
        return SparsePoints.empty()
    return SparsePoints(
        xyz=np.array([p.xyz for p in points], dtype=np.float64),  # (P, 3)
        rgb=np.array([p.color for p in points], dtype=np.uint8),  # (P, 3)
        track_length=np.array([p.track.length() for p in points], dtype=np.int32),  # (P,)
        error=np.array([p.error for p in points], dtype=np.float32),  # (P,)
    )


def write_colmap(scene: Scene, model_dir: str | os.PathLike, binary: bool = True) -> None:
    """Write `scene` as a COLMAP 4.x model (cameras, images, points3D, rigs, frames) into `model_dir`.

    Every camera gets a trivial rig and every image a trivial frame holding its pose. The files are
    written to a temporary directory first and then moved in, so none is ever half-written; model
    files of the other kind (.txt when writing .bin) are removed so that they cannot shadow the new one.
    COLMAP keeps a point's track as image observations while the Scene keeps only its length: each
    point is observed, at its projection, in the first `track_length` images (scene order) that see it.
    """
    model_dir = Path(model_dir)
    reconstruction = pycolmap.Reconstruction()
    for camera_id, camera in scene.cameras.items():
        reconstruction.add_camera_with_trivial_rig(
            pycolmap.Camera(
                model=camera.model,
                width=camera.width,
                height=camera.height,
                params=list(camera.params),
                camera_id=camera_id,
            )
        )
    keypoints, observed = _observations(scene)
    for index, (record, c2w) in enumerate(zip(scene.images, scene.c2w, strict=True)):
        image = pycolmap.Image(
            name=record.name, keypoints=keypoints[index], camera_id=record.camera_id, image_id=index + 1
        )
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(_w2c(c2w)))

    tracks: list[list[pycolmap.TrackElement]] = [[] for _ in range(len(scene.points))]
    for index, point_indices in enumerate(observed):
        for keypoint, point in enumerate(point_indices):
            tracks[point].append(pycolmap.TrackElement(index + 1, keypoint))
    points = scene.points
    for point in range(len(points)):
        track = pycolmap.Track(tracks[point])
        point_id = reconstruction.add_point3D(points.xyz[point], track, points.rgb[point])
        reconstruction.point3D(point_id).error = float(points.error[point])

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    try:
        (reconstruction.write_binary if binary else reconstruction.write_text)(staging)
        if model_dir.exists():
            ext, stale_ext = (".bin", ".txt") if binary else (".txt", ".bin")
            for name in _ALL_MODEL_FILES:
                os.replace(staging / f"{name}{ext}", model_dir / f"{name}{ext}")
            for name in _ALL_MODEL_FILES:
                (model_dir / f"{name}{stale_ext}").unlink(missing_ok=True)
        else:
            staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote COLMAP model %s: %d images, %d points", model_dir, len(scene.images), len(points))


def _observations(scene: Scene) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image: keypoints (n_i, 2) float64 pixels and the indices (n_i,) of the points they observe."""
    points = scene.points
    remaining = points.track_length.astype(np.int64)  # (P,) observations still to place
    keypoints, observed = [], []
    for index, c2w in enumerate(scene.c2w):
        camera = scene.camera_of(index)
        w2c = _w2c(c2w)
        pending = np.flatnonzero(remaining > 0)  # (Q,)
        in_camera = points.xyz[pending] @ w2c[:, :3].T + w2c[:, 3]  # (Q, 3)
        in_front = in_camera[:, 2] > 0
        candidates = pending[in_front]  # (C,)
        pixels = camera.project(torch.from_numpy(in_camera[in_front])).numpy()  # (C, 2)
        inside = np.all(pixels >= 0, axis=1) & (pixels[:, 0] < camera.width) & (pixels[:, 1] < camera.height)
        keypoints.append(pixels[inside])
        observed.append(candidates[inside])
        remaining[candidates[inside]] -= 1
    return keypoints, observed

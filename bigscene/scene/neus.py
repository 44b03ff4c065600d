"""NeuS / IDR scenes: `cameras_sphere.npz` (or `cameras.npz`) with the photos in `image/` (or `images/`).

`world_mat_i` (4x4) = K [R | t] projects world points into image i (the i-th image in name order);
`scale_mat_i` maps the unit sphere that bounds the object into the world. The scene frame we choose is
that unit-sphere frame, as NeuS trains in it: poses come from decomposing P = world_mat @ scale_mat,
and `world_from_input` = inverse(scale_mat) maps the npz's world frame into the scene frame.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.linalg

from bigscene.errors import ConfigError, InputError
from bigscene.scene.cameras import Camera
from bigscene.scene.images import ReadResult, image_size
from bigscene.scene.model import ImageRecord, Scene

log = logging.getLogger(__name__)

#: What to do when an image's size does not fit its intrinsics.
IMAGE_MISMATCH = ("error", "resize", "crop")
_NPZ_NAMES = ("cameras_sphere.npz", "cameras.npz")
_IMAGE_DIRS = ("image", "images")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: A principal point further than this fraction of the image size from its centre means a mismatch.
_CENTRE_TOLERANCE = 0.1
#: Skew above this fraction of the focal length is reported (bigscene cameras have none).
_SKEW_TOLERANCE = 1e-4


def decompose_projection(projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) with K[2, 2] = 1 and positive focal lengths, and the OpenCV camera-to-world (4, 4),
    from a (3, 4) projection matrix P = s K [R | t] with any non-zero scale s."""
    intrinsics, rotation = scipy.linalg.rq(projection[:, :3])
    signs = np.diag(np.sign(np.diag(intrinsics)))  # (3, 3) makes K's diagonal positive; signs @ signs = I
    intrinsics, rotation = intrinsics @ signs, signs @ rotation
    translation = np.linalg.solve(intrinsics, projection[:, 3])  # (3,)
    if np.linalg.det(rotation) < 0:  # P came with a negative scale
        rotation, translation = -rotation, -translation
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = -rotation.T @ translation
    return intrinsics / intrinsics[2, 2], c2w


def _fit_camera(k: np.ndarray, width: int, height: int, mode: str, image: Path, npz: Path) -> Camera:
    """The PINHOLE camera of a (width x height) image with intrinsics K, handling a size mismatch."""
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    camera = Camera.pinhole(fx, fy, cx, cy, width, height)
    centred_x = abs(cx - width / 2) <= _CENTRE_TOLERANCE * width
    if centred_x and abs(cy - height / 2) <= _CENTRE_TOLERANCE * height:
        return camera
    implied_width, implied_height = round(2 * cx), round(2 * cy)
    if mode == "resize":
        return camera.scaled(width / implied_width, height / implied_height, width, height)
    if mode == "crop":
        return camera.cropped((implied_width - width) // 2, (implied_height - height) // 2, width, height)
    raise InputError(
        image,
        f"image is {width}x{height} but the intrinsics in {npz.name} imply {implied_width}x{implied_height} "
        f"(principal point {cx:.1f}, {cy:.1f}); use image_mismatch='resize' if the images were downscaled "
        "or image_mismatch='crop' if they were centre-cropped",
    )


def read_neus(directory: str | os.PathLike, image_mismatch: str = "error") -> ReadResult:
    """Read a NeuS / IDR scene directory into a Scene in the unit-sphere frame.

    NeuS stores no image size, so an image whose principal point lies more than 10% of its size from
    its centre is taken to mismatch its intrinsics: `image_mismatch` "resize" scales K to the image,
    "crop" shifts the principal point for a centred crop, "error" raises InputError.
    """
    if image_mismatch not in IMAGE_MISMATCH:
        raise ConfigError(f"image_mismatch={image_mismatch!r}: expected one of {', '.join(IMAGE_MISMATCH)}")
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "NeuS scene directory does not exist")
    npz = next((directory / n for n in _NPZ_NAMES if (directory / n).is_file()), None)
    if npz is None:
        raise InputError(directory, f"no NeuS cameras: expected {' or '.join(_NPZ_NAMES)}")
    image_dir = next((directory / d for d in _IMAGE_DIRS if (directory / d).is_dir()), None)
    if image_dir is None:
        raise InputError(directory, f"no image folder: expected {' or '.join(d + '/' for d in _IMAGE_DIRS)}")
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not names:
        raise InputError(image_dir, "no .png or .jpg images")

    try:
        with np.load(npz) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(npz, f"not a readable npz file ({exc})") from exc
    world_count = sum(key.startswith("world_mat_") and not key.startswith("world_mat_inv") for key in arrays)
    if world_count > len(names):
        log.warning(
            "%s: %d world matrices for %d images; using the first %d",
            npz,
            world_count,
            len(names),
            len(names),
        )

    scale = arrays.get("scale_mat_0", np.eye(4))  # (4, 4)
    camera_ids: dict[tuple, int] = {}  # (width, height, rounded params) -> camera id
    cameras: dict[int, Camera] = {}
    images, poses, skewed = [], [], 0
    for index, name in enumerate(names):
        if f"world_mat_{index}" not in arrays:
            raise InputError(npz, f"no world_mat_{index} for image {name} ({len(names)} images)")
        if not np.allclose(arrays.get(f"scale_mat_{index}", np.eye(4)), scale, rtol=1e-9, atol=1e-12):
            raise InputError(npz, f"scale_mat_{index} differs from scale_mat_0; one scene frame is needed")
        projection = (arrays[f"world_mat_{index}"] @ scale)[:3, :4]  # (3, 4)
        if not np.all(np.isfinite(projection)):
            raise InputError(npz, f"non-finite world_mat_{index} or scale_mat_{index} (image {name})")
        try:
            k, c2w = decompose_projection(projection)
        except np.linalg.LinAlgError as exc:
            raise InputError(npz, f"degenerate world_mat_{index} (image {name})") from exc
        skewed += abs(k[0, 1]) > _SKEW_TOLERANCE * k[0, 0]
        width, height = image_size(image_dir / name)
        camera = _fit_camera(k, width, height, image_mismatch, image_dir / name, npz)
        key = (camera.width, camera.height, tuple(round(p, 6) for p in camera.params))
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            cameras[camera_ids[key]] = camera
        images.append(ImageRecord(name, camera_ids[key], index))
        poses.append(c2w)
    if skewed:
        log.warning("%s: %d camera(s) have skewed intrinsics; the skew is ignored", npz, skewed)
    try:
        world_from_input = np.linalg.inv(scale)
    except np.linalg.LinAlgError as exc:
        raise InputError(npz, "scale_mat is singular") from exc

    scene = Scene(cameras, images, np.stack(poses), image_root=str(image_dir), world_from_input=world_from_input)
    scene.validate(npz)
    log.info("read NeuS scene %s: %d images, %d cameras", directory, len(images), len(cameras))
    return ReadResult(scene, [])


def write_neus(scene: Scene, directory: str | os.PathLike) -> None:
    """Write `directory/cameras_sphere.npz` (world_mat_i = K [R | t], scale_mat_i = identity), atomically.

    Image i is the scene's i-th image; NeuS pairs matrices with images in name order, so the scene's
    images should be in name order. Images themselves are not written. Lens distortion cannot be stored.
    """
    directory = Path(directory)
    arrays = {}
    for index, (record, c2w) in enumerate(zip(scene.images, scene.c2w, strict=True)):
        camera = scene.cameras[record.camera_id]
        if camera.has_distortion:
            raise InputError(
                directory,
                f"NeuS cameras have no lens distortion; camera {record.camera_id} "
                f"({camera.model}) has {camera.distortion}",
            )
        k = np.eye(4)
        k[:3, :3] = camera.K
        arrays[f"world_mat_{index}"] = k @ np.linalg.inv(c2w)  # (4, 4)
        arrays[f"scale_mat_{index}"] = np.eye(4)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".cameras_sphere.", delete=False) as tmp:
        try:
            np.savez(tmp, **arrays)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, directory / "cameras_sphere.npz")
    log.info("wrote %s: %d cameras", directory / "cameras_sphere.npz", len(scene.images))

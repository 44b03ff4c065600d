"""nerfstudio / instant-ngp `transforms.json` and Blender (NeRF-synthetic) scenes.

These formats store camera-to-world in the OpenGL convention (x right, y up, z backward); readers
flip the camera's y and z axes into OpenCV's convention and the writer flips them back.
Image paths (`file_path`) are relative to the json's directory, with or without an extension.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigscene.errors import InputError
from bigscene.scene.cameras import CAMERA_MODELS, Camera
from bigscene.scene.images import ReadResult, image_size, report_missing
from bigscene.scene.model import SPLITS, ImageRecord, Scene

log = logging.getLogger(__name__)

#: c2w_opencv = c2w_opengl @ _FLIP_YZ and back: the camera's y and z axes change sign.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
#: The transforms.json distortion keys each supported camera model uses.
_MODEL_DISTORTION: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": (),
    "PINHOLE": (),
    "SIMPLE_RADIAL": ("k1",),
    "RADIAL": ("k1", "k2"),
    "OPENCV": ("k1", "k2", "p1", "p2"),
}
_ALL_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
_INTRINSIC_KEYS = (
    "camera_model",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "camera_angle_x",
    "camera_angle_y",
    *_ALL_DISTORTION,
)


@dataclass
class _Frame:
    """One parsed frame: image name relative to the json's directory, intrinsics, OpenCV c2w (4, 4)."""

    name: str
    camera: Camera
    c2w: np.ndarray
    split: str


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable json file ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(path, "expected a json object with 'frames'")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "no frames")
    return meta


def _resolve_image(directory: Path, file_path: str) -> str | None:
    """`file_path` normalised, with the extension found on disk when it has none; None when missing."""
    name = Path(os.path.normpath(file_path)).as_posix()
    if (directory / name).is_file():
        return name
    return next((name + s for s in _IMAGE_SUFFIXES if (directory / (name + s)).is_file()), None)


def _pose(frame: dict[str, Any], path: Path, file_path: str) -> np.ndarray:
    """The frame's OpenCV camera-to-world (4, 4) from its OpenGL `transform_matrix`."""
    try:
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"frame {file_path}: missing or malformed transform_matrix") from exc
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise InputError(path, f"frame {file_path}: transform_matrix has shape {matrix.shape}, expected 4x4")
    if not np.all(np.isfinite(matrix)):
        raise InputError(path, f"frame {file_path}: non-finite transform_matrix")
    return matrix @ _FLIP_YZ


def _camera(values: dict[str, Any]) -> Camera:
    """Intrinsics from transforms.json keys (`w` and `h` included)."""
    distortion = {key: float(values.get(key, 0.0)) for key in _ALL_DISTORTION}
    model = values.get("camera_model")
    if model is None:
        model = "OPENCV" if any(distortion[k] for k in _MODEL_DISTORTION["OPENCV"]) else "PINHOLE"
    if model not in _MODEL_DISTORTION:
        supported = ", ".join(_MODEL_DISTORTION)
        raise InputError("camera", f"unsupported camera_model {model!r}; supported: {supported}")
    unused = [key for key, value in distortion.items() if value and key not in _MODEL_DISTORTION[model]]
    if unused:
        raise InputError("camera", f"camera_model {model} has no parameter {', '.join(unused)}")
    width, height = int(values["w"]), int(values["h"])
    if "fl_x" in values:
        fx = float(values["fl_x"])
    elif "camera_angle_x" in values:
        fx = 0.5 * width / math.tan(0.5 * float(values["camera_angle_x"]))
    else:
        raise InputError("camera", "no focal length: expected fl_x or camera_angle_x")
    if "fl_y" in values:
        fy = float(values["fl_y"])
    elif "camera_angle_y" in values:
        fy = 0.5 * height / math.tan(0.5 * float(values["camera_angle_y"]))
    else:
        fy = fx
    if model.startswith("SIMPLE") and fx != fy:
        raise InputError("camera", f"{model} has one focal length but fl_x={fx} and fl_y={fy}")
    named = {
        "f": fx,
        "fx": fx,
        "fy": fy,
        "cx": float(values.get("cx", width / 2)),
        "cy": float(values.get("cy", height / 2)),
        "k": distortion["k1"],
        **distortion,
    }
    return Camera(model, width, height, tuple(named[name] for name in CAMERA_MODELS[model]))


def _parse_frames(
    path: Path,
    meta: dict[str, Any],
    split_of: Callable[[str, str], str],
    size: Callable[[str], tuple[int, int]],
) -> tuple[list[_Frame], list[str]]:
    """The frames of one json whose image exists, and the file paths of those whose image is missing.

    `split_of(file_path, name)` gives a frame's split; `size(name)` an image size for frames without w/h.
    """
    directory = path.parent
    shared = {key: meta[key] for key in _INTRINSIC_KEYS if key in meta}
    frames, missing = [], []
    for number, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise InputError(path, f"frame {number} has no file_path")
        file_path = str(frame["file_path"])
        name = _resolve_image(directory, file_path)
        if name is None:
            missing.append(file_path)
            continue
        c2w = _pose(frame, path, file_path)
        values = {**shared, **{key: frame[key] for key in _INTRINSIC_KEYS if key in frame}}
        if "w" not in values or "h" not in values:
            values["w"], values["h"] = size(name)
        try:
            camera = _camera(values)
        except InputError as exc:
            raise InputError(path, f"frame {file_path}: {exc.problem}") from exc
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"frame {file_path}: malformed intrinsics ({exc})") from exc
        frames.append(_Frame(name, camera, c2w, split_of(file_path, name)))
    return frames, missing


def _assemble(
    frames: list[_Frame], image_root: Path, source: Path, background: tuple[float, float, float] | None
) -> Scene:
    """A Scene with one camera per distinct intrinsics (ids from 1 in first-seen order), in frame order."""
    camera_ids: dict[Camera, int] = {}
    for frame in frames:
        camera_ids.setdefault(frame.camera, len(camera_ids) + 1)
    scene = Scene(
        cameras={camera_id: camera for camera, camera_id in camera_ids.items()},
        images=[ImageRecord(f.name, camera_ids[f.camera], index, f.split) for index, f in enumerate(frames)],
        c2w=np.stack([f.c2w for f in frames]),  # (I, 4, 4)
        image_root=str(image_root),
        background=background,
    )
    scene.validate(source)
    return scene


def read_transforms(path: str | os.PathLike, background: tuple[float, float, float] | None = None) -> ReadResult:
    """Read a nerfstudio / instant-ngp `transforms.json` (or a directory holding one).

    Intrinsics may be top-level (shared) or per frame; frames with identical intrinsics share a camera.
    Without `w`/`h` the size is the first image's. Splits come from nerfstudio's `{split}_filenames`
    lists (default train). Frames keep file order; those whose image is missing are skipped.
    `background` is stored on the scene so that RGBA images are composited on it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    meta = _load_json(path)
    directory = path.parent
    splits = {}
    for split in SPLITS:
        for file_path in meta.get(f"{split}_filenames", []):
            splits[Path(os.path.normpath(file_path)).as_posix()] = split

    def split_of(file_path: str, name: str) -> str:
        return splits.get(Path(os.path.normpath(file_path)).as_posix(), splits.get(name, "train"))

    frames, missing = _parse_frames(path, meta, split_of, _first_size(directory))
    report_missing(directory, missing, len(meta["frames"]), path)
    scene = _assemble(frames, directory, path, background)
    log.info("read %s: %d images, %d cameras", path, len(scene.images), len(scene.cameras))
    return ReadResult(scene, missing)


def _first_size(directory: Path) -> Callable[[str], tuple[int, int]]:
    """A size look-up that reads the header of the first image asked for and answers that ever after."""
    cache: list[tuple[int, int]] = []

    def size(name: str) -> tuple[int, int]:
        if not cache:
            cache.append(image_size(directory / name))
        return cache[0]

    return size


def read_blender(directory: str | os.PathLike, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> ReadResult:
    """Read a Blender / NeRF-synthetic scene: `transforms_{train,val,test}.json` in `directory`.

    Focal length from `camera_angle_x`, image size from the first image; the splits are kept, in the
    order train, val, test. The RGBA images are composited on `background` when loaded.
    """
    directory = Path(directory)
    paths = [(split, directory / f"transforms_{split}.json") for split in SPLITS]
    present = [(split, path) for split, path in paths if path.is_file()]
    if not present:
        raise InputError(directory, f"no Blender scene: expected {', '.join(p.name for _, p in paths)}")
    size = _first_size(directory)
    frames, missing, total = [], [], 0
    for split, path in present:
        meta = _load_json(path)
        split_frames, split_missing = _parse_frames(path, meta, lambda _f, _n, split=split: split, size)
        frames += split_frames
        missing += split_missing
        total += len(meta["frames"])
    report_missing(directory, missing, total, directory)
    scene = _assemble(frames, directory, directory, background)
    log.info("read Blender scene %s: %d images", directory, len(scene.images))
    return ReadResult(scene, missing)


def _intrinsics(camera: Camera) -> dict[str, Any]:
    """transforms.json keys for one camera: model, focal lengths, principal point, size, distortion."""
    named = dict(zip(CAMERA_MODELS[camera.model], camera.params, strict=True))
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    out: dict[str, Any] = {
        "camera_model": camera.model,
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx,
        "cy": cy,
        "w": camera.width,
        "h": camera.height,
    }
    for key in _MODEL_DISTORTION[camera.model]:
        out[key] = named[key] if key in named else named["k"]
    return out


def write_transforms(scene: Scene, path: str | os.PathLike) -> None:
    """Write `scene` as a nerfstudio `transforms.json` (OpenGL c2w), atomically.

    Intrinsics are top-level when every image shares one camera, per frame otherwise; splits other
    than train are written as `{split}_filenames` lists. Floats keep full precision.
    """
    path = Path(path)
    directory = path.parent

    def file_path(name: str) -> str:
        if not scene.image_root:
            return name
        image = os.path.abspath(Path(scene.image_root, name))
        return Path(os.path.relpath(image, os.path.abspath(directory))).as_posix()

    used = sorted({im.camera_id for im in scene.images})
    shared = len(used) == 1
    meta: dict[str, Any] = _intrinsics(scene.cameras[used[0]]) if shared else {}
    frames = []
    for record, c2w in zip(scene.images, scene.c2w, strict=True):
        frame = {"file_path": file_path(record.name), "transform_matrix": (c2w @ _FLIP_YZ).tolist()}
        if not shared:
            frame.update(_intrinsics(scene.cameras[record.camera_id]))
        frames.append(frame)
    meta["frames"] = frames
    if any(im.split != "train" for im in scene.images):
        for split in SPLITS:
            names = [f["file_path"] for f, im in zip(frames, scene.images, strict=True) if im.split == split]
            meta[f"{split}_filenames"] = names

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            json.dump(meta, tmp, indent=2)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    log.info("wrote %s: %d frames", path, len(frames))

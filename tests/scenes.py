"""Posed test scenes with real PNG files, shared by the reader, ingest and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bigscene.scene import Camera, ImageRecord, Scene, SparsePoints

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])

CAMERAS = {
    1: Camera("SIMPLE_PINHOLE", 32, 24, (26.0, 16.0, 12.0)),
    2: Camera("PINHOLE", 40, 30, (31.5, 33.25, 20.5, 14.75)),
    4: Camera("SIMPLE_RADIAL", 32, 24, (27.0, 15.5, 12.5, 0.013)),
    7: Camera("RADIAL", 36, 28, (29.0, 18.0, 14.0, -0.02, 0.004)),
    9: Camera("OPENCV", 40, 30, (30.1, 30.7, 19.9, 15.2, 0.011, -0.003, 0.0007, -0.0004)),
}


def look_at(centre: np.ndarray, rng: np.random.Generator, target: np.ndarray | None = None) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) at `centre` looking at `target` with a random roll; exact rotation."""
    target = np.zeros(3) if target is None else target
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, rng.normal(size=3))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def write_png(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


def make_scene(root: Path, cameras: dict[int, Camera] | None = None, per_camera: int = 2, seed: int = 0) -> Scene:
    """Images of every camera around the origin, written as PNGs under `root/images`, and points near it."""
    rng = np.random.default_rng(seed)
    cameras = CAMERAS if cameras is None else cameras
    images, poses = [], []
    for camera_id, camera in cameras.items():
        for _ in range(per_camera):
            index = len(images)
            name = f"frame_{index:03d}.png"
            write_png(root / "images" / name, camera.width, camera.height, seed=index)
            images.append(ImageRecord(name, camera_id, index))
            poses.append(look_at(rng.normal(size=3) * 0.3 + rng.choice([-4.0, 4.0], size=3), rng))
    count = 20
    points = SparsePoints(
        xyz=rng.uniform(-0.5, 0.5, (count, 3)),
        rgb=rng.integers(0, 256, (count, 3), dtype=np.uint8),
        track_length=rng.integers(2, 4, count).astype(np.int32),
        error=rng.uniform(0.1, 1.5, count).astype(np.float32),
    )
    return Scene(dict(cameras), images, np.stack(poses), points=points, image_root=str(root / "images"))

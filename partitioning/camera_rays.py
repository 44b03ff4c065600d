"""A training image's pixel rays for partitioning: the camera centre and a unit direction per pixel.

The maths is `bigscene.scene.cameras.generate_rays` (float64, rounded to float32 at the end). For cameras
without lens distortion, a compiled loop computes it in one pass over the pixels, an order of magnitude faster
than torch's element-wise passes; distorted cameras (whose undistortion iterates) and machines without numba
use `generate_rays` itself, RAY_SLICE pixels at a time so its float64 temporaries stay small.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from bigscene.scene.cameras import Camera, generate_rays
from partitioning.compiled import COMPILED, jit

#: Pixels whose rays `generate_rays` makes at once.
RAY_SLICE = 1 << 16


def image_rays(
    camera: Camera, c2w: np.ndarray, pixels: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rays through the centres of pixels (N, 2) integer (x, y) of a camera with (4, 4) camera-to-world c2w:
    float32 origins (N, 3) and unit dirs (N, 3), written into `out` (origins, dirs) when given."""
    n = len(pixels)
    origins, dirs = out if out is not None else (np.empty((n, 3), np.float32), np.empty((n, 3), np.float32))
    for array in (origins, dirs):  # the compiled loop writes n rows into them unchecked
        if array.dtype != np.float32 or array.shape != (n, 3) or not array.flags.c_contiguous:
            raise ValueError(f"image_rays: out arrays must be C-contiguous float32 ({n}, 3), not {array.shape}")
    if COMPILED and not camera.has_distortion:
        (fx, fy), (cx, cy) = camera.focal, camera.principal_point
        c2w = np.asarray(c2w, dtype=np.float64)
        rotation, centre = np.ascontiguousarray(c2w[:3, :3]), c2w[:3, 3].copy()
        _pinhole_rays(pixels, fx, fy, cx, cy, rotation, centre, origins, dirs)
    else:
        _torch_rays(camera, c2w, pixels, origins, dirs)
    return origins, dirs


#: Held while `_torch_rays` has torch on one thread: the threads reading a task's images take turns, so that each
#: restores the count the process had.
_ONE_TORCH_THREAD = threading.Lock()


def _torch_rays(camera: Camera, c2w: np.ndarray, pixels: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> None:
    """`image_rays` by `generate_rays` into origins, dirs, on one torch thread: these small element-wise ops only slow
    down on torch's thread pool, and the task's other images are read on other threads meanwhile."""
    c2w64 = torch.tensor(c2w, dtype=torch.float64)
    with _ONE_TORCH_THREAD:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for start in range(0, len(pixels), RAY_SLICE):
                rows = slice(start, start + RAY_SLICE)
                o, d = generate_rays(camera, c2w64, torch.from_numpy(pixels[rows].astype(np.int64)))
                origins[rows], dirs[rows] = o.numpy(), d.numpy()
        finally:
            torch.set_num_threads(threads)


@jit
def _pinhole_rays(
    pixels: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    rotation: np.ndarray,
    centre: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
) -> None:
    """`image_rays` into origins, dirs for an undistorted camera: rotation (3, 3) and centre (3,) float64 of its
    c2w."""
    for i in range(len(pixels)):
        x = (np.float64(pixels[i, 0]) + 0.5 - cx) / fx
        y = (np.float64(pixels[i, 1]) + 0.5 - cy) / fy
        wx = x * rotation[0, 0] + y * rotation[0, 1] + rotation[0, 2]
        wy = x * rotation[1, 0] + y * rotation[1, 1] + rotation[1, 2]
        wz = x * rotation[2, 0] + y * rotation[2, 1] + rotation[2, 2]
        norm = np.sqrt(wx * wx + wy * wy + wz * wz)
        dirs[i, 0], dirs[i, 1], dirs[i, 2] = wx / norm, wy / norm, wz / norm
        origins[i, 0], origins[i, 1], origins[i, 2] = centre[0], centre[1], centre[2]

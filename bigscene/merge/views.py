"""Novel views of the merged scene: test views, a camera-path video, and a top-down orthophoto with its DSM.

Pictures are written as PNG (colour; depth as grey, near bright; world normals as (n + 1) / 2) and the
path as an animated GIF. The orthophoto and DSM are rendered tile by tile (one engine task per tile, each
a Zarr chunk of merge/ortho.zarr), with downsampled PNG previews.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from bigscene.engine import Engine
from bigscene.merge.composite import CompositeField
from bigscene.merge.render import RenderSettings, render_rays
from bigscene.scene import Camera, Scene
from bigscene.store import merge_store

#: Longest side of an orthophoto / DSM preview, pixels.
PREVIEW_SIZE = 1024


@dataclass(frozen=True)
class View:
    name: str
    camera: Camera
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenCV
    image: str | None = None  # the photo, for evaluation


def held_out_views(scene: Scene, limit: int = 0, scale: float = 1.0) -> list[View]:
    """The scene's test-split views (every one when limit is 0, else `limit` spread evenly), cameras scaled."""
    index = scene.split_indices("test")
    if limit and len(index) > limit:
        index = index[np.linspace(0, len(index) - 1, limit).round().astype(int)]
    views = []
    for i in index:
        camera = scene.camera_of(int(i))
        if scale != 1.0:
            w, h = max(1, round(camera.width * scale)), max(1, round(camera.height * scale))
            camera = camera.scaled(w / camera.width, h / camera.height, w, h)
        record = scene.images[int(i)]
        views.append(
            View(
                record.name.rsplit(".", 1)[0].replace("/", "_"),
                camera,
                scene.c2w[int(i)],
                f"{scene.image_root}/{record.name}",
            )
        )
    return views


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) at `eye` looking at `target`, image up along `up` (default +z)."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, dtype=np.float64)
    forward = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight along up
        right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    c2w[:3, 3] = eye
    return c2w


def camera_path(roi: np.ndarray, kind: str, frames: int, width: int, height: int, fov_deg: float = 60.0) -> list[View]:
    """An orbit around the ROI looking at its centre from above, or a fly-through across it at roof height
    looking ahead and down."""
    roi = np.asarray(roi, dtype=np.float64)
    centre, size = roi.mean(axis=0), roi[1] - roi[0]
    f = width / 2 / math.tan(math.radians(fov_deg) / 2)
    camera = Camera.pinhole(f, f, width / 2, height / 2, width, height)
    views = []
    for i in range(frames):
        s = i / frames
        if kind == "orbit":
            radius = 0.75 * float(np.linalg.norm(size[:2]))
            angle = 2 * math.pi * s
            eye = centre + np.array([radius * math.cos(angle), radius * math.sin(angle), 0.0])
            eye[2] = roi[1, 2] + 0.5 * float(size[:2].max())
            c2w = look_at(eye, centre)
        else:
            t = (i + 0.5) / frames
            eye = np.array([roi[0, 0] + t * size[0], centre[1], roi[1, 2] + 0.25 * size[2]])
            c2w = look_at(eye, eye + np.array([1.0, 0.0, -0.5]))
        views.append(View(f"path_{i:04d}", camera, c2w))
    return views


def rgb_png(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))


def depth_png(depth: np.ndarray, valid: np.ndarray) -> Image.Image:
    """Grey inverse depth scaled between the 1st and 99th percentile of valid pixels; black where invalid."""
    out = np.zeros(depth.shape, np.uint8)
    if valid.any():
        inverse = 1.0 / np.maximum(depth[valid], 1e-6)
        lo, hi = np.percentile(inverse, [1, 99])
        out[valid] = (np.clip((inverse - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(out)


def normal_png(normals: np.ndarray, valid: np.ndarray) -> Image.Image:
    """World normals (H, W, 3) as (n + 1) / 2; black where invalid."""
    unit = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    return Image.fromarray((((unit + 1) / 2 * valid[..., None]) * 255).round().astype(np.uint8))


def height_png(height: np.ndarray) -> Image.Image:
    """A DSM as grey (low dark, high bright) between its finite min and max; black where NaN."""
    finite = np.isfinite(height)
    out = np.zeros(height.shape, np.uint8)
    if finite.any():
        lo, hi = float(height[finite].min()), float(height[finite].max())
        out[finite] = (np.clip((height[finite] - lo) / max(hi - lo, 1e-12), 0, 1) * 254 + 1).round().astype(np.uint8)
    return Image.fromarray(out)


def gif_bytes(frames: list[Image.Image], seconds_per_frame: float = 0.1) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(seconds_per_frame * 1000), loop=0
    )
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- orthophoto and DSM -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrthoGrid:
    """Top-down pixels over the ROI: pixel (row, col) centre at (x0 + (col + 0.5) p, y1 - (row + 0.5) p)."""

    roi: np.ndarray  # (2, 3)
    pixel: float
    tile: int

    @property
    def shape(self) -> tuple[int, int]:
        size = self.roi[1, :2] - self.roi[0, :2]
        return max(1, math.ceil(size[1] / self.pixel)), max(1, math.ceil(size[0] / self.pixel))

    def tiles(self) -> list[tuple[int, int]]:
        rows, cols = self.shape
        return [(r, c) for r in range(0, rows, self.tile) for c in range(0, cols, self.tile)]

    def rays(self, row: int, col: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Vertical rays (down) through the tile at (row, col): origins, dirs (P, 3) float32 and its (h, w)."""
        rows, cols = self.shape
        h, w = min(self.tile, rows - row), min(self.tile, cols - col)
        ys = self.roi[1, 1] - (row + np.arange(h) + 0.5) * self.pixel
        xs = self.roi[0, 0] + (col + np.arange(w) + 0.5) * self.pixel
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        top = self.roi[1, 2] + self.pixel
        origins = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, top)], axis=-1)
        dirs = np.tile([0.0, 0.0, -1.0], (gx.size, 1))
        return torch.from_numpy(origins).float(), torch.from_numpy(dirs).float(), (h, w)


@dataclass
class OrthoShared:
    workspace: str
    field: CompositeField
    grid: OrthoGrid
    settings: RenderSettings


def ortho_tile(job: tuple[int, int], shared: OrthoShared) -> dict[str, Any]:
    """Render one orthophoto tile and store its colour and surface height (NaN where nothing is opaque)."""
    started = time.perf_counter()
    row, col = job
    origins, dirs, (h, w) = shared.grid.rays(row, col)
    out = render_rays(shared.field, origins, dirs, shared.settings)
    top = float(origins[0, 2])
    height = torch.where(out.opacity > 0.5, top - out.depth, torch.full_like(out.depth, float("nan")))
    root = merge_store.read_ortho(shared.workspace)
    root["rgb"][row : row + h, col : col + w] = (out.rgb.clamp(0, 1) * 255).round().byte().reshape(h, w, 3).numpy()
    root["dsm"][row : row + h, col : col + w] = height.reshape(h, w).numpy()
    return {"tile": [row, col], "pixels": h * w, "seconds": time.perf_counter() - started}


def render_ortho(
    workspace: str, field: CompositeField, grid: OrthoGrid, settings: RenderSettings, engine: Engine
) -> dict[str, Any]:
    """The orthophoto and DSM of the ROI into merge/ortho.zarr, tile by tile, with PNG previews."""
    rows, cols = grid.shape
    root = merge_store.open_ortho(workspace, rows, cols, grid.tile, grid.roi[[0, 1], [0, 1]], grid.pixel)
    started = time.perf_counter()
    jobs = grid.tiles()
    pixels = sum(
        result["pixels"] for _, result in engine.map(ortho_tile, jobs, OrthoShared(workspace, field, grid, settings))
    )
    seconds = time.perf_counter() - started
    stride = max(1, math.ceil(max(rows, cols) / PREVIEW_SIZE))
    merge_store.write_bytes_atomic(
        merge_store.merge_path(workspace, "renders", "ortho.png"),
        png_bytes(Image.fromarray(root["rgb"][::stride, ::stride])),
    )
    merge_store.write_bytes_atomic(
        merge_store.merge_path(workspace, "renders", "dsm.png"), png_bytes(height_png(root["dsm"][::stride, ::stride]))
    )
    root.attrs["complete"] = True
    return {
        "size": [rows, cols],
        "pixel": grid.pixel,
        "tiles": len(jobs),
        "rays_per_second": round(pixels / seconds, 1),
        "store": merge_store.ortho_path(workspace),
    }

"""Held-out views for validating one block: test-split images that see the block, and their rays through it.

A view keeps the pixels whose ray crosses the block's outer box, with near/far where it enters and leaves
the box, as training rays are bounded; PSNR and SSIM are measured on those pixels only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigscene.errors import InputError
from bigscene.render import Rays
from bigscene.scene import Scene, generate_rays
from bigscene.scene.images import load_image

log = logging.getLogger(__name__)

#: Pixel stride of the cheap pass that measures how much of an image a block covers.
_PROBE_STRIDE = 4
#: A view must show the block in at least this fraction of its pixels.
_MIN_COVERAGE = 0.05


@dataclass
class ValView:
    """One held-out view of a block. Pixels are row-major indices into the (height, width) image."""

    name: str
    image_index: int
    height: int
    width: int
    pixels: torch.Tensor  # (M,) int64 pixels whose ray crosses the block's box
    origins: torch.Tensor  # (M, 3) float32
    dirs: torch.Tensor  # (M, 3) float32
    near_far: torch.Tensor  # (M, 2) float32
    image: torch.Tensor  # (H, W, 3) float32 in [0, 1], the whole photo

    def rays(self) -> Rays:
        ids = torch.full((len(self.pixels),), -1, dtype=torch.long, device=self.origins.device)  # mean code
        return Rays.from_nearfar(self.origins, self.dirs, self.near_far, ids)


def box_segments(origins: torch.Tensor, dirs: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances (N,) of rays (N, 3) through box (2, 3), entry clamped to t >= 0; the ray
    crosses the box where exit > entry."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    ta, tb = (box[0] - origins) / safe, (box[1] - origins) / safe
    entry = torch.minimum(ta, tb).max(dim=-1).values.clamp(min=0.0)
    exit_ = torch.maximum(ta, tb).min(dim=-1).values
    return entry, exit_


def _image_rays(scene: Scene, index: int, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    camera = scene.camera_of(index)
    return generate_rays(camera, torch.as_tensor(scene.c2w[index]), pixels)


def coverage(scene: Scene, index: int, box: torch.Tensor) -> float:
    """Fraction of image `index`'s pixels (on a coarse lattice) whose ray crosses box (2, 3)."""
    camera = scene.camera_of(index)
    grid = camera.pixel_grid()
    grid = grid[(grid[:, 0] % _PROBE_STRIDE == 0) & (grid[:, 1] % _PROBE_STRIDE == 0)]
    origins, dirs = _image_rays(scene, index, grid)
    entry, exit_ = box_segments(origins, dirs, box)
    return float((exit_ > entry).float().mean())


def select_views(scene: Scene, outer: np.ndarray, count: int) -> list[int]:
    """Up to `count` test-split images that see the box `outer` (2, 3), those showing most of it first."""
    box = torch.as_tensor(outer, dtype=torch.float32)
    scored = [(coverage(scene, int(i), box), int(i)) for i in scene.split_indices("test")]
    seen = sorted((s for s in scored if s[0] >= _MIN_COVERAGE), key=lambda s: (-s[0], s[1]))
    return [index for _, index in seen[:count]]


def make_view(scene: Scene, index: int, outer: np.ndarray) -> ValView:
    """The view of image `index` over the box `outer` (2, 3): its crossing pixels' rays and the photo."""
    record = scene.images[index]
    camera = scene.camera_of(index)
    path = Path(scene.image_root) / record.name
    photo = load_image(path, background=scene.background)  # (H, W, 3) uint8
    if photo.shape[:2] != (camera.height, camera.width):
        raise InputError(path, f"image is {photo.shape[1]}x{photo.shape[0]}, its camera {camera.width}x{camera.height}")
    grid = camera.pixel_grid()  # (H W, 2) row-major
    origins, dirs = _image_rays(scene, index, grid)
    entry, exit_ = box_segments(origins, dirs, torch.as_tensor(outer, dtype=torch.float32))
    keep = torch.nonzero(exit_ > entry).squeeze(1)
    return ValView(
        name=Path(record.name).stem,
        image_index=index,
        height=camera.height,
        width=camera.width,
        pixels=keep,
        origins=origins[keep],
        dirs=dirs[keep],
        near_far=torch.stack([entry[keep], exit_[keep]], dim=-1),
        image=torch.tensor(photo, dtype=torch.float32) / 255.0,
    )


def block_views(scene: Scene, outer: np.ndarray, count: int) -> list[ValView]:
    """The held-out views validating a block; none (with a warning) when no test image sees it."""
    indices = select_views(scene, outer, count) if count else []
    if count and not indices:
        log.warning("no test-split image sees the block at %s; training without validation", outer.tolist())
    return [make_view(scene, i, outer) for i in indices]

"""An analytic test city for the partitioning tests: a ground square and box buildings, rendered by a tiny
ray caster into PNGs, with SfM-like points sampled on every surface and exact ray depth as ground truth.

The tests below check the helper itself (depth and images agree with the scene), so the partitioning
tests can trust it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bigscene.scene import Camera, ImageRecord, Scene, SparsePoints, generate_rays
from bigscene.scene.images import load_image
from bigscene.store import read_scene, write_scene

#: Buildings: (2, 3) min and max corners.
BUILDINGS = np.array(
    [
        [[-0.65, -0.6, 0.0], [-0.2, -0.1, 0.5]],
        [[0.2, 0.3, 0.0], [0.7, 0.8, 0.35]],
        [[0.1, -0.7, 0.0], [0.5, -0.3, 0.6]],
        [[-0.7, 0.3, 0.0], [-0.3, 0.7, 0.25]],
    ]
)
GROUND = 1.5  # the ground is the square |x|, |y| <= GROUND at z = 0
ROI = np.array([[-1.0, -1.0, -0.1], [1.0, 1.0, 0.7]])
POINT_SPACING = 0.04
SKY = np.array([135, 206, 235], dtype=np.uint8)
WIDTH, HEIGHT = 40, 30


def ray_depth(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance (N,) along unit rays (N, 3) to the first surface of the city; inf for sky."""
    o, d = origins.astype(np.float64), dirs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = -o[:, 2] / d[:, 2]
        hit = o[:, :2] + t_ground[:, None] * d[:, :2]
        on = (t_ground > 0) & np.all(np.abs(hit) <= GROUND, axis=1)
        depth = np.where(on, t_ground, np.inf)
        inv = 1.0 / np.where(d == 0, 1e-30, d)
        for lo, hi in BUILDINGS:
            ta, tb = (lo - o) * inv, (hi - o) * inv
            t0 = np.minimum(ta, tb).max(axis=1)
            t1 = np.maximum(ta, tb).min(axis=1)
            depth = np.where((t1 >= t0) & (t0 > 0), np.minimum(depth, t0), depth)
    return depth


def shade(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours: a checkered ground, flat-shaded buildings, a blue sky."""
    depth = ray_depth(origins, dirs)
    rgb = np.tile(SKY, (len(depth), 1))
    finite = np.isfinite(depth)
    p = origins[finite] + depth[finite, None] * dirs[finite]
    checker = (np.floor(p[:, 0] / 0.2) + np.floor(p[:, 1] / 0.2)) % 2
    base = np.where(p[:, 2:3] > 1e-4, [200, 120, 90], np.where(checker[:, None] > 0, [90, 90, 90], [160, 160, 160]))
    tint = 0.6 + 0.4 * np.clip(p[:, 2:3] / 0.6, 0, 1)
    rgb[finite] = np.clip(base * tint, 0, 255).astype(np.uint8)
    return rgb


def surface_points() -> np.ndarray:
    """(P, 3) points on a POINT_SPACING grid over the ground inside the ROI and every building face."""
    s = POINT_SPACING
    g = np.arange(ROI[0, 0], ROI[1, 0] + 1e-9, s)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    ground = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    keep = np.ones(len(ground), dtype=bool)
    for lo, hi in BUILDINGS:
        keep &= ~np.all((ground[:, :2] > lo[:2]) & (ground[:, :2] < hi[:2]), axis=1)
    faces = [ground[keep]]
    for lo, hi in BUILDINGS:
        for axis in range(3):
            others = [a for a in range(3) if a != axis]
            u = np.arange(lo[others[0]], hi[others[0]] + 1e-9, s)
            v = np.arange(lo[others[1]], hi[others[1]] + 1e-9, s)
            gu, gv = np.meshgrid(u, v, indexing="ij")
            for value in (lo[axis], hi[axis]):
                if axis == 2 and value == 0.0:
                    continue
                face = np.zeros((gu.size, 3))
                face[:, others[0]], face[:, others[1]], face[:, axis] = gu.ravel(), gv.ravel(), value
                faces.append(face)
    return np.concatenate(faces)


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world looking from position at target, z up in the world."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = position
    return c2w


def ring_poses(count: int) -> np.ndarray:
    """Cameras on a ring around the city, looking at it obliquely (the upper rows see sky)."""
    poses = []
    for i in range(count):
        angle = 2 * np.pi * i / count
        position = np.array([2.2 * np.cos(angle), 2.2 * np.sin(angle), 1.1 + 0.2 * (i % 2)])
        target = np.array([0.3 * np.cos(3 * angle), 0.3 * np.sin(2 * angle), 0.0])
        poses.append(look_at(position, target))
    return np.stack(poses)


def nadir_poses(count: int) -> np.ndarray:
    """Cameras looking straight down from z = 2 over x, y in [-0.8, 0.8]."""
    side = int(np.ceil(np.sqrt(count)))
    xs = np.linspace(-0.8, 0.8, side)
    positions = [np.array([x, y, 2.0]) for x in xs for y in xs][:count]
    return np.stack([look_at(p, p - [0.0, 0.0, 1.0]) for p in positions])


def make_city(root: Path, poses: np.ndarray | None = None, roi: np.ndarray = ROI, test_every: int = 6) -> Path:
    """Write the city as a workspace: WS/scene.zarr and WS/images/*.png. Returns WS."""
    poses = ring_poses(18) if poses is None else poses
    camera = Camera.pinhole(36.0, 36.0, WIDTH / 2, HEIGHT / 2, WIDTH, HEIGHT)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    records = []
    for i, c2w in enumerate(poses):
        origins, dirs = generate_rays(camera, torch.from_numpy(c2w), camera.pixel_grid())
        rgb = shade(origins.numpy(), dirs.numpy()).reshape(HEIGHT, WIDTH, 3)
        name = f"view_{i:03d}.png"
        Image.fromarray(rgb).save(images_dir / name)
        split = "test" if test_every and i % test_every == test_every - 1 else "train"
        records.append(ImageRecord(name, 0, i, split))
    xyz = surface_points()
    points = SparsePoints(
        xyz, np.full((len(xyz), 3), 128, np.uint8), np.full(len(xyz), 3, np.int32), np.zeros(len(xyz), np.float32)
    )
    scene = Scene({0: camera}, records, poses, points, str(images_dir), np.asarray(roi, dtype=np.float64))
    write_scene(root, scene)
    return root


def test_city_images_match_the_caster(tmp_path: Path) -> None:
    ws = make_city(tmp_path / "ws", ring_poses(4))
    scene = read_scene(ws)
    camera = scene.camera_of(1)
    origins, dirs = generate_rays(camera, torch.from_numpy(scene.c2w[1]), camera.pixel_grid())
    image = load_image(Path(scene.image_root) / scene.images[1].name)
    np.testing.assert_array_equal(image.reshape(-1, 3), shade(origins.numpy(), dirs.numpy()))
    depth = ray_depth(origins.numpy(), dirs.numpy())
    assert np.isinf(depth).any() and np.isfinite(depth).mean() > 0.5  # some sky, mostly city


def test_depth_lands_on_a_surface() -> None:
    origins = np.array([[0.0, 0.0, 2.0], [-0.4, -0.3, 2.0], [3.0, 0.0, 0.1]])
    dirs = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(ray_depth(origins, dirs)[:2], [2.0, 1.5])
    assert np.isinf(ray_depth(origins, dirs)[2])

"""SfM-like sparse points: surface points seen from the training cameras, with the noise, track lengths
and reprojection errors a real reconstruction would report.

Candidates are traced from random sub-pixel positions of random training views (features sit on visible
surfaces). A point's track is every training camera that sees it unoccluded (in frame, in front, facing
the surface, nothing on the segment to the camera); points seen by fewer than two are dropped. The
position gets Gaussian noise (`point_noise`, scene units), each observation Gaussian keypoint noise
(`pixel_noise`, pixels), and the error is the mean distance between the noisy point's projection and the
noisy keypoints, as COLMAP reports it.
"""

from __future__ import annotations

import numpy as np
import torch

from bigscene.scene.cameras import Camera, generate_rays
from bigscene.scene.model import SparsePoints
from bigscene.synth.render import RenderSettings, shade, sphere_trace, tonemap, trace_surface
from bigscene.synth.sdf import CitySDF

_LIFT = 0.02  # start visibility rays this far off the surface
_MIN_FACING = 0.1  # cosine between the surface normal and the view direction below which a view does not count
_PAIR_CHUNK = 1 << 22  # (point, camera) pairs projected at once


def _candidates(
    city: CitySDF, camera: Camera, c2w: np.ndarray, count: int, settings: RenderSettings, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Surface points (K, 3), normals (K, 3) and uint8 colours (K, 3) seen through random sub-pixel positions
    of random views c2w (V, 4, 4)."""
    rng = np.random.default_rng([seed, 6])
    dev = city.device
    view_of = np.sort(rng.integers(0, len(c2w), count))
    pixels = np.stack([rng.integers(0, camera.width, count), rng.integers(0, camera.height, count)], axis=-1)
    generator = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    origins, dirs = [], []
    for view in np.unique(view_of):
        sel = torch.from_numpy(pixels[view_of == view])
        o, d = generate_rays(camera, torch.from_numpy(c2w[view]).to(dev), sel, jitter=True, generator=generator)
        origins.append(o)
        dirs.append(d)
    origins_t, dirs_t = torch.cat(origins), torch.cat(dirs)
    cone = 0.5 / max(camera.focal)
    points, normals, colours = [], [], []
    for start in range(0, count, settings.chunk_rays):
        sl = slice(start, start + settings.chunk_rays)
        hits = trace_surface(city, origins_t[sl], dirs_t[sl], settings, cone)
        radiance = shade(city, hits, dirs_t[sl], settings, lit=False)[hits.hit]
        points.append(hits.points)
        normals.append(hits.normals)
        colours.append(tonemap(radiance))
    return torch.cat(points), torch.cat(normals), torch.cat(colours)


def _visible_pairs(
    city: CitySDF,
    camera: Camera,
    c2w: np.ndarray,
    points: torch.Tensor,
    normals: torch.Tensor,
    settings: RenderSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(point index, view index) of every pair where the view sees the point unoccluded."""
    dev = points.device
    poses = torch.from_numpy(c2w).to(dev, torch.float32)  # (V, 4, 4)
    rotation, centre = poses[:, :3, :3], poses[:, :3, 3]
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    views_per_chunk = max(1, _PAIR_CHUNK // max(len(points), 1))
    found_p, found_v = [], []
    for v0 in range(0, len(poses), views_per_chunk):
        rot, cen = rotation[v0 : v0 + views_per_chunk], centre[v0 : v0 + views_per_chunk]
        offset = cen[None, :, :] - points[:, None, :]  # (P, Vc, 3) point -> camera
        local = -torch.einsum("pvk,vkj->pvj", offset, rot)  # camera-frame coordinates of the point
        z = local[..., 2]
        u = fx * local[..., 0] / z + cx
        v = fy * local[..., 1] / z + cy
        dist = offset.norm(dim=-1)
        facing = (offset * normals[:, None, :]).sum(-1) > _MIN_FACING * dist
        ok = (z > 0.1) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height) & facing
        p_idx, v_idx = torch.nonzero(ok, as_tuple=True)
        found_p.append(p_idx)
        found_v.append(v_idx + v0)
    p_idx, v_idx = torch.cat(found_p), torch.cat(found_v)
    start = points[p_idx] + _LIFT * normals[p_idx]
    to_cam = centre[v_idx] - start
    length = to_cam.norm(dim=-1)
    dirs = to_cam / length[:, None]

    blocked = torch.zeros(len(p_idx), dtype=torch.bool, device=dev)
    for s in range(0, len(p_idx), settings.chunk_rays):
        sl = slice(s, s + settings.chunk_rays)
        near = torch.full_like(length[sl], _LIFT)
        _, hit, _ = sphere_trace(
            city.step, start[sl], dirs[sl], near, length[sl] - 0.05, settings.max_steps, settings.hit_eps * 10, 0.0
        )
        blocked[sl] = hit
    return p_idx[~blocked], v_idx[~blocked]


def sample_points(
    city: CitySDF,
    camera: Camera,
    c2w: np.ndarray,
    count: int,
    point_noise: float,
    pixel_noise: float,
    settings: RenderSettings,
    seed: int,
) -> SparsePoints:
    """Up to `count` sparse points seen by at least two of the views c2w (V, 4, 4) (the training views)."""
    if count == 0 or len(c2w) < 2:
        return SparsePoints.empty()
    points, normals, colours = _candidates(city, camera, c2w, count, settings, seed)
    p_idx, v_idx = _visible_pairs(city, camera, c2w, points, normals, settings)
    track = torch.bincount(p_idx, minlength=len(points))
    keep = (track >= 2).cpu().numpy()

    rng = np.random.default_rng([seed, 7])
    xyz_true = points.double().cpu().numpy()  # (K, 3)
    xyz = xyz_true + rng.normal(0.0, point_noise, xyz_true.shape) if point_noise > 0 else xyz_true.copy()
    pv = p_idx.cpu().numpy(), v_idx.cpu().numpy()
    w2c = np.linalg.inv(c2w)  # (V, 4, 4)

    def project(xyz_: np.ndarray) -> np.ndarray:
        local = np.einsum("nij,nj->ni", w2c[pv[1], :3, :3], xyz_[pv[0]]) + w2c[pv[1], :3, 3]
        return (local[:, :2] / local[:, 2:3]) * np.array(camera.focal) + np.array(camera.principal_point)

    observed = (
        project(xyz_true) + rng.normal(0.0, pixel_noise, (len(pv[0]), 2)) if pixel_noise > 0 else (project(xyz_true))
    )
    residual = np.linalg.norm(project(xyz) - observed, axis=1)
    error = np.bincount(pv[0], weights=residual, minlength=len(points)) / np.maximum(track.cpu().numpy(), 1)
    return SparsePoints(
        xyz=xyz[keep],
        rgb=colours.cpu().numpy()[keep],
        track_length=track.cpu().numpy()[keep].astype(np.int32),
        error=error[keep].astype(np.float32),
    )

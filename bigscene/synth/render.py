"""Sphere-tracing renderer for the city SDF, batched over chunks of rays, on any torch device.

A view gives rgb (uint8, supersampled), and from the rays through pixel centres: depth (the distance along
the unit ray direction, bigscene's "depth" convention; 0 where the ray escapes), world-space unit normals and
a hit mask. Rays come from `bigscene.scene.cameras.generate_rays`, so they follow the project's convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from bigscene.scene.cameras import Camera, generate_rays
from bigscene.synth.sdf import CitySDF
from bigscene.synth.texture import albedo, sky

Field = Callable[[torch.Tensor], torch.Tensor]  # points (N, 3) -> sdf (N,)
Marcher = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # points, dirs (N, 3) -> safe step (N,)

_NEAR = 0.05
_NORMAL_STEP = 1e-3
_REFINE_ITERS = 4
_ROUNDS = 3  # sphere-tracing rounds, for rays that skip past a silhouette they grazed
_LOOSE_EPS = 1e-3  # accepted |sdf| for a hit left unconverged after the last round
_SHADOW_STEPS = 48
_AO_STEPS = ((0.25, 0.4), (0.5, 0.3), (1.0, 0.2), (2.0, 0.1))  # (distance along the normal, weight)
_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


@dataclass(frozen=True)
class Lighting:
    """A sun, a sky for ambient light and escaping rays, and haze. Radiance is linear, before exposure."""

    sun_azimuth_deg: float = 35.0
    sun_elevation_deg: float = 52.0
    sun_rgb: tuple[float, float, float] = (1.25, 1.18, 1.05)
    sky_rgb: tuple[float, float, float] = (0.34, 0.40, 0.50)
    bounce_rgb: tuple[float, float, float] = (0.16, 0.15, 0.13)
    haze_distance: float = 900.0

    def sun_dir(self, device: torch.device) -> torch.Tensor:
        az, el = math.radians(self.sun_azimuth_deg), math.radians(self.sun_elevation_deg)
        return torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], device=device)


@dataclass(frozen=True)
class RenderSettings:
    supersample: int = 1  # ss x ss colour rays per pixel, box-filtered
    soft_shadows: bool = False
    ambient_occlusion: bool = True
    max_steps: int = 192
    chunk_rays: int = 65536
    hit_eps: float = 1e-4  # |sdf| a converged hit reaches, scene units
    seed: int = 0  # texture salt
    lighting: Lighting = Lighting()


@dataclass(frozen=True)
class Appearance:
    """Per-image photometric change: exposure and white-balance gains applied to linear radiance."""

    exposure: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class RenderOutput:
    """rgb (H, W, 3) uint8; depth (H, W) float32 ray distance, 0 where no hit; normals (H, W, 3) float32 unit
    world-space, 0 where no hit; mask (H, W) bool hit."""

    rgb: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    mask: np.ndarray


@dataclass
class Hits:
    """Result of tracing N rays: t (N,) ray distance, hit (N,) bool, and for hits: points, normals, ids."""

    t: torch.Tensor
    hit: torch.Tensor
    points: torch.Tensor  # (K, 3) surface points of the K hit rays, in ray order
    normals: torch.Tensor  # (K, 3)
    ids: torch.Tensor  # (K,) primitive ids
    footprint: torch.Tensor  # (K,) metres one pixel covers on the surface (texture filtering)


def ray_bounds(
    origins: torch.Tensor, dirs: torch.Tensor, z_top: float, far: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(near, far) (N,) clipped to the slab below z_top: nothing is above it, so tracing skips the empty air."""
    oz, dz = origins[:, 2], dirs[:, 2]
    down = dz < -1e-9
    near = torch.where(down & (oz > z_top), (oz - z_top) / (-dz).clamp_min(1e-9), torch.full_like(oz, _NEAR))
    near = near.clamp_min(_NEAR)
    up_far = torch.where(oz < z_top, (z_top - oz) / dz.clamp_min(1e-9), torch.zeros_like(oz))
    return near, torch.where(dz > 1e-9, up_far.clamp_max(far), torch.where(down | (oz <= z_top), far, 0.0))


def sphere_trace(
    march: Marcher,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    max_steps: int,
    eps: float,
    cone: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """March rays (N, 3) by safe steps until the step drops below max(eps, cone * t) or t passes far.

    Only the still-marching rays are evaluated at each step. Returns t (N,), hit (N,) bool and the step at
    the last point evaluated (N,); rays that run out of steps count as hits when close to a surface (stuck
    along a silhouette edge).
    """
    t = near.clone()
    hit = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    alive = torch.nonzero(t < far)[:, 0]
    last = torch.full_like(t, float("inf"))
    for _ in range(max_steps):
        if len(alive) == 0:
            break
        ta = t[alive]
        s = march(origins[alive] + ta[:, None] * dirs[alive], dirs[alive])
        last[alive] = s
        close = s < torch.clamp(cone * ta, min=eps)
        hit[alive[close]] = True
        move = ~close
        alive, ta, s = alive[move], ta[move], s[move]
        t[alive] = ta + s
        alive = alive[ta + s < far[alive]]
    if len(alive):
        hit[alive] = last[alive] < 0.05 * t[alive]
        t[alive] = t[alive] - last[alive]  # back to where `last` was evaluated
    return t, hit, last


def refine(
    field: Field, origins: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Secant iterations on f(t) = sdf(o + t d) from sphere-tracing hits t (N,), on the rays not yet within
    eps: converges on grazing surfaces where sphere tracing crawls. Steps are only taken where f falls along
    the ray, and are bounded. Returns the refined t (N,) and |f| there (N,)."""
    t = t.clone()
    f = field(origins + t[:, None] * dirs)
    t_prev = t - 1e-2
    f_prev = torch.full_like(t, float("nan"))
    todo = torch.nonzero(f.abs() > eps)[:, 0]
    if len(todo):
        f_prev[todo] = field(origins[todo] + t_prev[todo, None] * dirs[todo])
    for _ in range(_REFINE_ITERS):
        if len(todo) == 0:
            break
        t0, f0, t1, f1 = t_prev[todo], f_prev[todo], t[todo], f[todo]
        slope = (f1 - f0) / (t1 - t0)
        usable = (slope < -0.005) & torch.isfinite(slope)
        todo, t0, f0, t1, f1, slope = (x[usable] for x in (todo, t0, f0, t1, f1, slope))
        bound = 0.5 + 60 * f1.abs()
        t2 = t1 + (-f1 / slope).clamp(-bound, bound)
        f2 = field(origins[todo] + t2[:, None] * dirs[todo])
        better = f2.abs() < f1.abs()
        t_prev[todo], f_prev[todo] = torch.where(better, t1, t0), torch.where(better, f1, f0)
        t[todo], f[todo] = torch.where(better, t2, t1), torch.where(better, f2, f1)
        todo = todo[better & (f2.abs() > eps)]
    return t, f.abs()


def surface_normals(field: Field, points: torch.Tensor) -> torch.Tensor:
    """Unit SDF gradients (N, 3) by the tetrahedron rule (4 evaluations per point)."""
    k = _TETRA.to(points.device)
    f = field((points[:, None, :] + _NORMAL_STEP * k).reshape(-1, 3)).reshape(-1, 4)
    grad = f @ k
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def trace_surface(
    city: CitySDF,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    settings: RenderSettings,
    cone: float,
    extras: torch.Tensor | None = None,
) -> Hits:
    """Trace rays (N, 3) to the city surface: sphere tracing with ray-aware steps to within `cone` x distance
    (about half a pixel), secant refinement to `hit_eps`, then normals and primitive ids.

    Rays that stop beside a silhouette without converging (near-misses) skip a pixel footprint ahead and
    march on, up to `_ROUNDS` times; what is left is a hit only if within `_LOOSE_EPS` of the surface.
    """

    field = partial(city.sdf, extras=extras)
    march = partial(city.step, extras=extras)
    near, far = ray_bounds(origins, dirs, city.z_top, city.far)
    t = torch.zeros_like(near)
    hit = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    todo = torch.arange(len(t), device=t.device)
    start = near
    for round_ in range(_ROUNDS):
        o, d = origins[todo], dirs[todo]
        tr, hr, _ = sphere_trace(march, o, d, start, far[todo], settings.max_steps, settings.hit_eps, cone)
        sel = torch.nonzero(hr)[:, 0]
        th, residual = refine(field, o[sel], d[sel], tr[sel], settings.hit_eps)
        good = residual <= (settings.hit_eps if round_ < _ROUNDS - 1 else _LOOSE_EPS)
        t[todo[sel[good]]] = th[good]
        hit[todo[sel[good]]] = True
        again = sel[~good]
        todo = todo[again]
        if len(todo) == 0:
            break
        start = torch.maximum(tr[again], th[~good]) + 2.0 * cone * tr[again] + 1e-3
    idx = torch.nonzero(hit)[:, 0]
    points = origins[idx] + t[idx, None] * dirs[idx]
    normals = surface_normals(field, points)
    ids = city.evaluate(points, extras, with_id=True)[1]
    facing = (normals * dirs[idx]).sum(-1).abs().clamp_min(0.2)
    footprint = 2.0 * cone * t[idx] / facing
    return Hits(t=t, hit=hit, points=points, normals=normals, ids=ids, footprint=footprint)


def soft_shadow(field: Field, points: torch.Tensor, sun: torch.Tensor, z_top: float, k: float = 10.0) -> torch.Tensor:
    """Sun visibility in [0, 1] (N,) with penumbrae: the nearest approach of the shadow ray to the scene."""
    n = len(points)
    res = torch.ones(n, device=points.device)
    t = torch.full((n,), 0.05, device=points.device)
    t_max = ((z_top - points[:, 2]) / sun[2]).clamp_min(0.0)
    alive = torch.nonzero(t < t_max)[:, 0]
    for _ in range(_SHADOW_STEPS):
        if len(alive) == 0:
            break
        ta = t[alive]
        s = field(points[alive] + ta[:, None] * sun)
        res[alive] = torch.minimum(res[alive], (k * s / ta).clamp(0.0, 1.0))
        t[alive] = ta + s.clamp(0.03, 4.0)
        alive = alive[(res[alive] > 1e-3) & (t[alive] < t_max[alive])]
    return res * res * (3 - 2 * res)


def ambient_occlusion(field: Field, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Sky visibility in [0, 1] (N,) from SDF samples along the normal."""
    occ = torch.zeros(len(points), device=points.device)
    for dist, weight in _AO_STEPS:
        occ = occ + weight * ((dist - field(points + dist * normals)) / dist).clamp(0.0, 1.0)
    return (1.0 - occ).clamp(0.0, 1.0)


def shade(
    city: CitySDF,
    hits: Hits,
    dirs: torch.Tensor,
    settings: RenderSettings,
    extras: torch.Tensor | None = None,
    lit: bool = True,
) -> torch.Tensor:
    """Linear radiance (N, 3) of traced rays: Lambertian sun + sky ambient on hits, the sky elsewhere, haze.

    lit=False skips shadows and occlusion (for sparse-point colours)."""
    field = partial(city.sdf, extras=extras)
    light = settings.lighting
    dev = dirs.device
    sun = light.sun_dir(dev)
    out = sky(dirs, sun)
    if len(hits.points) == 0:
        return out
    p, n = hits.points, hits.normals
    base = albedo(city, p, n, hits.ids, hits.footprint, settings.seed)
    lift = p + 0.02 * n
    direct = (n @ sun).clamp_min(0.0)
    if lit and settings.soft_shadows:
        facing = torch.nonzero(direct > 0)[:, 0]
        direct[facing] = direct[facing] * soft_shadow(field, lift[facing], sun, city.z_top)
    ao = ambient_occlusion(field, lift, n) if lit and settings.ambient_occlusion else torch.ones_like(direct)
    up = n[:, 2:3]
    ambient = torch.tensor(light.sky_rgb, device=dev) * (0.6 + 0.4 * up) + torch.tensor(
        light.bounce_rgb, device=dev
    ) * (0.5 - 0.5 * up)
    radiance = base * (torch.tensor(light.sun_rgb, device=dev) * direct[:, None] + ambient * ao[:, None])
    haze = (1.0 - torch.exp(-hits.t[hits.hit] / light.haze_distance))[:, None]
    horizon = sky(torch.nn.functional.normalize(dirs[hits.hit] * torch.tensor([1.0, 1.0, 0.0], device=dev)), sun)
    out[hits.hit] = radiance * (1 - haze) + horizon * haze
    return out


def tonemap(radiance: torch.Tensor, appearance: Appearance | None = None) -> torch.Tensor:
    """Linear radiance (..., 3) -> uint8 sRGB-like values, after the image's exposure and white balance."""
    if appearance is not None:
        gains = torch.tensor(appearance.white_balance, device=radiance.device) * appearance.exposure
        radiance = radiance * gains
    display = (1.0 - torch.exp(-1.4 * radiance)).clamp(0.0, 1.0) ** (1.0 / 1.8)
    display = display * display * (3.0 - 2.0 * display) * 0.35 + display * 0.65  # a gentle S-curve
    return torch.round(display * 255.0).to(torch.uint8)


def render_view(
    city: CitySDF,
    camera: Camera,
    c2w: np.ndarray | torch.Tensor,
    settings: RenderSettings,
    appearance: Appearance | None = None,
    extras: torch.Tensor | None = None,
) -> RenderOutput:
    """Render one pinhole view of the city (camera-to-world c2w (4, 4), OpenCV) on the city's device."""
    dev = city.device
    pose = torch.as_tensor(np.asarray(c2w, dtype=np.float64)).to(dev)
    h, w, ss = camera.height, camera.width, settings.supersample
    extras = None if extras is None else extras.to(dev)
    origins, dirs = generate_rays(camera, pose, camera.pixel_grid().to(dev))  # (H*W, 3)
    depth = torch.zeros(h * w, device=dev)
    normals = torch.zeros(h * w, 3, device=dev)
    mask = torch.zeros(h * w, dtype=torch.bool, device=dev)
    colour = torch.zeros(h * w, 3, device=dev) if ss == 1 else None
    cone = 0.5 / max(camera.focal)
    for start in range(0, h * w, settings.chunk_rays):
        sl = slice(start, start + settings.chunk_rays)
        hits = trace_surface(city, origins[sl], dirs[sl], settings, cone, extras)
        depth[sl], mask[sl] = hits.t, hits.hit
        normals[sl][hits.hit] = hits.normals
        if colour is not None:
            colour[sl] = shade(city, hits, dirs[sl], settings, extras)
    if colour is None:  # supersampled colour: the camera scaled by ss has its pixel centres on an ss x ss grid
        fine = camera.scaled(ss, ss, w * ss, h * ss)
        f_origins, f_dirs = generate_rays(fine, pose, fine.pixel_grid().to(dev))
        fine_colour = torch.zeros(len(f_dirs), 3, device=dev)
        for start in range(0, len(f_dirs), settings.chunk_rays):
            sl = slice(start, start + settings.chunk_rays)
            hits = trace_surface(city, f_origins[sl], f_dirs[sl], settings, cone / ss, extras)
            fine_colour[sl] = shade(city, hits, f_dirs[sl], settings, extras)
        colour = fine_colour.reshape(h, ss, w, ss, 3).mean(dim=(1, 3)).reshape(-1, 3)
    return RenderOutput(
        rgb=tonemap(colour, appearance).reshape(h, w, 3).cpu().numpy(),
        depth=depth.reshape(h, w).cpu().numpy().astype(np.float32),
        normals=normals.reshape(h, w, 3).cpu().numpy().astype(np.float32),
        mask=mask.reshape(h, w).cpu().numpy(),
    )

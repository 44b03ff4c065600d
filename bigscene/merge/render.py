"""Volume rendering of the composite field: a ray crosses every block in one pass; images chunked by rays.

Foreground: the ray's segment inside the box around every block's outer box, sampled as the blocks train
(NeuS: uniform samples then up-sampling toward the zero level set of the composite SDF; NeRF: hierarchical
sampling of the composite density), shaded with the blended SDF/density, colour, normals and NeuS
sharpness. Background: each block's background field, blended by the blocks' ground-plane weights at the
point where the ray leaves the foreground, so the sky is seamless too; a constant colour without one.
Block-NeRF's image-space blending (`blend=image_space`) renders every block alone and blends the renders
with inverse-distance weights of the camera to each block's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bigscene.config import Config
from bigscene.merge.composite import CompositeField
from bigscene.merge.weights import falloff, normalise
from bigscene.render import (
    NeRFImportanceSampler,
    NeuSImportanceSampler,
    Rays,
    alpha_from_density,
    neus_alpha,
    render,
)
from bigscene.scene import Camera, generate_rays

#: Block-NeRF blends block renders with weights distance(camera, block centre)^-p.
IMAGE_SPACE_POWER = 4.0


@dataclass(frozen=True)
class RenderSettings:
    """How rays are sampled and batched (from the sampler the blocks trained with) and the fallback background."""

    num_samples: int = 64  # uniform samples per ray
    num_importance: int = 32  # importance samples per ray
    upsample_steps: int = 4  # NeuS up-sampling rounds
    base_inv_s: float = 64.0
    chunk_rays: int = 4096
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour where no block has a background model

    @classmethod
    def from_config(cls, config: Config) -> RenderSettings:
        s = config.sampler
        return cls(
            s.num_samples,
            s.num_importance,
            s.upsample_steps,
            s.base_inv_s,
            config.merge.chunk_rays,
            tuple(config.scene.background),
        )  # type: ignore[arg-type]


@dataclass
class RayResult:
    """Per-ray renders."""

    rgb: torch.Tensor  # (N, 3) over the background
    depth: torch.Tensor  # (N,) expected depth of the foreground
    opacity: torch.Tensor  # (N,)
    normals: torch.Tensor | None  # (N, 3) accumulated (not normalised) world normals; NeuS only

    @classmethod
    def cat(cls, parts: list[RayResult]) -> RayResult:
        normals = None if any(p.normals is None for p in parts) else torch.cat([p.normals for p in parts])
        return cls(
            torch.cat([p.rgb for p in parts]),
            torch.cat([p.depth for p in parts]),
            torch.cat([p.opacity for p in parts]),
            normals,
        )


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances (N,) of rays (N, 3) through the box (2, 3); entry >= 0, exit < entry on a miss."""
    lo = torch.as_tensor(box[0], dtype=origins.dtype, device=origins.device)
    hi = torch.as_tensor(box[1], dtype=origins.dtype, device=origins.device)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    a, b = (lo - origins) / safe, (hi - origins) / safe
    entry = torch.minimum(a, b).amax(dim=-1).clamp_min(0.0)
    return entry, torch.maximum(a, b).amin(dim=-1)


def background_weights(field: CompositeField, points: torch.Tensor) -> torch.Tensor:
    """Normalised ground-plane weights (N, B) of the blocks at points (N, 3) clamped into the blocks' footprint."""
    inner, outer = field.inner.to(points.device), field.outer.to(points.device)
    xy = torch.maximum(torch.minimum(points[:, :2], inner[:, 1, :2].amax(0)), inner[:, 0, :2].amin(0))
    return normalise(falloff(xy, inner[..., :2], outer[..., :2]))[0]


def render_background(field: CompositeField, rays: Rays, settings: RenderSettings) -> torch.Tensor:
    """Colour (N, 3) beyond each ray's far bound: the blocks' backgrounds, blended, or the constant colour."""
    weights = background_weights(field, rays.origins + rays.dirs * rays.far[:, None])  # (N, B)
    fallback = torch.tensor(settings.background, dtype=torch.float32, device=rays.origins.device)
    rgb = rays.origins.new_zeros(len(rays), 3)
    for b, block in enumerate(field.blocks):
        index = torch.nonzero(weights[:, b] > 0).squeeze(1)
        if index.numel() == 0:
            continue
        sub = rays[index]
        colour = block.background_rgb(Rays(*(v.to(block.device) for v in (sub.origins, sub.dirs, sub.near, sub.far))))
        colour = fallback.expand(len(index), 3) if colour is None else colour.to(rgb.device).float()
        rgb.index_add_(0, index, weights[index, b, None] * colour)
    return rgb


@torch.no_grad()
def render_rays(
    field: CompositeField, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings
) -> RayResult:
    """Render rays (N, 3) through the composite, `settings.chunk_rays` at a time."""
    parts = [
        _render_chunk(field, origins[s : s + settings.chunk_rays], dirs[s : s + settings.chunk_rays], settings)
        for s in range(0, len(origins), settings.chunk_rays)
    ]
    return RayResult.cat(parts)


def _render_chunk(
    field: CompositeField, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings
) -> RayResult:
    near, far = ray_box(origins, dirs, field.bounds)
    hit = far > near
    far = torch.where(hit, far, near + 1e-3)  # a miss keeps an empty segment; its background still renders
    rays = Rays(origins, dirs, near, far)
    n = len(rays)
    rgb, normals = origins.new_zeros(n, 3), origins.new_zeros(n, 3) if field.kind == "neus" else None
    depth, opacity = origins.new_zeros(n), origins.new_zeros(n)
    index = torch.nonzero(hit).squeeze(1)
    if index.numel():
        front = rays[index]
        if field.kind == "neus":
            sampler = NeuSImportanceSampler(
                settings.num_samples, settings.num_importance, settings.upsample_steps, settings.base_inv_s
            )
            samples = sampler(front, field.geometry)
            ray_indices, t, start = samples.points()
            out = field.evaluate(front.at(ray_indices, t), front.dirs[ray_indices])
            end = start + 1
            inv_s = (out.inv_s[start] + out.inv_s[end]) / 2
            alphas = neus_alpha(out.value[start], out.value[end], inv_s)
            shaded = render(
                samples, alphas, (out.rgb[start] + out.rgb[end]) / 2, (out.normals[start] + out.normals[end]) / 2
            )
            normals[index] = shaded.normals
        else:
            samples = NeRFImportanceSampler(settings.num_samples, settings.num_importance)(front, field.geometry)
            out = field.evaluate(samples.positions(front), front.dirs[samples.ray_indices])
            shaded = render(samples, alpha_from_density(out.value, samples.deltas), out.rgb)
        rgb[index], depth[index], opacity[index] = shaded.rgb, shaded.depth, shaded.opacity
    background = render_background(field, rays, settings)
    return RayResult(rgb + (1.0 - opacity)[:, None] * background, depth, opacity, normals)


@torch.no_grad()
def render_image_space(
    field: CompositeField, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings
) -> RayResult:
    """Block-NeRF: every block renders the rays that cross its outer box alone; the renders are blended with
    weights |camera - block centre|^-p. Rays that cross no block show the composite's background."""
    n = len(origins)
    total = origins.new_zeros(n)
    acc = RayResult(
        origins.new_zeros(n, 3),
        origins.new_zeros(n),
        origins.new_zeros(n),
        origins.new_zeros(n, 3) if field.kind == "neus" else None,
    )
    for b in range(len(field.blocks)):
        near, far = ray_box(origins, dirs, field.outer[b].numpy())
        index = torch.nonzero(far > near).squeeze(1)
        if index.numel() == 0:
            continue
        alone = render_rays(field.only(b), origins[index], dirs[index], settings)
        w = (origins[index] - field.centroids[b].to(origins)).norm(dim=-1).clamp_min(1e-6) ** -IMAGE_SPACE_POWER  # (M,)
        total.index_add_(0, index, w)
        acc.rgb.index_add_(0, index, w[:, None] * alone.rgb)
        acc.depth.index_add_(0, index, w * alone.depth)
        acc.opacity.index_add_(0, index, w * alone.opacity)
        if acc.normals is not None and alone.normals is not None:
            acc.normals.index_add_(0, index, w[:, None] * alone.normals)
    seen = total > 0
    scale = torch.where(seen, 1.0 / total.clamp_min(1e-30), torch.zeros_like(total))
    rgb = acc.rgb * scale[:, None]
    unseen = torch.nonzero(~seen).squeeze(1)
    if unseen.numel():
        near, far = ray_box(origins[unseen], dirs[unseen], field.bounds)
        far = torch.maximum(far, near + 1e-3)
        rgb[unseen] = render_background(field, Rays(origins[unseen], dirs[unseen], near, far), settings)
    normals = None if acc.normals is None else acc.normals * scale[:, None]
    return RayResult(rgb, acc.depth * scale, acc.opacity * scale, normals)


def render_view(
    field: CompositeField, camera: Camera, c2w: np.ndarray, settings: RenderSettings, image_space: bool = False
) -> dict[str, np.ndarray]:
    """One view: rgb (H, W, 3) float32 in [0, 1], depth (H, W), opacity (H, W), normals (H, W, 3) or absent."""
    origins, dirs = generate_rays(camera, torch.as_tensor(c2w, dtype=torch.float64), camera.pixel_grid())
    out = (render_image_space if image_space else render_rays)(field, origins, dirs, settings)
    h, w = camera.height, camera.width
    view = {
        "rgb": out.rgb.clamp(0, 1).reshape(h, w, 3).numpy(),
        "depth": out.depth.reshape(h, w).numpy(),
        "opacity": out.opacity.reshape(h, w).numpy(),
    }
    if out.normals is not None:
        view["normals"] = out.normals.reshape(h, w, 3).numpy()
    return view

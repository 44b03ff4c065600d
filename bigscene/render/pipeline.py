"""Rendering rays through a field: samples -> field -> volume rendering -> background composition.

Fields are duck-typed: a NeuS-like field maps (positions, dirs, appearance) to `NeuSOutput`, a NeRF-like field
to `NeRFOutput`; the background field (optional) adds colour beyond each ray's far bound and the sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigscene.errors import ConfigError
from bigscene.fields.background import BackgroundField
from bigscene.fields.nerf import NeRFField
from bigscene.fields.neus import NeuSField
from bigscene.render.samplers import background_samples
from bigscene.render.samples import Rays, RaySamples
from bigscene.render.volume import RenderOutput, alpha_from_density, composite, neus_alpha, render, section_sdf


@dataclass
class FieldRender:
    """A rendered batch: colour over the background, the foreground's maps, and what the losses need."""

    rgb: torch.Tensor  # (N, 3) foreground composed over background and sky
    foreground: RenderOutput  # the foreground alone: rgb, opacity, depth, normals, weights
    samples: RaySamples
    gradients: torch.Tensor | None = None  # (S, 3) SDF gradients at the samples (NeuS), for the eikonal term
    inv_s: torch.Tensor | None = None  # () NeuS inverse std


def per_sample(appearance: torch.Tensor | None, ray_indices: torch.Tensor) -> torch.Tensor | None:
    """Per-ray codes (N, A) -> per-sample codes (S, A)."""
    return None if appearance is None else appearance[ray_indices]


def render_background(
    background: BackgroundField,
    rays: Rays,
    appearance: torch.Tensor | None,
    num_samples: int,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Colour (N, 3) seen beyond each ray's far bound: the background field over the sky."""
    samples = background_samples(rays, num_samples, stratified=stratified, generator=generator)
    out = background(
        samples.positions(rays), rays.dirs[samples.ray_indices], per_sample(appearance, samples.ray_indices)
    )
    back = render(samples, alpha_from_density(out.density, samples.deltas), out.rgb, fixed=True)
    return composite(back, background.sky(rays.dirs, appearance))


def render_neus(
    field: NeuSField,
    rays: Rays,
    samples: RaySamples,
    appearance: torch.Tensor | None = None,
    background: BackgroundField | None = None,
    background_samples: int = 32,
    cos_anneal_ratio: float = 1.0,
    section: str = "ends",
    stratified: bool = False,
    generator: torch.Generator | None = None,
    fixed: bool = False,
) -> FieldRender:
    """NeuS volume rendering of rays at contiguous samples; appearance (N, A) per-ray codes.

    section "ends": the field runs at the interval ends (the points; one more per ray than intervals) and each
    interval's opacity comes from the SDF there, as the NeuS paper's discrete opacity; its colour and normal
    are the mean of its ends'. Exact whatever the spacing, so long gaps between guided samples stay clear.
    section "mid": the field runs at interval mid-points and the end SDFs are extrapolated with the gradient
    (NeuS's code, cos_anneal_ratio applies); cheaper per interval, but needs evenly dense samples.
    fixed: the (N, K) rendering path. Gradients (for the eikonal term) are those of every evaluated point.
    """
    if section == "ends":
        ray_indices, t, start = samples.points()
        out = field(rays.at(ray_indices, t), rays.dirs[ray_indices], per_sample(appearance, ray_indices))
        end = start + 1
        alphas = neus_alpha(out.sdf[start], out.sdf[end], out.inv_s)
        rgb, normals = (out.rgb[start] + out.rgb[end]) / 2, (out.normals[start] + out.normals[end]) / 2
    elif section == "mid":
        dirs = rays.dirs[samples.ray_indices]  # (S, 3)
        out = field(samples.positions(rays), dirs, per_sample(appearance, samples.ray_indices))
        sdf_start, sdf_end = section_sdf(out.sdf, (dirs * out.gradients).sum(-1), samples.deltas, cos_anneal_ratio)
        alphas, rgb, normals = neus_alpha(sdf_start, sdf_end, out.inv_s), out.rgb, out.normals
    else:
        raise ConfigError(f"NeuS section {section!r}: expected ends or mid")
    front = render(samples, alphas, rgb, normals, fixed=fixed)
    return FieldRender(
        rgb=_over_background(front, background, rays, appearance, background_samples, stratified, generator),
        foreground=front,
        samples=samples,
        gradients=out.gradients,
        inv_s=out.inv_s,
    )


def render_nerf(
    field: NeRFField,
    rays: Rays,
    samples: RaySamples,
    appearance: torch.Tensor | None = None,
    background: BackgroundField | None = None,
    background_samples: int = 32,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    fixed: bool = False,
) -> FieldRender:
    """NeRF volume rendering of rays at samples; appearance (N, A) per-ray codes; fixed: the (N, K) path."""
    out = field(samples.positions(rays), rays.dirs[samples.ray_indices], per_sample(appearance, samples.ray_indices))
    front = render(samples, alpha_from_density(out.density, samples.deltas), out.rgb, fixed=fixed)
    return FieldRender(
        rgb=_over_background(front, background, rays, appearance, background_samples, stratified, generator),
        foreground=front,
        samples=samples,
    )


def _over_background(
    front: RenderOutput,
    background: BackgroundField | None,
    rays: Rays,
    appearance: torch.Tensor | None,
    num_samples: int,
    stratified: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if background is None:
        return front.rgb
    return composite(front, render_background(background, rays, appearance, num_samples, stratified, generator))

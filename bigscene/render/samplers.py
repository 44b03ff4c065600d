"""Samplers in the spirit of nerfacc: rays + a field callable -> packed samples.

`field_fn` maps world positions (P, 3) to the SDF (NeuS) or the density (NeRF) (P,); samplers call it
without gradients. Every sampler returns `RaySamples` sorted by ray, then t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from bigscene.render.samples import Rays, RaySamples, point_order
from bigscene.render.volume import exclusive_cumsum, first_of_ray, neus_alpha, weights_from_alpha, weights_from_density

FieldFn = Callable[[torch.Tensor], torch.Tensor]


class Sampler(Protocol):
    """Places samples along rays, possibly probing the field."""

    def __call__(
        self, rays: Rays, field_fn: FieldFn, *, stratified: bool = False, generator: torch.Generator | None = None
    ) -> RaySamples: ...


def strata(
    num_rays: int, num: int, stratified: bool, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(N, num) fractions in [0, 1): (k + 0.5) / num, or (k + u) / num with u uniform when stratified."""
    k = torch.arange(num, device=device, dtype=torch.float32)
    if not stratified:
        return ((k + 0.5) / num).expand(num_rays, num)
    return (k + torch.rand(num_rays, num, device=device, generator=generator)) / num


def edge_fractions(
    num_rays: int, num: int, stratified: bool, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(N, num + 1) edges of num intervals tiling [0, 1]; inner edge k at (k - 0.5 + u) / num when stratified."""
    inner = (strata(num_rays, num - 1, stratified, generator, device) * (num - 1) + 0.5) / num
    return torch.cat([inner.new_zeros(num_rays, 1), inner, inner.new_ones(num_rays, 1)], dim=1)


def uniform_samples(
    rays: Rays, num_samples: int, stratified: bool = False, generator: torch.Generator | None = None
) -> RaySamples:
    """num_samples intervals per ray tiling [near, far]."""
    s = edge_fractions(len(rays), num_samples, stratified, generator, rays.origins.device)  # (N, K + 1)
    return RaySamples.from_fixed(rays.near[:, None] + (rays.far - rays.near)[:, None] * s)


def background_samples(
    rays: Rays,
    num_samples: int,
    horizon: float = 1e4,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> RaySamples:
    """num_samples intervals per ray beyond far, uniform in inverse depth from far to far * horizon."""
    s = edge_fractions(len(rays), num_samples, stratified, generator, rays.origins.device)  # (N, K + 1)
    far = rays.far[:, None]
    return RaySamples.from_fixed(1.0 / ((1.0 - s) / far + s / (far * horizon)))


def sample_pdf(
    samples: RaySamples,
    weights: torch.Tensor,
    num: int,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    padding: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-transform sampling of num points per ray from the piecewise-constant pdf ~ weights + padding.

    samples: packed intervals; weights (S,). Returns points (ray_indices (P,), t (P,)), for the rays that
    have samples. The per-ray CDFs are laid end to end as ray + cdf, so one searchsorted serves all rays.
    """
    ri = samples.ray_indices
    w = weights.detach().double() + padding
    total = w.new_zeros(samples.num_rays).index_add(0, ri, w)  # (N,)
    cdf_end = ((exclusive_cumsum(w, ri) + w) / total[ri]).clamp(max=1.0)  # (S,)
    keys = ri.double() + cdf_end  # globally non-decreasing
    counts = torch.bincount(ri, minlength=samples.num_rays)
    rays_with = torch.nonzero(counts > 0).squeeze(1)  # (M,)
    u = strata(rays_with.shape[0], num, stratified, generator, ri.device).double()  # (M, num)
    query_rays = rays_with.repeat_interleave(num)  # (M num,)
    j = torch.searchsorted(keys, (query_rays.double() + u.reshape(-1)), right=True)
    last = (torch.cumsum(counts, 0) - 1)[query_rays]
    j = torch.minimum(j, last)
    pdf = (w / total[ri])[j]
    frac = ((u.reshape(-1) - (cdf_end[j] - pdf)) / pdf).clamp(0.0, 1.0).to(samples.t_starts.dtype)
    t = samples.t_starts[j] + frac * (samples.t_ends[j] - samples.t_starts[j])
    return query_rays, t


def merge_points(samples: RaySamples, ray_indices: torch.Tensor, t: torch.Tensor) -> RaySamples:
    """Intervals between the union of samples' edges and new points (ray_indices (P,), t (P,))."""
    edge_rays, edge_t, _ = samples.points()
    return RaySamples.from_points(torch.cat([edge_rays, ray_indices]), torch.cat([edge_t, t]), samples.num_rays)


def neus_upsample(
    rays: Rays,
    samples: RaySamples,
    sdf_fn: FieldFn,
    num_importance: int,
    steps: int = 4,
    base_inv_s: float = 64.0,
) -> RaySamples:
    """NeuS hierarchical sampling: `steps` rounds of importance sampling from NeuS weights of the SDF at the
    current points, with inverse std base_inv_s * 2**round, so the samples close in on the zero crossing.

    As NeuS, each section's end SDFs are estimated from its mid-point SDF and the smaller of its own and the
    previous section's slope (clamped to [-1e3, 0]), which ignores sections leaving a surface.
    """
    ri, t, _ = samples.points()
    with torch.no_grad():
        sdf = sdf_fn(rays.at(ri, t)).float()
        per_step = [num_importance // steps + (i < num_importance % steps) for i in range(steps)]
        for step, num in enumerate(per_step):
            order = point_order(ri, t)
            ri, t, sdf = ri[order], t[order], sdf[order]
            if num == 0:
                continue
            same = ri[1:] == ri[:-1]  # (P - 1,) section i joins points i and i + 1
            sec_rays, t0, t1 = ri[:-1][same], t[:-1][same], t[1:][same]
            f0, f1 = sdf[:-1][same], sdf[1:][same]
            mid, dist = (f0 + f1) / 2, t1 - t0
            slope = (f1 - f0) / (dist + 1e-5)
            first = first_of_ray(sec_rays) == torch.arange(sec_rays.shape[0], device=ri.device)
            prev_slope = torch.where(first, torch.zeros_like(slope), torch.roll(slope, 1))
            slope = torch.minimum(prev_slope, slope).clamp(-1e3, 0.0)
            alpha = neus_alpha(mid - slope * dist / 2, mid + slope * dist / 2, base_inv_s * 2**step)
            weights, _ = weights_from_alpha(alpha, sec_rays)
            sections = RaySamples(sec_rays, t0, t1, samples.num_rays)
            new_rays, new_t = sample_pdf(sections, weights, num)
            ri, t = torch.cat([ri, new_rays]), torch.cat([t, new_t])
            sdf = torch.cat([sdf, sdf_fn(rays.at(new_rays, new_t)).float()])
    return RaySamples.from_points(ri, t, samples.num_rays)


def nerf_importance(
    rays: Rays,
    samples: RaySamples,
    density_fn: FieldFn,
    num_importance: int,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> RaySamples:
    """NeRF hierarchical sampling: samples ∪ num_importance points drawn from the density's weights."""
    with torch.no_grad():
        density = density_fn(samples.positions(rays)).float()
        weights, _ = weights_from_density(density, samples.deltas, samples.ray_indices)
        new_rays, new_t = sample_pdf(samples, weights, num_importance, stratified, generator)
    return merge_points(samples, new_rays, new_t)


@dataclass
class UniformSampler:
    num_samples: int

    def __call__(
        self, rays: Rays, field_fn: FieldFn, *, stratified: bool = False, generator: torch.Generator | None = None
    ) -> RaySamples:
        return uniform_samples(rays, self.num_samples, stratified, generator)


@dataclass
class NeuSImportanceSampler:
    """Uniform samples, then NeuS up-sampling with rising s."""

    num_samples: int
    num_importance: int
    steps: int = 4
    base_inv_s: float = 64.0

    def __call__(
        self, rays: Rays, field_fn: FieldFn, *, stratified: bool = False, generator: torch.Generator | None = None
    ) -> RaySamples:
        coarse = uniform_samples(rays, self.num_samples, stratified, generator)
        return neus_upsample(rays, coarse, field_fn, self.num_importance, self.steps, self.base_inv_s)


@dataclass
class NeRFImportanceSampler:
    """Uniform samples, then hierarchical sampling from the density's weights."""

    num_samples: int
    num_importance: int

    def __call__(
        self, rays: Rays, field_fn: FieldFn, *, stratified: bool = False, generator: torch.Generator | None = None
    ) -> RaySamples:
        coarse = uniform_samples(rays, self.num_samples, stratified, generator)
        return nerf_importance(rays, coarse, field_fn, self.num_importance, stratified, generator)

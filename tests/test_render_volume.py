"""Volume rendering against analytic truth: NeuS on a sphere SDF, NeRF on a constant-density slab, and the
packed layout against the fixed-count layout and a per-ray reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigscene.config import ModelConfig
from bigscene.fields import BackgroundField, NeRFField, NeuSField, NeuSOutput
from bigscene.render import (
    NeuSImportanceSampler,
    Rays,
    RaySamples,
    alpha_from_density,
    composite,
    neus_alpha,
    render,
    render_background,
    render_nerf,
    render_neus,
    uniform_samples,
    weights_from_alpha,
    weights_from_density,
)

pytestmark = pytest.mark.usefixtures("one_thread")


CENTRE = torch.tensor([0.1, -0.2, 0.05])
RADIUS = 0.5


class SphereField(nn.Module):
    """An exact NeuS-like field: the SDF of a sphere, its normals, colour from the normal, fixed s."""

    def __init__(self, inv_s: float) -> None:
        super().__init__()
        self.inv_s = torch.tensor(inv_s)

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return (x - CENTRE).norm(dim=-1) - RADIUS

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> NeuSOutput:
        normals = F.normalize(x - CENTRE, dim=-1)
        return NeuSOutput(self.sdf(x), normals, normals, 0.5 + 0.5 * normals, self.inv_s)


def sphere_rays(n: int, seed: int = 0) -> tuple[Rays, torch.Tensor]:
    """Rays from 2 units away towards the sphere's central disc, and their true hit depth (N,)."""
    g = torch.Generator().manual_seed(seed)
    origins = CENTRE + 2.0 * F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    targets = CENTRE + 0.3 * torch.rand(n, 1, generator=g) * F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dirs = F.normalize(targets - origins, dim=-1)
    oc = origins - CENTRE
    b = (oc * dirs).sum(-1)
    depth = -b - torch.sqrt(b * b - (oc * oc).sum(-1) + RADIUS**2)
    return Rays(origins, dirs, torch.full((n,), 0.5), torch.full((n,), 3.5)), depth


def test_neus_sphere_depth_opacity_normals() -> None:
    rays, depth = sphere_rays(300)
    samples = uniform_samples(rays, 512)
    field = SphereField(inv_s=1000.0)
    sdf0 = field.sdf(rays.at(samples.ray_indices, samples.t_starts))
    sdf1 = field.sdf(rays.at(samples.ray_indices, samples.t_ends))
    alphas = neus_alpha(sdf0, sdf1, field.inv_s)
    normals = field(samples.positions(rays), rays.dirs[samples.ray_indices]).normals
    out = render(samples, alphas, torch.zeros(len(samples), 3), normals)

    assert ((out.depth - depth).abs() / depth).max() < 0.01
    # the weights sum to the opacity, which is 1 - the transmittance past the last sample
    per_ray = torch.zeros(len(rays)).index_add(0, samples.ray_indices, out.weights)
    torch.testing.assert_close(per_ray, out.opacity)
    final = torch.prod(1.0 - samples.fixed(alphas), dim=1)
    torch.testing.assert_close(out.opacity, 1.0 - final, atol=1e-5, rtol=0)
    assert out.opacity.min() > 0.99
    hit = rays.origins + depth[:, None] * rays.dirs
    cos = (F.normalize(out.normals, dim=-1) * F.normalize(hit - CENTRE, dim=-1)).sum(-1)
    assert cos.min() > 0.999


@pytest.mark.parametrize("section", ["ends", "mid"])
def test_neus_pipeline_with_upsampling_on_a_sphere(section: str) -> None:
    """Through render_neus (SDF at section ends, or NeuS's mid-point estimate), samples from NeuS up-sampling."""
    rays, depth = sphere_rays(200, seed=1)
    field = SphereField(inv_s=400.0)
    samples = NeuSImportanceSampler(num_samples=64, num_importance=64, steps=4)(rays, field.sdf)
    assert len(samples) == 200 * 128  # 65 uniform edges + 64 new points per ray
    result = render_neus(field, rays, samples, section=section)
    out = result.foreground
    assert ((out.depth - depth).abs() / depth).max() < 0.01
    assert out.opacity.min() > 0.99
    hit = rays.origins + depth[:, None] * rays.dirs
    torch.testing.assert_close(result.rgb, 0.5 + 0.5 * F.normalize(hit - CENTRE, dim=-1), atol=0.02, rtol=0)


def test_nerf_constant_density_slab_matches_beer_lambert() -> None:
    """Each interval gets the slab's density averaged over it (its exact optical depth), so the renderer's
    transmittance must be exactly exp(-sigma * path length inside the slab so far)."""
    sigma, z0, z1 = 3.0, -0.2, 0.3
    n = 64
    g = torch.Generator().manual_seed(2)
    dirs = F.normalize(torch.cat([0.6 * torch.randn(n, 2, generator=g), -torch.ones(n, 1)], dim=1), dim=-1)
    origins = torch.cat([torch.rand(n, 2, generator=g), torch.ones(n, 1)], dim=1)  # z = 1, looking down
    rays = Rays(origins, dirs, torch.zeros(n), torch.full((n,), 4.0))
    samples = uniform_samples(rays, 256, stratified=True, generator=g)
    cos = -rays.dirs[samples.ray_indices, 2]

    def path_in_slab(t: torch.Tensor) -> torch.Tensor:  # length of [0, t] along the ray inside z0 <= z <= z1
        z = 1.0 - t * cos
        return (z1 - z.clamp(z0, z1)) / cos

    inside = path_in_slab(samples.t_ends) - path_in_slab(samples.t_starts)
    density = sigma * inside / samples.deltas
    weights, transmittance = weights_from_density(density, samples.deltas, samples.ray_indices)
    torch.testing.assert_close(transmittance, torch.exp(-sigma * path_in_slab(samples.t_starts)), atol=1e-6, rtol=0)

    colour = torch.tensor([0.2, 0.7, 0.4])
    out = render(samples, alpha_from_density(density, samples.deltas), colour.expand(len(samples), 3))
    through = 1.0 - torch.exp(-sigma * (z1 - z0) / -rays.dirs[:, 2])
    torch.testing.assert_close(out.opacity, through, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rgb, through[:, None] * colour, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, out.weights, atol=1e-6, rtol=0)


def random_packed(counts: list[int], seed: int = 3) -> tuple[RaySamples, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    t = torch.rand(len(ray_indices), generator=g) * 3.0
    samples = RaySamples.from_points(ray_indices, t, len(counts))
    alphas = torch.rand(len(samples), generator=g) ** 3
    rgb = torch.rand(len(samples), 3, generator=g)
    return samples, alphas, rgb


def test_packed_matches_a_per_ray_reference() -> None:
    counts = [0, 1, 2, 7, 30, 5, 0, 64, 3]
    samples, alphas, rgb = random_packed(counts)
    out = render(samples, alphas, rgb, rgb)
    for ray in range(len(counts)):
        mask = samples.ray_indices == ray
        a = alphas[mask]
        t = torch.cumprod(torch.cat([torch.ones(1), 1.0 - a]), 0)[:-1]
        w = t * a
        torch.testing.assert_close(out.weights[mask], w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.rgb[ray], (w[:, None] * rgb[mask]).sum(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.opacity[ray], w.sum(), atol=1e-6, rtol=1e-5)


def test_packed_and_fixed_count_agree() -> None:
    g = torch.Generator().manual_seed(4)
    n, k = 40, 33
    edges = torch.sort(torch.rand(n, k + 1, generator=g) * 4.0, dim=1).values
    samples = RaySamples.from_fixed(edges)
    alphas = (torch.rand(n * k, generator=g) ** 2).requires_grad_(True)
    rgb = torch.rand(n * k, 3, generator=g).requires_grad_(True)
    results = []
    for fixed in (False, True):
        out = render(samples, alphas, rgb, rgb, fixed=fixed)
        loss = out.rgb.square().sum() + out.depth.sum() + out.opacity.sum()
        results.append((out, torch.autograd.grad(loss, (alphas, rgb))))
    (packed, packed_grads), (fixed_out, fixed_grads) = results
    for name in ("rgb", "opacity", "depth", "normals", "weights"):
        torch.testing.assert_close(getattr(packed, name), getattr(fixed_out, name), atol=1e-6, rtol=1e-6)
    for a, b in zip(packed_grads, fixed_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_field_renderers_packed_and_fixed_agree() -> None:
    torch.manual_seed(0)
    config = ModelConfig(hash_levels=4, hash_table_log2=10, finest_resolution=64, appearance_dim=4, hidden_dim=32)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    rays, _ = sphere_rays(32, seed=5)
    samples = uniform_samples(rays, 24)
    appearance = torch.randn(32, 4)
    neus, nerf = NeuSField(config, aabb), NeRFField(config, aabb)
    background = BackgroundField(config, torch.zeros(3), 1.8)
    for fn, field in ((render_neus, neus), (render_nerf, nerf)):
        packed = fn(field, rays, samples, appearance, background)
        fixed = fn(field, rays, samples, appearance, background, fixed=True)
        torch.testing.assert_close(packed.rgb, fixed.rgb, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(packed.foreground.depth, fixed.foreground.depth, atol=1e-5, rtol=1e-6)


def test_background_and_sky_composition() -> None:
    torch.manual_seed(0)
    config = ModelConfig(appearance_dim=0, background="contraction")
    background = BackgroundField(config, torch.zeros(3), 1.0)
    rays, _ = sphere_rays(16)
    colour = render_background(background, rays, None, num_samples=16)
    assert colour.shape == (16, 3) and bool(((colour >= 0) & (colour <= 1)).all())
    samples = uniform_samples(rays, 8)
    front = render(samples, torch.full((len(samples),), 0.1), torch.ones(len(samples), 3))
    torch.testing.assert_close(composite(front, colour), front.rgb + (1 - front.opacity)[:, None] * colour)
    alphas = torch.full((16, 8), 0.1)
    weights, transmittance = weights_from_alpha(alphas)
    torch.testing.assert_close(transmittance[:, -1], torch.full((16,), 0.9**7))

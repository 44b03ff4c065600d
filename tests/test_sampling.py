"""Samplers: uniform, inverse-transform, NeuS up-sampling, voxel marching, surface-guided sampling and the
voxel update, against analytic scenes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigscene.config import SamplerConfig
from bigscene.errors import ConfigError
from bigscene.render import (
    NeRFImportanceSampler,
    NeuSImportanceSampler,
    Rays,
    RaySamples,
    SparseVoxels,
    SurfaceCache,
    SurfaceGuidedSampler,
    UniformSampler,
    first_surface,
    make_sampler,
    march_voxels,
    neus_upsample,
    sample_pdf,
    uniform_samples,
    update_voxels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


SPHERE_CENTRE = torch.tensor([0.1, 0.0, -0.1])


def scene_sdf(p: torch.Tensor) -> torch.Tensor:
    """A sphere resting near a ground plane: exact SDF of the union."""
    return torch.minimum((p - SPHERE_CENTRE).norm(dim=-1) - 0.35, p[:, 2] + 0.4)


def scene_rays(n: int, seed: int = 0) -> Rays:
    """Rays from above, 2.2 units from the origin, towards the ground under the sphere: all hit the scene."""
    g = torch.Generator().manual_seed(seed)
    up = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    up[:, 2] = up[:, 2].abs() + 0.3
    origins = 2.2 * F.normalize(up, dim=-1)
    targets = torch.cat([torch.rand(n, 2, generator=g) * 1.2 - 0.6, torch.full((n, 1), -0.4)], dim=1)
    return Rays(origins, F.normalize(targets - origins, dim=-1), torch.full((n,), 0.3), torch.full((n,), 4.0))


def dense_voxels(per_axis: int = 8) -> SparseVoxels:
    """Every voxel of a per_axis^3 grid over [-1, 1]^3: the coarsest seed."""
    ijk = torch.stack(torch.meshgrid(*[torch.arange(per_axis)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    return SparseVoxels(torch.tensor([-1.0, -1.0, -1.0]), 2.0 / per_axis, ijk)


def test_uniform_samples_tile_near_to_far() -> None:
    rays = scene_rays(10)
    for stratified in (False, True):
        samples = uniform_samples(rays, 16, stratified=stratified, generator=torch.Generator().manual_seed(0))
        assert samples.samples_per_ray == 16 and len(samples) == 160
        edges = torch.cat([samples.fixed(samples.t_starts), samples.fixed(samples.t_ends)[:, -1:]], dim=1)
        torch.testing.assert_close(edges[:, 0], rays.near)
        torch.testing.assert_close(edges[:, -1], rays.far)
        assert bool((edges[:, 1:] >= edges[:, :-1]).all())
        torch.testing.assert_close(samples.deltas.view(10, 16).sum(1), rays.far - rays.near)


def test_sample_pdf_follows_the_weights() -> None:
    # ray 0: weights 1 and 3 on [0, 1) and [1, 2); ray 1 has no samples; ray 2: all weight on [5, 6)
    samples = RaySamples(
        torch.tensor([0, 0, 2, 2, 2]),
        torch.tensor([0.0, 1.0, 4.0, 5.0, 6.0]),
        torch.tensor([1.0, 2.0, 5.0, 6.0, 7.0]),
        num_rays=3,
    )
    weights = torch.tensor([1.0, 3.0, 0.0, 2.0, 0.0])
    rays, t = sample_pdf(samples, weights, 1000, padding=0.0)
    assert set(rays.tolist()) == {0, 2}
    t0 = t[rays == 0]
    assert abs(float((t0 < 1.0).float().mean()) - 0.25) < 0.002
    # deterministic strata are the quantiles: u = (k + 0.5) / 1000
    u = (torch.arange(1000) + 0.5) / 1000
    expected = torch.where(u < 0.25, u / 0.25, 1.0 + (u - 0.25) / 0.75)
    torch.testing.assert_close(t0, expected, atol=1e-5, rtol=0)
    t2 = t[rays == 2]
    assert bool(((t2 >= 5.0) & (t2 <= 6.0)).all())


def test_neus_upsampling_closes_in_on_the_surface() -> None:
    rays = scene_rays(200, seed=1)
    coarse = uniform_samples(rays, 32)
    fine = neus_upsample(rays, coarse, scene_sdf, num_importance=32, steps=4)
    assert len(fine) == 200 * (33 + 32 - 1)
    positions = fine.positions(rays)
    new = ~torch.isin(fine.t_starts, coarse.t_starts)
    near_surface = scene_sdf(positions[new]).abs() < 0.05
    assert float(near_surface.float().mean()) > 0.9
    assert float((scene_sdf(coarse.positions(rays)).abs() < 0.05).float().mean()) < 0.1
    assert bool((fine.t_ends >= fine.t_starts).all())


def test_nerf_importance_samples_concentrate_in_the_dense_region() -> None:
    rays = scene_rays(50, seed=2)

    def density(p: torch.Tensor) -> torch.Tensor:  # an opaque slab just above the ground
        return 50.0 * ((p[:, 2] > -0.4) & (p[:, 2] < -0.3)).float()

    samples = NeRFImportanceSampler(num_samples=32, num_importance=64)(rays, density)
    z = samples.positions(rays)[:, 2]
    assert float(((z > -0.45) & (z < -0.25)).float().mean()) > 0.5
    assert float(((z > -0.45) & (z < -0.25)).float().mean()) > 2 * float(
        ((uniform_samples(rays, 96).positions(rays)[:, 2] + 0.35).abs() < 0.1).float().mean()
    )


def test_voxel_marching_is_exact() -> None:
    voxels = SparseVoxels(torch.tensor([-1.0, -1.0, -1.0]), 0.125, torch.randint(0, 16, (600, 3)))
    g = torch.Generator().manual_seed(3)
    origins = torch.rand(40, 3, generator=g) * 4.0 - 2.0
    dirs = F.normalize(torch.randn(40, 3, generator=g), dim=-1)
    dirs[:4] = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])  # axis-parallel
    origins[:4] = torch.tensor([[-1.5, 0.06, 0.31], [0.2, 1.5, -0.4], [0.44, -0.7, -1.5], [-1.2, -1.2, 0.1]])
    rays = Rays(origins, dirs, torch.full((40,), 0.1), torch.full((40,), 3.5))
    hits = march_voxels(rays, voxels)
    assert bool((hits.t_starts >= 0.1).all() and (hits.t_ends <= 3.5).all())
    inside = voxels.contains(voxels.voxel_of(hits.positions(rays)))
    assert bool(inside.all())
    t = torch.linspace(0.1, 3.5, 40001)
    for ray in range(40):
        occupied = voxels.contains(voxels.voxel_of(origins[ray] + t[:, None] * dirs[ray]))
        brute = float(occupied.float().mean()) * 3.4
        marched = float(hits.deltas[hits.ray_indices == ray].sum())
        assert abs(brute - marched) < 2e-3, (ray, brute, marched)
    # chunking does not change the result
    chunked = march_voxels(rays, voxels, max_cells=200)
    torch.testing.assert_close(chunked.t_starts, hits.t_starts)
    torch.testing.assert_close(chunked.ray_indices, hits.ray_indices)


def test_voxel_update_keeps_a_thin_shell_that_covers_the_surface() -> None:
    voxels = dense_voxels()
    for _ in range(3):
        voxels = update_voxels(voxels, scene_sdf, threshold=1.0, subdivide=2, dilate=1)
    assert voxels.voxel_size == pytest.approx(2.0 / 64)
    assert bool((scene_sdf(voxels.centres()).abs() < voxels.voxel_size).all())
    g = torch.Generator().manual_seed(4)
    on_sphere = SPHERE_CENTRE + 0.35 * F.normalize(torch.randn(2000, 3, generator=g), dim=-1)
    on_ground = torch.cat([torch.rand(2000, 2, generator=g) * 1.9 - 0.95, torch.full((2000, 1), -0.4)], dim=1)
    surface = torch.cat([on_sphere, on_ground])
    surface = surface[scene_sdf(surface).abs() < 1e-6]  # points on the union's boundary
    assert bool(voxels.contains(voxels.voxel_of(surface)).all())
    # the same resolution again (subdivide=1) is a fixed point for an exact SDF
    again = update_voxels(voxels, scene_sdf, threshold=1.0, subdivide=1)
    assert len(again) == len(voxels)


def test_surface_guided_samples_hug_the_surface() -> None:
    rays = scene_rays(1000)
    voxels = dense_voxels()
    for _ in range(4):
        voxels = update_voxels(voxels, scene_sdf, threshold=1.0, subdivide=2, dilate=1)
    band = 0.025  # 1.25% of the scene's size
    config = SamplerConfig(surface_band=0.02)
    sampler = make_sampler(config, "neus", voxels)
    assert isinstance(sampler, SurfaceGuidedSampler)
    guided = sampler(rays, scene_sdf)
    uniform = UniformSampler(64)(rays, scene_sdf)
    guided_near = (scene_sdf(guided.positions(rays)).abs() < band).float().mean()
    uniform_near = (scene_sdf(uniform.positions(rays)).abs() < band).float().mean()
    assert guided_near >= 0.8, float(guided_near)
    assert uniform_near < 0.1, float(uniform_near)
    per_ray = len(guided) / len(rays)
    assert per_ray <= config.voxel_samples + config.surface_samples + config.guided_uniform_samples


def test_first_surface_and_cache() -> None:
    rays = scene_rays(100, seed=5)
    dense = uniform_samples(rays, 4000)
    ri, t, _ = dense.points()
    depth = first_surface(ri, t, scene_sdf(rays.at(ri, t)), len(rays))
    assert bool(torch.isfinite(depth).all())
    assert float(scene_sdf(rays.at(torch.arange(100), depth)).abs().max()) < 1e-3

    voxels = dense_voxels(16)
    calls = []

    def counting_sdf(p: torch.Tensor) -> torch.Tensor:
        calls.append(p.shape[0])
        return scene_sdf(p)

    cache = SurfaceCache(num_rays=1000)
    sampler = SurfaceGuidedSampler(voxels, cache=cache)
    ids = torch.arange(100) * 7
    first = sampler(rays, counting_sdf, ray_ids=ids)
    assert len(calls) == 1 and bool(torch.isfinite(cache.get(ids)).all())
    second = sampler(rays, counting_sdf, ray_ids=ids)
    assert len(calls) == 1  # the cached surface needs no SDF evaluation
    torch.testing.assert_close(first.t_starts, second.t_starts)
    sampler.update(scene_sdf)
    assert bool(torch.isnan(cache.depth).all()) and sampler.voxels.voxel_size == pytest.approx(2.0 / 32)
    sampler.min_voxel_size = 0.1  # no finer than this: the next update re-evaluates at the same size
    sampler.update(scene_sdf)
    assert sampler.voxels.voxel_size == pytest.approx(2.0 / 32)


def test_make_sampler() -> None:
    assert isinstance(make_sampler(SamplerConfig(kind="uniform"), "neus"), UniformSampler)
    assert isinstance(make_sampler(SamplerConfig(kind="importance"), "neus"), NeuSImportanceSampler)
    assert isinstance(make_sampler(SamplerConfig(kind="importance"), "nerf"), NeRFImportanceSampler)
    with pytest.raises(ConfigError, match="voxels"):
        make_sampler(SamplerConfig(kind="surface_guided"), "neus")
    with pytest.raises(ConfigError, match="neus"):
        make_sampler(SamplerConfig(kind="surface_guided"), "nerf", dense_voxels())
    with pytest.raises(ConfigError):
        SamplerConfig(kind="occupancy")

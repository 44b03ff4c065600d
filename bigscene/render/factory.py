"""The sampler a config asks for."""

from __future__ import annotations

from bigscene.config import SamplerConfig
from bigscene.errors import ConfigError
from bigscene.render.guided import SparseVoxels, SurfaceCache, SurfaceGuidedSampler
from bigscene.render.samplers import NeRFImportanceSampler, NeuSImportanceSampler, Sampler, UniformSampler


def make_sampler(
    config: SamplerConfig, model_kind: str, voxels: SparseVoxels | None = None, cache: SurfaceCache | None = None
) -> Sampler:
    """uniform | importance (NeuS up-sampling, or NeRF hierarchical) | surface_guided (needs the block's voxels)."""
    if config.kind == "uniform":
        return UniformSampler(config.num_samples)
    if config.kind == "importance":
        if model_kind == "nerf":
            return NeRFImportanceSampler(config.num_samples, config.num_importance)
        return NeuSImportanceSampler(
            config.num_samples, config.num_importance, config.upsample_steps, config.base_inv_s
        )
    if model_kind != "neus":
        raise ConfigError("sampler.kind=surface_guided needs an SDF: model.kind=neus")
    if voxels is None:
        raise ConfigError("sampler.kind=surface_guided needs the block's surface voxels")
    return SurfaceGuidedSampler(
        voxels,
        voxel_samples=config.voxel_samples,
        surface_samples=config.surface_samples,
        uniform_samples=config.guided_uniform_samples,
        surface_band=config.surface_band,
        cache=cache,
        voxel_threshold=config.voxel_threshold,
        voxel_subdivide=config.voxel_subdivide,
        min_voxel_size=config.min_voxel_size,
        voxel_dilate=config.voxel_dilate,
    )

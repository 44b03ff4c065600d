"""Samplers and volume rendering for NeuS and NeRF fields, on packed samples.

Plain PyTorch; knows nothing of Lightning, Ray or Zarr.
"""

from bigscene.render.factory import make_sampler
from bigscene.render.guided import (
    SparseVoxels,
    SurfaceCache,
    SurfaceGuidedSampler,
    first_surface,
    march_voxels,
    update_voxels,
)
from bigscene.render.pipeline import FieldRender, render_background, render_nerf, render_neus
from bigscene.render.samplers import (
    NeRFImportanceSampler,
    NeuSImportanceSampler,
    Sampler,
    UniformSampler,
    background_samples,
    merge_points,
    nerf_importance,
    neus_upsample,
    sample_pdf,
    uniform_samples,
)
from bigscene.render.samples import Rays, RaySamples
from bigscene.render.volume import (
    RenderOutput,
    accumulate,
    alpha_from_density,
    composite,
    exclusive_cumsum,
    neus_alpha,
    render,
    section_sdf,
    transmittance_from_alpha,
    weights_from_alpha,
    weights_from_density,
)

__all__ = [
    "FieldRender",
    "NeRFImportanceSampler",
    "NeuSImportanceSampler",
    "Rays",
    "RaySamples",
    "RenderOutput",
    "Sampler",
    "SparseVoxels",
    "SurfaceCache",
    "SurfaceGuidedSampler",
    "UniformSampler",
    "accumulate",
    "alpha_from_density",
    "background_samples",
    "composite",
    "exclusive_cumsum",
    "first_surface",
    "make_sampler",
    "march_voxels",
    "merge_points",
    "nerf_importance",
    "neus_alpha",
    "neus_upsample",
    "render",
    "render_background",
    "render_nerf",
    "render_neus",
    "sample_pdf",
    "section_sdf",
    "transmittance_from_alpha",
    "uniform_samples",
    "update_voxels",
    "weights_from_alpha",
    "weights_from_density",
]

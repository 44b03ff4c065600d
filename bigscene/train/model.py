"""One block's model without Lightning: field, appearance codes, background, sampler and surface voxels.

This is what training optimises and what the merger loads (bigscene.train.export). Its state dict holds
the weights, the block's boxes and the current surface voxels, so the exported file alone rebuilds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bigscene.config import ModelConfig, SamplerConfig
from bigscene.fields import AppearanceEmbedding, BackgroundField, NeRFField, NeuSField
from bigscene.render import (
    FieldRender,
    Rays,
    SparseVoxels,
    SurfaceCache,
    SurfaceGuidedSampler,
    make_sampler,
    render_nerf,
    render_neus,
)

#: Smallest ray bound, as a fraction of the radius of the block's bounding sphere.
_MIN_DEPTH = 1e-2


class BlockModel(nn.Module):
    """Renders rays through one block: foreground field over [near, far], background beyond, the sky behind.

    inner, outer: (2, 3) boxes (the field spans the outer box; the merger blends by the inner one);
    voxels: the sparse surface voxels the surface-guided sampler places samples in (updated in training).
    """

    voxel_coords: torch.Tensor  # (V, 3) int64
    voxel_origin: torch.Tensor  # (3,) float32
    voxel_size: torch.Tensor  # () float64

    def __init__(
        self,
        model: ModelConfig,
        sampler: SamplerConfig,
        inner: np.ndarray | torch.Tensor,
        outer: np.ndarray | torch.Tensor,
        num_images: int,
        voxels: SparseVoxels,
    ) -> None:
        super().__init__()
        self.model_config, self.sampler_config = model, sampler
        outer_t = torch.as_tensor(np.asarray(outer), dtype=torch.float32)
        self.register_buffer("inner", torch.as_tensor(np.asarray(inner), dtype=torch.float32))  # (2, 3)
        self.register_buffer("outer", outer_t)  # (2, 3)
        self.field: NeuSField | NeRFField = (NeuSField if model.kind == "neus" else NeRFField)(model, outer_t)
        self.appearance = AppearanceEmbedding(num_images, model.appearance_dim) if model.appearance_dim else None
        centre, radius = outer_t.mean(dim=0), float((outer_t[1] - outer_t[0]).norm() / 2)
        self.min_depth = _MIN_DEPTH * radius
        self.background = BackgroundField(model, centre, radius) if model.background != "none" else None
        self.register_buffer("voxel_coords", voxels.coords.long().cpu())
        self.register_buffer("voxel_origin", voxels.origin.float().cpu())
        self.register_buffer("voxel_size", torch.tensor(voxels.voxel_size, dtype=torch.float64))
        self.sampler = make_sampler(sampler, model.kind, voxels)
        self.register_load_state_dict_post_hook(BlockModel._after_load)

    @property
    def is_neus(self) -> bool:
        return self.model_config.kind == "neus"

    def field_fn(self, x: torch.Tensor) -> torch.Tensor:
        """SDF (NeuS) or density (NeRF) (P,) at world points x (P, 3): what samplers probe."""
        return self.field.sdf(x) if isinstance(self.field, NeuSField) else self.field.density(x)

    def voxels(self) -> SparseVoxels:
        return SparseVoxels(self.voxel_origin, float(self.voxel_size), self.voxel_coords)

    def sync_sampler(self) -> None:
        """Point the surface-guided sampler at the voxel buffers (after a move to another device or a load)."""
        if isinstance(self.sampler, SurfaceGuidedSampler):
            self.sampler.voxels = self.voxels()

    @staticmethod
    def _after_load(module: BlockModel, _keys: Any) -> None:
        module.sync_sampler()

    def _apply(self, fn: Any, recurse: bool = True) -> BlockModel:
        super()._apply(fn, recurse)
        self.sync_sampler()
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        coords = state_dict.get(prefix + "voxel_coords")
        if coords is not None:  # the voxel count changes in training: take the saved one's shape
            self.voxel_coords = torch.empty_like(coords, device=self.voxel_coords.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def attach_cache(self, num_rays: int) -> None:
        """Cache each training ray's surface depth, indexed by its position in the block's ray store."""
        if isinstance(self.sampler, SurfaceGuidedSampler):
            self.sampler.cache = SurfaceCache(num_rays, device=self.voxel_coords.device)

    @torch.no_grad()
    def update_voxels(self) -> int:
        """Refresh the surface voxels from the current SDF (surface-guided sampling); returns the voxel count.

        An update that would leave no voxel (the SDF has no surface near them yet) keeps the current ones.
        """
        if not isinstance(self.sampler, SurfaceGuidedSampler):
            return len(self.voxel_coords)
        before = self.sampler.voxels
        self.sampler.update(self.field_fn)
        if len(self.sampler.voxels) == 0:
            self.sampler.voxels = before
            return len(before)
        updated = self.sampler.voxels
        self.voxel_coords = updated.coords
        self.voxel_size = torch.tensor(updated.voxel_size, dtype=torch.float64, device=self.voxel_size.device)
        return len(updated)

    def bounded(self, rays: Rays) -> Rays:
        """Rays with near and far raised to at least min_depth: a sky ray's empty segment may sit at depth 0 (its
        origin above the block), where the background's inverse-depth samples would be undefined."""
        near, far = rays.near.clamp(min=self.min_depth), rays.far.clamp(min=self.min_depth)
        return Rays(rays.origins, rays.dirs, near, far, rays.image_ids)

    def codes(self, rays: Rays) -> torch.Tensor | None:
        """Per-ray appearance codes (N, A); rays without an image id (or id -1) get the mean code."""
        if self.appearance is None:
            return None
        ids = rays.image_ids if rays.image_ids is not None else torch.full_like(rays.near, -1, dtype=torch.long)
        return self.appearance(ids)

    def render(
        self,
        rays: Rays,
        *,
        stratified: bool = False,
        ray_ids: torch.Tensor | None = None,
        cos_anneal_ratio: float = 1.0,
    ) -> FieldRender:
        """Render rays (N) (bounded first); ray_ids (N,) index the surface cache (the block store's rays)."""
        cfg = self.sampler_config
        rays = self.bounded(rays)
        if isinstance(self.sampler, SurfaceGuidedSampler):
            samples = self.sampler(rays, self.field_fn, stratified=stratified, ray_ids=ray_ids)
        else:
            samples = self.sampler(rays, self.field_fn, stratified=stratified)
        common = {
            "appearance": self.codes(rays),
            "background": self.background,
            "background_samples": cfg.background_samples,
            "stratified": stratified,
        }
        if isinstance(self.field, NeuSField):
            return render_neus(
                self.field, rays, samples, cos_anneal_ratio=cos_anneal_ratio, section=cfg.neus_section, **common
            )
        return render_nerf(self.field, rays, samples, **common)

    @torch.no_grad()
    def render_image(self, rays: Rays, chunk: int = 8192) -> dict[str, torch.Tensor]:
        """Evaluation rendering in chunks of rays: rgb (N, 3), depth (N,), opacity (N,), normals (N, 3) (NeuS)."""
        parts: dict[str, list[torch.Tensor]] = {"rgb": [], "depth": [], "opacity": [], "normals": []}
        for start in range(0, len(rays), chunk):
            out = self.render(rays[start : start + chunk])
            parts["rgb"].append(out.rgb.float())
            parts["depth"].append(out.foreground.depth.float())
            parts["opacity"].append(out.foreground.opacity.float())
            if out.foreground.normals is not None:
                parts["normals"].append(out.foreground.normals.float())
        return {k: torch.cat(v) for k, v in parts.items() if v}

"""Convergence (not quality): a small NeuS field fitted to an analytic textured sphere for a few hundred CPU
steps lowers its colour loss and its SDF error at points of the true surface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigscene.config import ModelConfig
from bigscene.fields import NeuSField, eikonal_loss
from bigscene.render import Rays, render_neus, uniform_samples

CENTRE = torch.tensor([0.05, -0.05, 0.0])
RADIUS = 0.6


pytestmark = pytest.mark.usefixtures("one_thread")


def texture(p: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.4 * torch.sin(3.0 * (p - CENTRE))


def sphere_batch(n: int, generator: torch.Generator) -> tuple[Rays, torch.Tensor]:
    """Rays towards the sphere from 2.5 units away, bounded by the unit sphere, and their true colours (N, 3)."""
    origins = CENTRE + 2.5 * F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    offsets = torch.rand(n, 1, generator=generator) * F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    dirs = F.normalize(CENTRE + 0.5 * offsets - origins, dim=-1)
    oc = origins - CENTRE
    b = (oc * dirs).sum(-1)
    depth = -b - torch.sqrt(b * b - (oc * oc).sum(-1) + RADIUS**2)
    bo = (origins * dirs).sum(-1)
    half_chord = torch.sqrt(bo * bo - (origins * origins).sum(-1) + 1.0)
    rays = Rays(origins, dirs, -bo - half_chord, -bo + half_chord)
    return rays, texture(origins + depth[:, None] * dirs)


def test_neus_fit_lowers_colour_loss_and_sdf_error() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        hash_levels=8,
        hash_table_log2=14,
        base_resolution=8,
        finest_resolution=128,
        hidden_dim=32,
        num_layers=1,
        feature_dim=8,
        color_hidden_dim=32,
        color_layers=1,
        appearance_dim=0,
        background="none",
        init_radius=0.5,
    )
    field = NeuSField(config, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    optimiser = torch.optim.Adam(field.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    surface = CENTRE + RADIUS * F.normalize(torch.randn(2000, 3, generator=g), dim=-1)
    val_rays, val_rgb = sphere_batch(256, torch.Generator().manual_seed(99))

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            rgb = render_neus(field, val_rays, uniform_samples(val_rays, 64)).rgb
            return float(F.mse_loss(rgb, val_rgb)), float(field.sdf(surface).abs().mean())

    colour_before, sdf_before = evaluate()
    for _ in range(200):
        rays, target = sphere_batch(64, g)
        result = render_neus(field, rays, uniform_samples(rays, 32, stratified=True, generator=g))
        loss = F.mse_loss(result.rgb, target) + 0.1 * eikonal_loss(result.gradients)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    colour_after, sdf_after = evaluate()
    assert colour_after < 0.05 * colour_before, (colour_before, colour_after)
    assert sdf_after < 0.7 * sdf_before, (sdf_before, sdf_after)

"""Training losses of one block, as plain functions of rendered tensors (the eikonal term is in bigscene.fields)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigscene.fields import BackgroundField
from bigscene.render import Rays, background_samples

#: Rendered normals count for the Manhattan prior on rays at least this opaque.
_OPAQUE = 0.5
#: A normal is "ground" when its z exceeds this, a "facade" when |z| is below _FACADE_Z.
_GROUND_Z = 0.8
_FACADE_Z = 0.2


def rgb_loss(rgb: torch.Tensor, target: torch.Tensor, kind: str = "l1", delta: float = 0.1) -> torch.Tensor:
    """Colour loss between rendered rgb (N, 3) and target (N, 3) in [0, 1]: l1 or huber (quadratic below delta)."""
    if kind == "huber":
        return F.huber_loss(rgb.float(), target, delta=delta)
    return (rgb.float() - target).abs().mean()


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def sfm_loss(sdf: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Weak surface term: mean |sdf| (P,) at SfM points, in units of the block's half-extent `scale`.

    L1 rather than L2, so the few badly triangulated points pull no harder than the rest.
    """
    return sdf.float().abs().mean() / scale


def sky_loss(
    background: BackgroundField, rays: Rays, appearance: torch.Tensor | None, num_samples: int
) -> torch.Tensor:
    """Background-field density along sky rays (N), so that the sky colour alone explains them: the mean of
    log(1 + tau), tau a ray's optical depth -log(1 - opacity). Unlike the opacity it never saturates: the
    background's intervals reach far * 1e4, where any density makes a ray opaque. appearance: (N, A) codes."""
    samples = background_samples(rays, num_samples)
    codes = None if appearance is None else appearance[samples.ray_indices]
    density = background(samples.positions(rays), rays.dirs[samples.ray_indices], codes).density  # (N K,)
    tau = samples.fixed(density.float() * samples.deltas).sum(dim=-1)  # (N,)
    return torch.log1p(tau).mean()


def manhattan_loss(normals: torch.Tensor, opacity: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Manhattan-world prior on rendered normals (N, 3) of opaque rays (opacity (N,)): ground-like normals
    point up (+z); facade-like (near-horizontal) normals align with one of two horizontal axes at `angle`
    (a learned scalar, radians) and `angle` + 90 degrees. Zero (still a function of `angle`) without such rays.
    """
    n = F.normalize(normals.float(), dim=-1)
    opaque = opacity.detach() > _OPAQUE
    ground = opaque & (n[:, 2] > _GROUND_Z)
    facade = opaque & (n[:, 2].abs() < _FACADE_Z)
    horizontal = F.normalize(n[facade, :2], dim=-1)  # (F, 2)
    axes = torch.stack([torch.cos(angle), torch.sin(angle), -torch.sin(angle), torch.cos(angle)]).view(2, 2)
    facade_term = 1.0 - (horizontal @ axes.T).abs().max(dim=-1).values  # (F,) 1 - |cos| to the nearer axis
    terms = torch.cat([1.0 - n[ground, 2], facade_term])
    if terms.numel() == 0:
        return angle * 0.0
    return terms.mean() + angle * 0.0

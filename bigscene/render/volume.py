"""Volume rendering on packed samples (and on a fixed count per ray, with identical results).

Every function takes per-sample tensors either packed, shape (S, ...) with `ray_indices` (S,) sorted by ray,
or in the fixed-count layout (N, K, ...) with `ray_indices=None`. Per-ray prefix sums run in float64 (a global
cumulative sum minus each ray's start in the packed layout), so both layouts agree to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigscene.render.samples import RaySamples

_ALPHA_MAX = 1.0 - 1e-7  # opacities are clamped below 1 so that log(1 - alpha) stays finite


@dataclass
class RenderOutput:
    """Per-ray results of volume rendering (foreground, or foreground composed over the background)."""

    rgb: torch.Tensor  # (N, 3)
    opacity: torch.Tensor  # (N,) sum of the weights = 1 - transmittance past the last sample
    depth: torch.Tensor  # (N,) expected depth sum(w t) / opacity (0 where the opacity is 0)
    normals: torch.Tensor | None  # (N, 3) sum(w n), not normalised
    weights: torch.Tensor  # (S,) or (N, K) per-sample weights, for importance sampling and losses


def exclusive_cumsum(values: torch.Tensor, ray_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the earlier samples of the same ray: packed (S,) with ray_indices, or (N, K) along K."""
    v = values.double()
    if ray_indices is None:
        return (torch.cumsum(v, dim=1) - v).to(values.dtype)
    exclusive = torch.cumsum(v, dim=0) - v
    return (exclusive - exclusive[first_of_ray(ray_indices)]).to(values.dtype)


def first_of_ray(ray_indices: torch.Tensor) -> torch.Tensor:
    """(S,) index of the first sample of each sample's ray, for sorted ray_indices (S,); no host sync."""
    position = torch.arange(ray_indices.shape[0], device=ray_indices.device)
    starts = torch.ones_like(ray_indices, dtype=torch.bool)
    starts[1:] = ray_indices[1:] != ray_indices[:-1]
    return torch.cummax(torch.where(starts, position, 0), dim=0).values


def transmittance_from_alpha(alphas: torch.Tensor, ray_indices: torch.Tensor | None = None) -> torch.Tensor:
    """T_i = prod_{j < i} (1 - alpha_j) along each ray; same layout as alphas."""
    return torch.exp(exclusive_cumsum(torch.log1p(-alphas.clamp(0.0, _ALPHA_MAX)), ray_indices))


def weights_from_alpha(
    alphas: torch.Tensor, ray_indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights w_i = T_i alpha_i and transmittances T_i, in the layout of alphas."""
    transmittance = transmittance_from_alpha(alphas, ray_indices)
    return transmittance * alphas, transmittance


def alpha_from_density(density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """NeRF opacity of an interval of length delta: 1 - exp(-sigma delta)."""
    return -torch.expm1(-density * deltas)


def weights_from_density(
    density: torch.Tensor, deltas: torch.Tensor, ray_indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and transmittances of densities: T_i = exp(-sum_{j < i} sigma_j delta_j) (Beer-Lambert)."""
    tau = density * deltas
    transmittance = torch.exp(-exclusive_cumsum(tau, ray_indices))
    return transmittance * -torch.expm1(-tau), transmittance


def neus_alpha(sdf_starts: torch.Tensor, sdf_ends: torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """NeuS discrete opacity of a section from the SDF at its ends (NeuS eq. 13), in float32.

    alpha = max((Phi_s(f_start) - Phi_s(f_end)) / Phi_s(f_start), 0), Phi_s the logistic CDF of scale 1 / s;
    NeuS's 1e-5 keeps it defined where Phi_s(f_start) underflows.
    """
    with torch.autocast(device_type=sdf_starts.device.type, enabled=False):
        prev_cdf = torch.sigmoid(sdf_starts.float() * inv_s)
        next_cdf = torch.sigmoid(sdf_ends.float() * inv_s)
        return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def section_sdf(
    sdf: torch.Tensor, dir_dot_grad: torch.Tensor, deltas: torch.Tensor, cos_anneal_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeuS's estimate of the SDF at a section's ends from its mid-point SDF and directional derivative.

    cos_anneal_ratio rises from 0 to 1 early in training: at 0 the slope is softened so that rays leaving
    a surface (positive slope) still see some of it, at 1 only the true (negative) slope is used.
    """
    iter_cos = -(
        torch.relu(-dir_dot_grad * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + torch.relu(-dir_dot_grad) * cos_anneal_ratio
    )
    half = iter_cos * deltas * 0.5
    return sdf - half, sdf + half


def accumulate(
    weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor | None = None, num_rays: int = 0
) -> torch.Tensor:
    """Per-ray sums of weights * values: (N, C) for values (S, C) / (N, K, C), (N,) for values None."""
    v = weights if values is None else weights[..., None] * values
    if ray_indices is None:
        return v.sum(dim=1)
    return v.new_zeros(num_rays, *v.shape[1:]).index_add(0, ray_indices, v)


def render(
    samples: RaySamples,
    alphas: torch.Tensor,
    rgb: torch.Tensor,
    normals: torch.Tensor | None = None,
    fixed: bool = False,
) -> RenderOutput:
    """Composite per-sample alphas (S,), colours (S, 3) and optional normals (S, 3) along rays.

    With `fixed`, samples must have a fixed count per ray and the (N, K) path runs instead of the packed one.
    """
    n = samples.num_rays
    if fixed:
        a, c, t = samples.fixed(alphas), samples.fixed(rgb), samples.fixed(samples.t_mids)
        nrm, idx = (None if normals is None else samples.fixed(normals)), None
    else:
        a, c, t, nrm, idx = alphas, rgb, samples.t_mids, normals, samples.ray_indices
    weights, _ = weights_from_alpha(a, idx)
    opacity = accumulate(weights, None, idx, n)
    depth = accumulate(weights, t[..., None], idx, n)[:, 0] / opacity.clamp(min=1e-10)
    return RenderOutput(
        rgb=accumulate(weights, c, idx, n),
        opacity=opacity,
        depth=depth,
        normals=None if nrm is None else accumulate(weights, nrm, idx, n),
        weights=weights.reshape(-1) if fixed else weights,
    )


def composite(foreground: RenderOutput, background_rgb: torch.Tensor) -> torch.Tensor:
    """Colour (N, 3) of the foreground over a background colour (N, 3) seen through its transmittance."""
    return foreground.rgb + (1.0 - foreground.opacity)[:, None] * background_rgb

"""Blending weights of blocks at points: smooth partition of unity, and Mega-NeRF's inverse distance.

Partition of unity: a block's raw weight is a product over axes of a C2 falloff (smootherstep) that is 1 in
its inner box and falls to 0 across the overlap band, reaching 0 at its outer box; raw weights are
normalised to sum to 1 wherever some block covers the point. Every raw weight is continuous (C2) and
vanishes where its block stops, so blended values are continuous across every seam by construction.

Inverse distance (Mega-NeRF): weights 1 / |x - centroid| over the blocks whose outer box holds x and whose
centroid is within `margin` times the nearest one's distance; these jump where a block enters or leaves.
"""

from __future__ import annotations

import torch


def smootherstep(t: torch.Tensor) -> torch.Tensor:
    """6 t^5 - 15 t^4 + 10 t^3 on [0, 1] (clamped): 0 and 1 at the ends with zero first and second derivatives."""
    t = t.clamp(0.0, 1.0)
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def falloff(x: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """Raw partition-of-unity weights (N, B) of points x (N, 3) for boxes inner, outer (B, 2, 3)."""
    p = x[:, None, :]  # (N, 1, 3)
    band_lo = (inner[:, 0] - outer[:, 0])[None]  # (1, B, 3) band widths; a zero width is a hard edge
    band_hi = (outer[:, 1] - inner[:, 1])[None]
    below = torch.where(band_lo > 0, (p - outer[None, :, 0]) / band_lo.clamp_min(1e-12), 1.0)  # (N, B, 3)
    above = torch.where(band_hi > 0, (outer[None, :, 1] - p) / band_hi.clamp_min(1e-12), 1.0)
    inside_outer = ((p >= outer[None, :, 0]) & (p <= outer[None, :, 1])).all(dim=-1)  # (N, B)
    per_axis = smootherstep(torch.minimum(below, above))  # 1 inside the inner box, 0 at the outer box
    return per_axis.prod(dim=-1) * inside_outer


def normalise(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (N, B) summing to 1 per point where any raw weight is positive, and that coverage (N,) bool."""
    total = raw.sum(dim=-1)
    covered = total > 0
    return raw / torch.where(covered, total, torch.ones_like(total))[:, None], covered


def partition_of_unity(x: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised smooth weights (N, B) and coverage (N,) of points x (N, 3)."""
    return normalise(falloff(x, inner, outer))


def inverse_distance(
    x: torch.Tensor, outer: torch.Tensor, centroids: torch.Tensor, margin: float, dims: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mega-NeRF's weights (N, B) and coverage (N,): 1 / distance to the centroids (B, 3) over the first `dims`
    axes (2: ground-plane clusters), among blocks whose outer box holds x and whose centroid distance is at most
    `margin` times the smallest such distance."""
    p = x[:, None, :]
    inside = ((p >= outer[None, :, 0]) & (p <= outer[None, :, 1])).all(dim=-1)  # (N, B)
    distance = (x[:, None, :dims] - centroids[None, :, :dims]).norm(dim=-1)  # (N, B)
    distance = torch.where(inside, distance, torch.full_like(distance, float("inf")))
    nearest = distance.min(dim=-1, keepdim=True).values
    keep = inside & (distance <= margin * nearest)
    return normalise(torch.where(keep, 1.0 / (distance + 1e-8), torch.zeros_like(distance)))

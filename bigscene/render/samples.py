"""Rays and packed ray samples: the data every sampler returns and every renderer consumes.

Samples are packed (nerfacc style): a flat list of intervals [t_start, t_end) with the index of the ray each
belongs to, grouped by ray and ordered by t within a ray, so rays may carry different numbers of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rays:
    """A batch of rays; near/far bound the segment the foreground field owns."""

    origins: torch.Tensor  # (N, 3) float32
    dirs: torch.Tensor  # (N, 3) float32, unit length
    near: torch.Tensor  # (N,)
    far: torch.Tensor  # (N,)
    image_ids: torch.Tensor | None = None  # (N,) int, global image index (appearance codes)

    @classmethod
    def from_nearfar(
        cls, origins: torch.Tensor, dirs: torch.Tensor, nearfar: torch.Tensor, image_ids: torch.Tensor | None = None
    ) -> Rays:
        """From the ray store's layout: nearfar (N, 2)."""
        return cls(origins, dirs, nearfar[:, 0].contiguous(), nearfar[:, 1].contiguous(), image_ids)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index: torch.Tensor | slice) -> Rays:
        ids = None if self.image_ids is None else self.image_ids[index]
        return Rays(self.origins[index], self.dirs[index], self.near[index], self.far[index], ids)

    def at(self, ray_indices: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Points (S, 3) at distances t (S,) along rays ray_indices (S,)."""
        return self.origins[ray_indices] + self.dirs[ray_indices] * t[:, None]


@dataclass
class RaySamples:
    """Packed intervals along rays: sorted by ray, then by t; intervals of one ray do not overlap."""

    ray_indices: torch.Tensor  # (S,) int64
    t_starts: torch.Tensor  # (S,)
    t_ends: torch.Tensor  # (S,)
    num_rays: int
    samples_per_ray: int | None = None  # K when every ray has exactly K samples (the fixed-count layout)

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mids(self) -> torch.Tensor:
        return (self.t_starts + self.t_ends) / 2

    @property
    def deltas(self) -> torch.Tensor:
        return self.t_ends - self.t_starts

    def positions(self, rays: Rays) -> torch.Tensor:
        """Mid-points (S, 3) of the intervals."""
        return rays.at(self.ray_indices, self.t_mids)

    def counts(self) -> torch.Tensor:
        """(N,) samples per ray."""
        return torch.bincount(self.ray_indices, minlength=self.num_rays)

    def fixed(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sample values (S, ...) as (N, K, ...) for the fixed-count layout."""
        if self.samples_per_ray is None:
            raise ValueError("samples do not have a fixed count per ray")
        return values.reshape(self.num_rays, self.samples_per_ray, *values.shape[1:])

    @classmethod
    def from_fixed(cls, t_edges: torch.Tensor) -> RaySamples:
        """From per-ray sorted interval edges (N, K + 1): K contiguous intervals per ray."""
        n, k = t_edges.shape[0], t_edges.shape[1] - 1
        ray_indices = torch.arange(n, device=t_edges.device).repeat_interleave(k)
        return cls(ray_indices, t_edges[:, :-1].reshape(-1), t_edges[:, 1:].reshape(-1), n, k)

    @classmethod
    def from_points(cls, ray_indices: torch.Tensor, t: torch.Tensor, num_rays: int) -> RaySamples:
        """Intervals between consecutive points (P,) of each ray, after sorting by ray then t.

        A ray with p points gets p - 1 intervals; a ray with fewer than two points gets none.
        """
        order = point_order(ray_indices, t)
        ray_indices, t = ray_indices[order], t[order]
        same = ray_indices[1:] == ray_indices[:-1]  # (P - 1,) interval i joins points i and i + 1
        return cls(ray_indices[:-1][same], t[:-1][same], t[1:][same], num_rays)

    def points(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The points bounding contiguous intervals, in ray then t order: ray_indices (P,), t (P,), and the
        index (S,) of each interval's start point (its end point is the next one). P = S + rays with samples."""
        last = torch.ones_like(self.ray_indices, dtype=torch.bool)
        last[:-1] = self.ray_indices[1:] != self.ray_indices[:-1]
        start = torch.arange(len(self), device=self.ray_indices.device) + torch.cumsum(last, 0) - last.long()
        num_points = len(self) + int(last.sum())
        ray_indices = self.ray_indices.new_empty(num_points)
        t = self.t_starts.new_empty(num_points)
        ray_indices[start + 1], t[start + 1] = self.ray_indices, self.t_ends  # then starts win where not contiguous
        ray_indices[start], t[start] = self.ray_indices, self.t_starts
        return ray_indices, t, start


def point_order(ray_indices: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Permutation (P,) sorting points by ray, then by t (two stable sorts)."""
    order = torch.argsort(t, stable=True)
    return order[torch.argsort(ray_indices[order], stable=True)]

"""Surface-guided sampling (NeuralRecon-W): sparse voxels around the surface, and the sampler that uses them.

Each ray gets samples spread over the occupied voxels it crosses (exact voxel traversal, vectorised), samples
in a band around its first surface hit (cached per ray id, found from the current SDF), and a few uniform
samples (hybrid). `update_voxels` re-evaluates the SDF at finer voxel centres and keeps the voxels near the
zero level set, so the guided region follows training. Memory is bounded by chunk sizes, not scene size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bigscene.render.samplers import FieldFn, sample_pdf, strata
from bigscene.render.samples import Rays, RaySamples, point_order

#: (27, 3) offsets of a voxel's 3x3x3 neighbourhood.
_NEIGHBOURS = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)


@dataclass
class SparseVoxels:
    """Occupied voxels of a lattice: voxel ijk spans origin + ijk * size to origin + (ijk + 1) * size.

    The lattice is the one partitioning writes (voxels.zarr: coords, origin, voxel_size). Membership tests
    are a binary search in the sorted linear keys of the voxels' bounding grid.
    """

    origin: torch.Tensor  # (3,) float32 world position of voxel (0, 0, 0)'s min corner
    voxel_size: float
    coords: torch.Tensor  # (V, 3) int64 voxel indices; made unique and sorted by key
    lo: torch.Tensor = field(init=False)  # (3,) int64 min corner of the bounding grid
    dims: torch.Tensor = field(init=False)  # (3,) int64 bounding grid size in voxels
    keys: torch.Tensor = field(init=False)  # (V,) int64 sorted linear keys

    def __post_init__(self) -> None:
        coords = torch.as_tensor(self.coords).long().reshape(-1, 3)
        self.origin = torch.as_tensor(self.origin, dtype=torch.float32, device=coords.device)
        self.voxel_size = float(self.voxel_size)
        if coords.shape[0] == 0:
            self.lo = coords.new_zeros(3)
            self.dims = coords.new_ones(3)
        else:
            self.lo = coords.min(dim=0).values
            self.dims = coords.max(dim=0).values - self.lo + 1
        self.keys = torch.unique(self._key(coords), sorted=True)
        self.coords = self._unkey(self.keys)

    @classmethod
    def from_points(cls, points: torch.Tensor, origin: torch.Tensor, voxel_size: float) -> SparseVoxels:
        """The voxels holding points (P, 3)."""
        origin = torch.as_tensor(origin, dtype=points.dtype, device=points.device)
        return cls(origin, voxel_size, torch.floor((points - origin) / voxel_size).long())

    def __len__(self) -> int:
        return self.coords.shape[0]

    def _key(self, ijk: torch.Tensor) -> torch.Tensor:
        rel = ijk - self.lo
        return (rel[:, 0] * self.dims[1] + rel[:, 1]) * self.dims[2] + rel[:, 2]

    def _unkey(self, keys: torch.Tensor) -> torch.Tensor:
        k = keys
        z = k % self.dims[2]
        k = k // self.dims[2]
        return torch.stack([k // self.dims[1], k % self.dims[1], z], dim=-1) + self.lo

    def contains(self, ijk: torch.Tensor) -> torch.Tensor:
        """(M,) bool: whether voxels ijk (M, 3) are occupied."""
        inside = ((ijk >= self.lo) & (ijk < self.lo + self.dims)).all(dim=-1)
        if len(self) == 0:
            return inside & False
        keys = self._key(ijk)
        found = self.keys[torch.searchsorted(self.keys, keys).clamp(max=len(self) - 1)]
        return inside & (found == keys)

    def voxel_of(self, points: torch.Tensor) -> torch.Tensor:
        """Voxel indices (P, 3) int64 of world points (P, 3)."""
        return torch.floor((points - self.origin) / self.voxel_size).long()

    def centres(self) -> torch.Tensor:
        """(V, 3) world centres."""
        return self.origin + (self.coords.to(self.origin.dtype) + 0.5) * self.voxel_size

    def bounds(self) -> torch.Tensor:
        """(2, 3) world box of the bounding grid."""
        return self.origin + torch.stack([self.lo, self.lo + self.dims]).to(self.origin.dtype) * self.voxel_size

    def children(self, factor: int) -> SparseVoxels:
        """Each voxel split into factor**3 voxels of size voxel_size / factor (same origin)."""
        sub = torch.stack(torch.meshgrid(*[torch.arange(factor)] * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = (self.coords[:, None] * factor + sub.to(self.coords)).reshape(-1, 3)
        return SparseVoxels(self.origin, self.voxel_size / factor, coords)

    def dilated(self, steps: int = 1) -> SparseVoxels:
        """The voxels within `steps` voxels (3x3x3 neighbourhoods, repeated) of an occupied one."""
        coords = self.coords
        for _ in range(steps):
            coords = (coords[:, None] + _NEIGHBOURS.to(coords)).reshape(-1, 3)
        return SparseVoxels(self.origin, self.voxel_size, coords)

    def subset(self, mask: torch.Tensor) -> SparseVoxels:
        return SparseVoxels(self.origin, self.voxel_size, self.coords[mask])

    def to(self, device: torch.device | str) -> SparseVoxels:
        return SparseVoxels(self.origin.to(device), self.voxel_size, self.coords.to(device))


def march_voxels(rays: Rays, voxels: SparseVoxels, max_cells: int = 2**22) -> RaySamples:
    """The segments of each ray's [near, far] inside occupied voxels, in ray order (exact voxel traversal).

    Every crossing of a voxel plane between the ray's entry into and exit from the voxels' bounding grid is
    computed in closed form, per axis; sorted, consecutive crossings bound the segments, and a segment is kept
    when the voxel holding its mid-point is occupied. Rays are processed in chunks of at most `max_cells`
    segment candidates. Returns packed intervals (not contiguous: gaps are free space).
    """
    n = len(rays)
    per_ray = int(voxels.dims.sum()) + 2
    chunk = max(1, max_cells // per_ray)
    parts = [_march_chunk(rays[i : i + chunk], voxels, i) for i in range(0, n, chunk)]
    ray_indices = torch.cat([p[0] for p in parts]) if parts else rays.near.new_zeros(0, dtype=torch.long)
    t_starts = torch.cat([p[1] for p in parts]) if parts else rays.near.new_zeros(0)
    t_ends = torch.cat([p[2] for p in parts]) if parts else rays.near.new_zeros(0)
    return RaySamples(ray_indices, t_starts, t_ends, n)


def _march_chunk(rays: Rays, voxels: SparseVoxels, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    o, d, vs = rays.origins, rays.dirs, voxels.voxel_size
    d = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    box = voxels.bounds().to(o)  # (2, 3)
    ta, tb = (box[0] - o) / d, (box[1] - o) / d  # (n, 3)
    t_in = torch.maximum(torch.minimum(ta, tb).max(dim=1).values, rays.near)
    t_out = torch.minimum(torch.maximum(ta, tb).min(dim=1).values, rays.far)
    live = torch.nonzero(t_in < t_out).squeeze(1)
    o, d, t_in, t_out = o[live], d[live], t_in[live], t_out[live]
    g_in = (o + t_in[:, None] * d - voxels.origin) / vs  # (m, 3) entry and exit in voxel units
    g_out = (o + t_out[:, None] * d - voxels.origin) / vs
    crossings = [t_in[:, None], t_out[:, None]]
    for axis in range(3):
        low = torch.minimum(g_in[:, axis], g_out[:, axis]).floor() + 1  # first plane index strictly inside
        count = (torch.maximum(g_in[:, axis], g_out[:, axis]).ceil() - low).clamp(min=0)  # (m,) planes crossed
        most = int(count.max()) if count.numel() else 0
        step = torch.arange(most, device=o.device, dtype=o.dtype)
        plane = voxels.origin[axis] + (low[:, None] + step) * vs  # (m, most) world plane positions
        t = (plane - o[:, axis : axis + 1]) / d[:, axis : axis + 1]
        crossings.append(torch.where(step < count[:, None], t, t_out[:, None]))
    t_all = torch.cat(crossings, dim=1).clamp_(t_in[:, None], t_out[:, None]).sort(dim=1).values  # (m, C)
    starts, ends = t_all[:, :-1], t_all[:, 1:]
    mid = (starts + ends) / 2
    cells = voxels.voxel_of((o[:, None] + mid[..., None] * d[:, None]).reshape(-1, 3))
    keep = (ends > starts).reshape(-1) & voxels.contains(cells)
    rows = torch.arange(len(live), device=o.device).repeat_interleave(starts.shape[1])[keep]
    return live[rows] + first, starts.reshape(-1)[keep], ends.reshape(-1)[keep]


def first_surface(ray_indices: torch.Tensor, t: torch.Tensor, sdf: torch.Tensor, num_rays: int) -> torch.Tensor:
    """(N,) depth of each ray's first outside-to-inside crossing of the zero level set, linearly interpolated
    between consecutive points (ray_indices, t, sdf) (P,) sorted by ray then t; inf where there is none."""
    same = ray_indices[1:] == ray_indices[:-1]
    crossing = same & (sdf[:-1] > 0) & (sdf[1:] <= 0)
    pair = torch.nonzero(crossing).squeeze(1)  # (C,) index of the point before each crossing
    first = torch.full((num_rays,), t.shape[0], dtype=torch.long, device=t.device)
    first = first.scatter_reduce(0, ray_indices[pair], pair, reduce="amin")
    found = first < t.shape[0]
    i = first[found]
    f0, f1 = sdf[i], sdf[i + 1]
    depth = torch.full((num_rays,), math.inf, dtype=t.dtype, device=t.device)
    depth[found] = t[i] + f0 / (f0 - f1) * (t[i + 1] - t[i])
    return depth


class SurfaceCache:
    """First-surface depth per ray id of a block: NaN unknown, inf no surface; cleared when the voxels change."""

    def __init__(self, num_rays: int, device: torch.device | str = "cpu") -> None:
        self.depth = torch.full((num_rays,), math.nan, device=device)

    def get(self, ray_ids: torch.Tensor) -> torch.Tensor:
        return self.depth[ray_ids]

    def put(self, ray_ids: torch.Tensor, depth: torch.Tensor) -> None:
        self.depth[ray_ids] = depth.to(self.depth)

    def clear(self) -> None:
        self.depth.fill_(math.nan)


@torch.no_grad()
def update_voxels(
    voxels: SparseVoxels,
    sdf_fn: FieldFn,
    threshold: float = 1.0,
    subdivide: int = 2,
    dilate: int = 0,
    chunk: int = 2**16,
) -> SparseVoxels:
    """Voxels near the current surface: split each voxel into subdivide**3 children (1: same size), add
    neighbours within `dilate` voxels, and keep those whose centre has |sdf| < threshold * voxel size.

    Works through the voxels `chunk` at a time, so memory is bounded by the chunk, not the scene.
    """
    kept = []
    for start in range(0, len(voxels), chunk):
        part = SparseVoxels(voxels.origin, voxels.voxel_size, voxels.coords[start : start + chunk])
        candidates = part.children(subdivide) if subdivide > 1 else part
        if dilate:
            candidates = candidates.dilated(dilate)
        sdf = torch.cat([sdf_fn(c).float() for c in candidates.centres().split(chunk * 8)])
        kept.append(candidates.coords[sdf.abs() < threshold * candidates.voxel_size])
    size = voxels.voxel_size / max(subdivide, 1)
    coords = torch.cat(kept) if kept else voxels.coords.new_zeros(0, 3)
    return SparseVoxels(voxels.origin, size, coords)


@dataclass
class SurfaceGuidedSampler:
    """NeuralRecon-W's hybrid sampler; counts are per ray (a ray without voxels or surface gets fewer)."""

    voxels: SparseVoxels
    voxel_samples: int = 32
    surface_samples: int = 16
    uniform_samples: int = 8
    surface_band: float = 0.05
    cache: SurfaceCache | None = None
    # how `update` refreshes the voxels (SamplerConfig.voxel_*)
    voxel_threshold: float = 1.0
    voxel_subdivide: int = 2
    min_voxel_size: float = 0.0
    voxel_dilate: int = 1

    def __call__(
        self,
        rays: Rays,
        field_fn: FieldFn,
        *,
        stratified: bool = False,
        generator: torch.Generator | None = None,
        ray_ids: torch.Tensor | None = None,
    ) -> RaySamples:
        """Samples for rays; field_fn is the SDF. ray_ids (N,) index the cache (the rays' ids in the block)."""
        n, device = len(rays), rays.origins.device
        hits = march_voxels(rays, self.voxels)
        if len(hits) and self.voxel_samples:
            vox_rays, vox_t = sample_pdf(hits, hits.deltas, self.voxel_samples, stratified, generator, padding=0.0)
        else:
            vox_rays, vox_t = hits.ray_indices[:0], hits.t_starts[:0]
        u = strata(n, self.uniform_samples, stratified, generator, device)  # (N, n_u)
        uni_rays = torch.arange(n, device=device).repeat_interleave(self.uniform_samples)
        uni_t = (rays.near[:, None] + (rays.far - rays.near)[:, None] * u).reshape(-1)
        ray_indices, t = torch.cat([vox_rays, uni_rays]), torch.cat([vox_t, uni_t])
        depth = self._surface(rays, field_fn, ray_indices, t, ray_ids)
        hit = torch.nonzero(torch.isfinite(depth)).squeeze(1)  # (M,)
        if self.surface_samples and hit.numel():
            band = 2.0 * strata(hit.numel(), self.surface_samples, stratified, generator, device) - 1.0
            surf_t = depth[hit, None] + self.surface_band * band  # (M, n_s)
            surf_t = torch.maximum(torch.minimum(surf_t, rays.far[hit, None]), rays.near[hit, None]).reshape(-1)
            ray_indices = torch.cat([ray_indices, hit.repeat_interleave(self.surface_samples)])
            t = torch.cat([t, surf_t])
        return RaySamples.from_points(ray_indices, t, n)

    def _surface(
        self, rays: Rays, sdf_fn: FieldFn, ray_indices: torch.Tensor, t: torch.Tensor, ray_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """(N,) first-surface depth (inf: none), from the cache where known, else from the SDF at the points."""
        use_cache = self.cache is not None and ray_ids is not None
        depth = self.cache.get(ray_ids) if use_cache else torch.full_like(rays.near, math.nan)
        missing = torch.isnan(depth)
        if bool(missing.any()):
            pick = missing[ray_indices]
            ri, tt = ray_indices[pick], t[pick]
            order = point_order(ri, tt)
            ri, tt = ri[order], tt[order]
            with torch.no_grad():
                sdf = sdf_fn(rays.at(ri, tt)).float()
            found = first_surface(ri, tt, sdf, len(rays))
            depth = torch.where(missing, found, depth)
            if use_cache:
                self.cache.put(ray_ids[missing], found[missing])
        return depth

    def update(self, sdf_fn: FieldFn) -> None:
        """Refresh the voxels from the current SDF, finer while the children stay >= min_voxel_size; clear the
        surface cache. Call it every so many training steps so the guided region follows the surface."""
        factor = self.voxel_subdivide if self.voxels.voxel_size / self.voxel_subdivide >= self.min_voxel_size else 1
        self.voxels = update_voxels(self.voxels, sdf_fn, self.voxel_threshold, factor, self.voxel_dilate)
        if self.cache is not None:
            self.cache.clear()

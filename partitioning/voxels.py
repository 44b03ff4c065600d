"""Surface voxels from SfM points, and the dense visibility grid that finds a ray's first surface voxel.

A block's voxels are the cells (of one global lattice anchored at the ROI's min corner) that hold an SfM
point with a long enough track, dilated by one voxel: a sparse seed of where the surface is, stored as
voxel coordinates (as NeuralRecon-W builds its octree from SfM points). The visibility grid is the union
of those voxels over all blocks as a dense occupancy array, coarsened when the ROI would need more cells
than `max_cells`, so a ray's first occupied cell costs a gather per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation

#: (27, 3) offsets of a voxel's 3x3x3 neighbourhood: the one-voxel dilation.
_NEIGHBOURHOOD = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
#: Samples each visibility step tests per ray at once.
_SAMPLES_PER_STEP = 32


@dataclass(frozen=True)
class Lattice:
    """The global voxel lattice: voxel ijk spans origin + ijk * size to origin + (ijk + 1) * size."""

    origin: np.ndarray  # (3,) float64
    size: float

    def index(self, xyz: np.ndarray) -> np.ndarray:
        """(P, 3) int64 indices of the voxels holding points xyz (P, 3)."""
        return np.floor((xyz - self.origin) / self.size).astype(np.int64)


def surface_voxels(xyz: np.ndarray, box: np.ndarray, lattice: Lattice) -> np.ndarray:
    """(V, 3) int32 sorted unique voxels of the points xyz (P, 3) inside box (2, 3), dilated by one voxel
    and kept where they meet the box."""
    inside = np.all((xyz >= box[0]) & (xyz <= box[1]), axis=1)
    lo, hi = lattice.index(box[0][None])[0], lattice.index(box[1][None])[0]
    dims = hi - lo + 3  # one voxel of dilation either side
    seeds = lattice.index(xyz[inside]) - lo + 1  # (S, 3), all in [1, dims - 2]
    keys = np.unique(np.ravel_multi_index(seeds.T, dims))
    seeds = np.stack(np.unravel_index(keys, dims), axis=-1)  # (S', 3) unique
    grown = (seeds[:, None, :] + _NEIGHBOURHOOD[None]).reshape(-1, 3)  # (27 S', 3)
    keys = np.unique(np.ravel_multi_index(grown.T, dims))
    voxels = np.stack(np.unravel_index(keys, dims), axis=-1) + lo - 1  # (V, 3) back on the lattice
    keep = np.all((voxels >= lo) & (voxels <= hi), axis=1)
    return voxels[keep].astype(np.int32)


@dataclass(frozen=True)
class VisibilityGrid:
    """Dense occupancy over the union of the blocks' outer boxes.

    occupied: (X, Y, Z) bool; origin: (3,) float32 min corner of cell (0, 0, 0); cell: edge length.
    """

    occupied: np.ndarray
    origin: np.ndarray
    cell: float

    def first_hit(self, origins: np.ndarray, dirs: np.ndarray, t_start: np.ndarray, t_stop: np.ndarray) -> np.ndarray:
        """A lower bound on where each ray first enters an occupied cell in (t_start, t_stop], else inf.

        origins, dirs: (N, 3) float32; t_start, t_stop: (N,). Samples every half cell: a surface point's
        dilated voxels hold a ray crossing it for at least a cell, so no sample steps over them; the
        returned t is the sample before the first occupied one, so it never lies behind the entry.
        """
        step = np.float32(0.5)  # in cells
        nx, ny, nz = self.occupied.shape
        flat = self.occupied.reshape(-1)
        offsets = np.arange(1, _SAMPLES_PER_STEP + 1, dtype=np.float32) * step  # (K,)
        scale = np.float32(1.0 / self.cell)
        start = (origins - self.origin) * scale  # (N, 3) in cells; unit dirs move one cell per cell of t
        hit_t = np.full(len(origins), np.inf, dtype=np.float32)
        base = np.asarray(t_start, dtype=np.float32) * scale  # distances in cells from here on
        stop = np.asarray(t_stop, dtype=np.float32) * scale
        active = np.flatnonzero(stop > base)
        while active.size:
            ts = base[active, None] + offsets[None]  # (A, K) sample distances
            index = np.zeros(ts.shape, dtype=np.int64)
            inside = ts - step <= stop[active, None]
            for axis, size, stride in ((0, nx, ny * nz), (1, ny, nz), (2, nz, 1)):
                coord = start[active, axis, None] + ts * dirs[active, axis, None]  # (A, K)
                inside &= (coord >= 0) & (coord < size)
                index += coord.astype(np.int64) * stride  # truncation is floor where inside
            occupied = flat[np.where(inside, index, 0)] & inside
            hit = occupied.any(axis=1)
            first = occupied.argmax(axis=1)
            hit_t[active[hit]] = (ts[hit, first[hit]] - step) / scale
            base[active] += _SAMPLES_PER_STEP * step
            active = active[~hit & (base[active] <= stop[active])]
        return hit_t


def visibility_grid(xyz: np.ndarray, outer: np.ndarray, lattice: Lattice, max_cells: int) -> VisibilityGrid:
    """The dilated occupancy of points xyz (P, 3) inside any outer box (B, 2, 3), on the lattice's voxels
    or, past `max_cells`, on the coarsest integer multiple of them that fits."""
    lo, hi = outer[:, 0].min(axis=0), outer[:, 1].max(axis=0)
    factor = 1
    while True:
        cell = lattice.size * factor
        first = np.floor((lo - lattice.origin) / cell)  # grid aligned with the lattice
        shape = (np.floor((hi - lattice.origin) / cell) - first + 1).astype(np.int64)
        if np.prod(shape) <= max_cells:
            break
        factor += 1
    origin = lattice.origin + first * cell
    in_box = np.zeros(len(xyz), dtype=bool)
    for box in outer:
        in_box |= np.all((xyz >= box[0]) & (xyz <= box[1]), axis=1)
    ijk = np.floor((xyz[in_box] - origin) / cell).astype(np.int64)
    occupied = np.zeros(tuple(shape), dtype=bool)
    occupied[tuple(np.clip(ijk, 0, shape - 1).T)] = True
    occupied = binary_dilation(occupied, structure=np.ones((3, 3, 3), dtype=bool))
    return VisibilityGrid(occupied, origin.astype(np.float32), float(cell))

"""Surface voxels from SfM points, and the dense visibility grid that finds a ray's first surface voxel.

A block's voxels are the cells (of one global lattice anchored at the ROI's min corner) that hold an SfM
point with a long enough track, dilated by one voxel: a sparse seed of where the surface is, stored as
voxel coordinates (as NeuralRecon-W builds its octree from SfM points). The visibility grid is the union
of those voxels over all blocks as a dense grid, coarsened when the ROI would need more cells than
`max_cells`; it stores each cell's distance to the nearest occupied cell, so that a ray's march to its
first occupied cell jumps across empty air and steps cell by cell only near the surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_cdt

from partitioning.compiled import COMPILED, jit
from partitioning.layout import XStrips

#: (27, 3) offsets of a voxel's 3x3x3 neighbourhood: the one-voxel dilation.
_NEIGHBOURHOOD = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
#: Largest stored distance (cells): the uint8 cap.
_FAR = 255
#: How far past a cell boundary (in cells) a traversal step lands, so that the next cell is the one entered.
_NUDGE = 1e-4


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
    """Dense occupancy over the union of the blocks' outer boxes, as a distance field for empty-space skipping.

    distance: (X, Y, Z) uint8 chessboard distance in cells from each cell to the nearest occupied one (0 where
    occupied, capped at 255); origin: (3,) float32 min corner of cell (0, 0, 0); cell: edge length.
    """

    distance: np.ndarray
    origin: np.ndarray
    cell: float

    @property
    def occupied(self) -> np.ndarray:
        """(X, Y, Z) bool occupancy."""
        return self.distance == 0

    def first_hit(self, origins: np.ndarray, dirs: np.ndarray, t_start: np.ndarray, t_stop: np.ndarray) -> np.ndarray:
        """(N,) float32: where each ray first enters an occupied cell in [t_start, t_stop], else inf.

        origins, dirs: (N, 3) float32 (unit dirs); t_start, t_stop: (N,). An exact cell traversal that jumps
        across empty space by the distance field; the result is a lower bound on the entry (by 1e-4 cells).
        """
        march_all = _march_rays
        if not COMPILED:
            from partitioning import numpy_kernels  # imports this module: loaded only where it runs

            march_all = numpy_kernels.march_rays
        return march_all(
            np.ascontiguousarray(origins, dtype=np.float32),
            np.ascontiguousarray(dirs, dtype=np.float32),
            np.ascontiguousarray(t_start, dtype=np.float32).reshape(-1),
            np.ascontiguousarray(t_stop, dtype=np.float32).reshape(-1),
            self.distance,
            self.origin,
            np.float32(self.cell),
        )


@jit
def _clip(p: float, d: float, inv: float, size: int, lo_t: float, hi_t: float) -> tuple[float, float]:
    """[lo_t, hi_t] clipped to where the ray p + t d (inv = 1 / d) lies in [0, size) on one axis (empty:
    lo_t > hi_t)."""
    if d == 0.0:
        return (lo_t, hi_t) if 0.0 <= p < size else (1.0, 0.0)
    ta, tb = -p * inv, (size - p) * inv
    return max(lo_t, min(ta, tb)), min(hi_t, max(ta, tb))


#: Columns of `march`'s per-ray state: position p and direction d (cells); per axis, the side by which the ray
#: leaves a cell (1 moving up or not at all, 0 moving down) less p, so that (cell index + it) * inverse is the t
#: where it leaves that cell, and the inverse direction (`STILL` on an axis the ray does not move along); the
#: clipped range [lo, hi] and the current t.
MARCH_STATE = 15
_PX, _PY, _PZ, _DX, _DY, _DZ, _BX, _BY, _BZ, _IX, _IY, _IZ, _LO, _HI, _T = range(MARCH_STATE)
#: Inverse direction of an axis the ray does not move along: its exit from any cube lies beyond every range.
STILL = 1e300


@jit
def march(
    origins: np.ndarray,
    dirs: np.ndarray,
    rows: np.ndarray,
    t_start: np.ndarray,
    t_stop: np.ndarray,
    count: int,
    distance: np.ndarray,
    grid_origin: np.ndarray,
    cell: float,
    out: np.ndarray,
    state: np.ndarray,
    active: np.ndarray,
) -> None:
    """For q < count: out[q] = the first occupied cell entry in [t_start[q], t_stop[q]] (float32, inf if none) of
    ray rows[q] of origins, dirs (N, 3); see `first_hit`. state (count, MARCH_STATE) float64 and active (count,)
    int64 are scratch.

    Works in cell units: a cell at chessboard distance k >= 1 from the surface is the centre of an empty cube
    of 2k - 1 cells a side, so the ray steps to where it leaves that cube (k = 1: the cell itself, as a cell
    traversal does) and lands just past it. The rays take their steps in turn and without branches, so that
    one ray's wait for memory overlaps the others' work and no step waits on a mispredicted branch.
    """
    nx, ny, nz = distance.shape
    cells = distance.reshape(-1)
    per_cell = 1.0 / np.float64(cell)
    live = 0
    for q in range(count):
        out[q] = np.inf
        r = rows[q]
        px = (np.float64(origins[r, 0]) - grid_origin[0]) * per_cell
        py = (np.float64(origins[r, 1]) - grid_origin[1]) * per_cell
        pz = (np.float64(origins[r, 2]) - grid_origin[2]) * per_cell
        dx, dy, dz = np.float64(dirs[r, 0]), np.float64(dirs[r, 1]), np.float64(dirs[r, 2])
        ix = 1.0 / dx if dx != 0.0 else STILL
        iy = 1.0 / dy if dy != 0.0 else STILL
        iz = 1.0 / dz if dz != 0.0 else STILL
        lo_t, hi_t = _clip(px, dx, ix, nx, t_start[q] * per_cell, t_stop[q] * per_cell)
        lo_t, hi_t = _clip(py, dy, iy, ny, lo_t, hi_t)
        lo_t, hi_t = _clip(pz, dz, iz, nz, lo_t, hi_t)
        state[q, _PX], state[q, _PY], state[q, _PZ] = px, py, pz
        state[q, _DX], state[q, _DY], state[q, _DZ] = dx, dy, dz
        state[q, _BX] = 1.0 - px if dx >= 0.0 else -px
        state[q, _BY] = 1.0 - py if dy >= 0.0 else -py
        state[q, _BZ] = 1.0 - pz if dz >= 0.0 else -pz
        state[q, _IX], state[q, _IY], state[q, _IZ] = ix, iy, iz
        state[q, _LO], state[q, _HI], state[q, _T] = lo_t, hi_t, lo_t
        active[live] = q
        live += t_stop[q] >= t_start[q] and lo_t <= hi_t
    while live:
        kept = 0
        for a in range(live):
            q = active[a]
            t = state[q, _T]
            # coordinates are >= 0 up to rounding here, so truncation is floor after the clamp
            i = min(max(int(state[q, _PX] + t * state[q, _DX]), 0), nx - 1)
            j = min(max(int(state[q, _PY] + t * state[q, _DY]), 0), ny - 1)
            k = min(max(int(state[q, _PZ] + t * state[q, _DZ]), 0), nz - 1)
            far = cells[(i * ny + j) * nz + k]
            reach = far - 1.0  # cells of the empty cube on each side of this one
            leave_x = (i + state[q, _BX]) * state[q, _IX] + reach * abs(state[q, _IX])
            leave_y = (j + state[q, _BY]) * state[q, _IY] + reach * abs(state[q, _IY])
            leave_z = (k + state[q, _BZ]) * state[q, _IZ] + reach * abs(state[q, _IZ])
            hit = far == 0
            out[q] = np.float32(max(t - _NUDGE, state[q, _LO]) * cell) if hit else out[q]
            t = max(min(leave_x, min(leave_y, leave_z)), t) + _NUDGE
            state[q, _T] = t
            active[kept] = q
            kept += not hit and t <= state[q, _HI]
        live = kept


@jit
def _march_rays(
    origins: np.ndarray,
    dirs: np.ndarray,
    t_start: np.ndarray,
    t_stop: np.ndarray,
    distance: np.ndarray,
    grid_origin: np.ndarray,
    cell: np.float32,
) -> np.ndarray:
    n = len(origins)
    out = np.empty(n, dtype=np.float32)
    chunk = 256  # rays marched together: enough to overlap their memory waits, few to stay in cache
    state = np.empty((chunk, MARCH_STATE))
    active = np.empty(chunk, dtype=np.int64)
    rows = np.empty(chunk, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        span = slice(start, stop)
        for q in range(stop - start):
            rows[q] = start + q
        march(
            origins,
            dirs,
            rows,
            t_start[span],
            t_stop[span],
            stop - start,
            distance,
            grid_origin,
            cell,
            out[span],
            state,
            active,
        )
    return out


def visibility_grid(strips: XStrips, outer: np.ndarray, lattice: Lattice, max_cells: int) -> VisibilityGrid:
    """The dilated occupancy of the points (P, 3), sorted into x strips, inside any outer box (B, 2, 3), on the
    lattice's voxels or, past `max_cells`, on the coarsest integer multiple of them that fits."""
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
    in_box = np.zeros(len(strips.points), dtype=bool)  # of the points in x order
    for box in outer:
        span = strips.span(box[0, 0], box[1, 0])
        in_box[span] |= np.all((strips.points[span] >= box[0]) & (strips.points[span] <= box[1]), axis=1)
    ijk = np.floor((strips.points[in_box] - origin) / cell).astype(np.int64)
    occupied = np.zeros(tuple(shape), dtype=bool)
    occupied[tuple(np.clip(ijk, 0, shape - 1).T)] = True
    occupied = binary_dilation(occupied, structure=np.ones((3, 3, 3), dtype=bool))
    if occupied.any():
        distance = distance_transform_cdt(~occupied, metric="chessboard")
    else:
        distance = np.full(occupied.shape, _FAR)
    return VisibilityGrid(np.minimum(distance, _FAR).astype(np.uint8), origin.astype(np.float32), float(cell))

"""The global mesh grid over the ROI and its chunks.

Grid nodes sit at `origin + ijk * voxel`, covering the ROI. Chunks are `chunk` nodes a side and step by
`chunk - 1`, so neighbours share one layer of nodes (the same global nodes, evaluated identically) and
every cell belongs to exactly one chunk. Chunks are named by their index (i, j, k) in the chunk lattice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bigscene.errors import ConfigError

Index = tuple[int, int, int]


@dataclass(frozen=True)
class MeshGrid:
    origin: np.ndarray  # (3,) float64 world position of node (0, 0, 0)
    voxel: float
    shape: tuple[int, int, int]  # nodes per axis
    chunk: int  # nodes per chunk side

    @classmethod
    def over(cls, roi: np.ndarray, voxel: float, chunk: int) -> MeshGrid:
        """The grid of spacing `voxel` whose nodes cover the ROI (2, 3), starting at its min corner."""
        roi = np.asarray(roi, dtype=np.float64)
        extent = roi[1] - roi[0]
        if not np.all(extent > 0):
            raise ConfigError(f"the ROI {roi.tolist()} is empty; nothing to mesh")
        shape = tuple(int(max(2, math.ceil(e / voxel - 1e-9) + 1)) for e in extent)
        return cls(roi[0].copy(), float(voxel), shape, int(chunk))  # type: ignore[arg-type]

    @property
    def step(self) -> int:
        return self.chunk - 1

    @property
    def chunks(self) -> np.ndarray:
        """(3,) chunks per axis."""
        return np.array([max(1, -(-(n - 1) // self.step)) for n in self.shape], dtype=np.int64)

    @property
    def nodes(self) -> int:
        return int(np.prod(np.array(self.shape, dtype=np.float64)))

    def start(self, ijk: Index) -> np.ndarray:
        """(3,) int64 global index of the chunk's first node."""
        return np.asarray(ijk, dtype=np.int64) * self.step

    def size(self, ijk: Index) -> np.ndarray:
        """(3,) nodes of the chunk per axis (the last chunk along an axis may be smaller)."""
        return np.minimum(self.chunk, np.asarray(self.shape, dtype=np.int64) - self.start(ijk))

    def positions(self, start: np.ndarray, size: np.ndarray) -> np.ndarray:
        """World positions (a * b * c, 3) float32 of nodes start + [0, size), x slowest (the block may reach past
        the grid): the same float per global node whichever chunk asks."""
        axes = [self.origin[a] + (start[a] + np.arange(size[a], dtype=np.float64)) * self.voxel for a in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        return grid.reshape(-1, 3).astype(np.float32)

    def contains(self, start: np.ndarray, size: np.ndarray) -> np.ndarray:
        """(a, b, c) bool: which nodes start + [0, size) are grid nodes."""
        inside = [
            (start[a] + np.arange(size[a]) >= 0) & (start[a] + np.arange(size[a]) < self.shape[a]) for a in range(3)
        ]
        return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]

    def world(self, coords: np.ndarray) -> np.ndarray:
        """World positions (P, 3) float64 of global grid coordinates (P, 3)."""
        return self.origin + np.asarray(coords, dtype=np.float64) * self.voxel

    def linear(self, ijk: np.ndarray) -> np.ndarray:
        """Lexicographic index (...,) of chunk indices (..., 3): the order tiles are welded in."""
        m = self.chunks
        ijk = np.asarray(ijk, dtype=np.int64)
        return (ijk[..., 0] * m[1] + ijk[..., 1]) * m[2] + ijk[..., 2]

    def chunks_of_boxes(self, lo: np.ndarray, size: float) -> set[Index]:
        """Chunks touched by axis-aligned cubes [lo, lo + size] (V, 3) (e.g. surface voxels)."""
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64) * size
        points = (np.asarray(lo, dtype=np.float64)[:, None, :] + corners[None]).reshape(-1, 3)
        f = (points - self.origin) / self.voxel
        f = np.clip(f, 0, np.asarray(self.shape) - 1)
        keep = np.all((points >= self.origin - size) & (points <= self.world(np.asarray(self.shape) - 1) + size), 1)
        ijk = np.minimum(np.floor(f[keep] / self.step).astype(np.int64), self.chunks - 1)
        return {tuple(int(v) for v in row) for row in np.unique(ijk, axis=0)}  # type: ignore[misc]

    def neighbour(self, ijk: Index, axis: int, side: int) -> Index | None:
        """The chunk across the chunk's low (side 0) or high (side 1) face along `axis`, or None at the grid edge."""
        other = list(ijk)
        other[axis] += 1 if side else -1
        return tuple(other) if 0 <= other[axis] < self.chunks[axis] else None  # type: ignore[return-value]

    def all_chunks(self) -> list[Index]:
        m = self.chunks
        return [(i, j, k) for i in range(m[0]) for j in range(m[1]) for k in range(m[2])]

    def centres(self, chunks: Iterable[Index]) -> np.ndarray:
        """World centres (C, 3) of chunks."""
        return np.array([self.world(self.start(c) + (self.size(c) - 1) / 2) for c in chunks]).reshape(-1, 3)

    def half_diagonal(self) -> float:
        """Half the diagonal of a whole chunk, world units."""
        return float(math.sqrt(3) * self.step * self.voxel / 2)

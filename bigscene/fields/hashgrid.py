"""Multi-resolution hash grid encoding (instant-ngp) in plain PyTorch, for CPU and GPU.

Level l has `res_l = floor(base * growth**l)` cells per axis over [0, 1]^3, so `res_l + 1` vertices per axis.
A level whose vertices fit in the table is indexed densely (coarse levels: no collisions); finer levels hash
vertex coordinates with instant-ngp's primes into a table of 2**table_log2 entries. Features are trilinearly
interpolated from the cell's 8 corners, so the encoding is exact at vertices, continuous across cells and
differentiable (twice, for eikonal terms) in both the input and the table.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bigscene.errors import ConfigError
from bigscene.fields.encodings import Encoding, register_encoding

#: instant-ngp's spatial hash: xor of coordinates times these primes, modulo the table size (a power of two).
HASH_PRIMES = (1, 2654435761, 805459861)


def _wrap_int32(value: int) -> int:
    """`value` modulo 2**32 as a signed int32: multiplying int32 tensors by it wraps like uint32 arithmetic."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def spatial_hash(coords: torch.Tensor, table_size: int) -> torch.Tensor:
    """instant-ngp hash of integer vertex coordinates (..., 3) into [0, table_size), int64; the reference."""
    coords = coords.long()
    h = (coords[..., 0] * HASH_PRIMES[0]) ^ (coords[..., 1] * HASH_PRIMES[1]) ^ (coords[..., 2] * HASH_PRIMES[2])
    return h & (table_size - 1)


@register_encoding("hashgrid")
class HashGrid(Encoding):
    """Inputs (N, 3) in [0, 1] (clamped) -> features (N, levels * features), coarse levels first."""

    in_dim = 3

    def __init__(
        self,
        levels: int = 16,
        features: int = 2,
        table_log2: int = 19,
        base_resolution: int = 16,
        finest_resolution: int = 2048,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if levels < 1 or features < 1 or base_resolution < 1 or finest_resolution < base_resolution:
            raise ConfigError(
                f"hash grid: levels={levels}, features={features}, resolutions {base_resolution}..{finest_resolution}"
                " must be positive and increasing"
            )
        self.levels, self.features, self.table_size = levels, features, 2**table_log2
        growth = math.exp((math.log(finest_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        resolutions = [math.floor(base_resolution * growth**level + 1e-6) for level in range(levels)]
        sizes = [min((r + 1) ** 3, self.table_size) for r in resolutions]
        #: levels [0, num_dense) index densely, the rest hash; dense levels are always the coarse ones.
        self.num_dense = sum((r + 1) ** 3 <= self.table_size for r in resolutions)
        self.resolutions = resolutions
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        if offsets[-1] >= 2**31:
            raise ConfigError(f"hash grid: {offsets[-1]} table rows do not fit int32 indices; lower table_log2")
        side = torch.tensor([r + 1 for r in resolutions[: self.num_dense]], dtype=torch.int32)  # (Ld,)
        self.register_buffer("_res", torch.tensor(resolutions, dtype=torch.float32), persistent=False)  # (L,)
        self.register_buffer("_res_int", torch.tensor(resolutions, dtype=torch.int32), persistent=False)  # (L,)
        self.register_buffer("_offsets", torch.tensor(offsets[:-1], dtype=torch.int32), persistent=False)  # (L,)
        self.register_buffer("_dense_strides", torch.stack([torch.ones_like(side), side, side * side], -1), False)
        self.register_buffer("_primes", torch.tensor([_wrap_int32(p) for p in HASH_PRIMES], dtype=torch.int32), False)
        self.params = nn.Parameter(torch.empty(offsets[-1], features).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def level_slice(self, level: int) -> slice:
        """Rows of `params` that hold `level`'s table."""
        start = int(self._offsets[level])
        end = int(self._offsets[level + 1]) if level + 1 < self.levels else self.params.shape[0]
        return slice(start, end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.clamp(0.0, 1.0)
        pos = x[:, None, :] * self._res.to(x.dtype)[None, :, None]  # (N, L, 3) in cell units
        cell = torch.minimum(pos.detach().floor().int(), self._res_int[None, :, None] - 1)  # (N, L, 3); x=1: last cell
        frac = pos - cell.to(x.dtype)  # (N, L, 3) in [0, 1]
        rows = self._corner_rows(cell)  # (N, L, 8)
        w = torch.stack([1.0 - frac, frac], dim=-1)  # (N, L, 3, 2): weights of the low / high corner per axis
        weights = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]).reshape(n, -1, 8)
        # int64 rows: the backward's index_add on CPU is several times slower with int32 indices
        values = self.params.index_select(0, rows.reshape(-1).long()).view(n, self.levels, 8, self.features)
        return (weights[..., None] * values).sum(dim=2).reshape(n, self.out_dim)

    def _corner_rows(self, cell: torch.Tensor) -> torch.Tensor:
        """Table rows (N, L, 8) int32 of the corners of cells (N, L, 3) int32, corner c = 4 bx + 2 by + bz.

        Each axis contributes a term for its low and high vertex; the 8 corners combine them by broadcasting
        (a sum for dense levels, an xor for hashed ones), so the products cost 6, not 24, per level.
        """
        n, nd = cell.shape[0], self.num_dense
        corner = torch.stack([cell, cell + 1], dim=-1)  # (N, L, 3, 2)
        dense = corner[:, :nd] * self._dense_strides[None, :, :, None]  # (N, Ld, 3, 2)
        dense_rows = dense[:, :, 0, :, None, None] + dense[:, :, 1, None, :, None] + dense[:, :, 2, None, None, :]
        hashed = corner[:, nd:] * self._primes[None, None, :, None]  # (N, L - Ld, 3, 2), wrapping like uint32
        hashed_rows = hashed[:, :, 0, :, None, None] ^ hashed[:, :, 1, None, :, None] ^ hashed[:, :, 2, None, None, :]
        hashed_rows = hashed_rows & (self.table_size - 1)
        rows = torch.cat([dense_rows.reshape(n, nd, 8), hashed_rows.reshape(n, -1, 8)], dim=1)
        return rows + self._offsets[None, :, None]

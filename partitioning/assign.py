"""Ray-to-block assignment: which blocks train on a ray, over which segment.

A ray trains a block when its segment crosses the block's outer box (a slab test), does not enter it
from under the block's ground (it would have met the ground outside the box, where there may be no SfM
points to say so), and starts no later than the ray's first surface voxel plus a margin: a block does
not train on pixels it cannot see. The block's near/far is that segment. Rays that cross no box (sky) go
to the background of the first block whose ground footprint they pass over, with an empty segment
(near == far), or are dropped with `sky="drop"`.

Vectorised over rays and blocks at once: consecutive rays are grouped (callers pass image tiles, see
`tile_order`), a cone test per group keeps the few blocks the group can reach, and the slab test runs on
the surviving (ray, block) pairs only; one visibility march per ray serves every block it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from partitioning.voxels import VisibilityGrid

#: Direction components smaller than this are treated as this (keeps the slab test finite).
_TINY = np.float32(1e-12)
#: Rays assigned per chunk; bounds the temporaries.
CHUNK_RAYS = 1 << 15
#: Consecutive rays sharing one cone test (a 16 x 16 pixel tile).
GROUP = 256


@dataclass(frozen=True)
class BlockBoxes:
    """The boxes assignment tests against. outer: (B, 2, 3) float32; inner_xy: (B, 2, 2) float32;
    ground: (B,) float32 height below which a block is solid."""

    outer: np.ndarray
    inner_xy: np.ndarray
    ground: np.ndarray

    def __len__(self) -> int:
        return len(self.outer)


@dataclass
class Assignment:
    """M (ray, block) pairs: ray (M,) int64 indices into the input rays, block (M,) int32,
    near_far (M, 2) float32 segment, background (M,) bool (near == far); dropped rays by reason."""

    ray: np.ndarray
    block: np.ndarray
    near_far: np.ndarray
    background: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)


def tile_order(width: int, height: int, tile: int = 16) -> np.ndarray:
    """(W*H,) permutation of row-major pixel indices into tile x tile tiles, so GROUP rays share a cone."""
    ys, xs = np.divmod(np.arange(width * height), width)
    key = (ys // tile) * ((width + tile - 1) // tile) + xs // tile
    return np.argsort(key, kind="stable")


def _safe(dirs: np.ndarray) -> np.ndarray:
    return np.where(np.abs(dirs) < _TINY, np.where(dirs < 0, -_TINY, _TINY), dirs)


def slab(origins: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances of rays (N, D) through boxes lo, hi (B, D), clamped to t >= 0.

    Returns t0, t1 (N, B); a ray crosses box b where t1 > t0. Works for D = 3 (boxes) and 2 (footprints).
    One axis at a time on (N, B) arrays: reductions over a trailing axis of 3 are slow in numpy.
    """
    inv = 1.0 / _safe(dirs)  # (N, D)
    t0 = np.zeros((len(origins), len(lo)), dtype=np.result_type(origins, lo))
    t1 = np.full_like(t0, np.inf)
    for axis in range(origins.shape[1]):
        ta = (lo[None, :, axis] - origins[:, axis, None]) * inv[:, axis, None]  # (N, B)
        tb = (hi[None, :, axis] - origins[:, axis, None]) * inv[:, axis, None]
        np.maximum(t0, np.minimum(ta, tb), out=t0)
        np.minimum(t1, np.maximum(ta, tb), out=t1)
    return t0, t1


def _pair_slab(
    origins: np.ndarray, inv: np.ndarray, ray: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`slab` for P (ray, box) pairs: rays (N, 3) with inverse dirs, pair ray indices (P,), boxes (P, 3)."""
    t0 = np.zeros(len(ray), dtype=np.float32)
    t1 = np.full(len(ray), np.inf, dtype=np.float32)
    for axis in range(3):
        o, i = origins[ray, axis], inv[ray, axis]
        ta, tb = (lo[:, axis] - o) * i, (hi[:, axis] - o) * i
        np.maximum(t0, np.minimum(ta, tb), out=t0)
        np.minimum(t1, np.maximum(ta, tb), out=t1)
    return t0, t1


def reachable(origins: np.ndarray, dirs: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """(G, B) bool: which boxes (B, 2, 3) each group of rays (G, n, 3) may cross; a conservative cone test.

    A group's rays lie in the cone from its origins' centre, around their mean direction, as wide as its
    widest ray; a box can be crossed only if its bounding sphere, grown by the origins' spread, meets it.
    """
    centre = origins.mean(axis=1)  # (G, 3)
    spread = np.linalg.norm(origins - centre[:, None], axis=-1).max(axis=1)  # (G,)
    axis = dirs.sum(axis=1)
    length = np.linalg.norm(axis, axis=-1)
    axis = axis / np.maximum(length, 1e-12)[:, None]
    cos_alpha = np.einsum("gnc,gc->gn", dirs, axis).min(axis=1)
    alpha = np.where(length > 1e-3, np.arccos(np.clip(cos_alpha, -1.0, 1.0)), np.pi)  # half-angle (G,)
    to_box = outer.mean(axis=1)[None] - centre[:, None]  # (G, B, 3)
    dist = np.maximum(np.linalg.norm(to_box, axis=-1), 1e-12)  # (G, B)
    radius = 0.5 * np.linalg.norm(outer[:, 1] - outer[:, 0], axis=-1)[None] + spread[:, None]  # (G, B)
    theta = np.arccos(np.clip(np.einsum("gbc,gc->gb", to_box, axis) / dist, -1.0, 1.0))
    return (dist <= radius) | (theta <= alpha[:, None] + np.arcsin(np.clip(radius / dist, 0.0, 1.0)) + 1e-6)


def nearest_footprint(origins: np.ndarray, dirs: np.ndarray, inner_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rays (N, 3) crossing no box: the block whose footprint (B, 2, 2) the ray's ground projection
    passes over first (the one under its origin, if any), else (a ray leaving the layout) the footprint
    nearest its origin. Returns block (N,) int32 and the distance t (N,) float32 where the ray reaches
    that footprint (0 if none)."""
    o2 = origins[:, :2]
    block = np.zeros(len(o2), dtype=np.int64)
    t = np.zeros(len(o2), dtype=np.float32)
    # origins are few (one per camera): find the footprint under each once
    keys = np.ascontiguousarray(o2, dtype=np.float32).view(np.uint64).reshape(-1)  # one key per (x, y)
    first_of, inverse = np.unique(keys, return_index=True, return_inverse=True)[1:]
    unique = o2[first_of]  # (U, 2)
    under = np.all((unique[:, None] >= inner_xy[None, :, 0]) & (unique[:, None] <= inner_xy[None, :, 1]), axis=-1)
    has = under.any(axis=1)[inverse]
    block[has] = under.argmax(axis=1)[inverse][has]
    rest = np.flatnonzero(~has)
    if rest.size:
        t0, t1 = slab(o2[rest], dirs[rest, :2], inner_xy[:, 0], inner_xy[:, 1])  # (R, B)
        entry = np.where(t1 >= t0, t0, np.inf)
        block[rest] = entry.argmin(axis=1)
        t[rest] = entry[np.arange(rest.size), block[rest]]
        missed = rest[np.isinf(t[rest])]
        gap = np.maximum(np.maximum(inner_xy[None, :, 0] - unique[:, None], unique[:, None] - inner_xy[None, :, 1]), 0)
        block[missed] = (gap * gap).sum(axis=-1).argmin(axis=1)[inverse[missed]]  # (U, B, 2) -> per origin
        t[missed] = 0.0
    return block.astype(np.int32), t


def assign(
    origins: np.ndarray,
    dirs: np.ndarray,
    boxes: BlockBoxes,
    grid: VisibilityGrid,
    margin: float,
    sky: str = "background",
) -> Assignment:
    """Assign rays origins, dirs (N, 3) float32 (unit dirs) to blocks; see the module docstring."""
    parts = [
        _assign_chunk(origins[s : s + CHUNK_RAYS], dirs[s : s + CHUNK_RAYS], boxes, grid, margin, sky, s)
        for s in range(0, len(origins), CHUNK_RAYS)
    ]
    dropped: dict[str, int] = {}
    for part in parts:
        for reason, count in part.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    return Assignment(
        np.concatenate([np.zeros(0, np.int64), *(p.ray for p in parts)]),
        np.concatenate([np.zeros(0, np.int32), *(p.block for p in parts)]),
        np.concatenate([np.zeros((0, 2), np.float32), *(p.near_far for p in parts)]),
        np.concatenate([np.zeros(0, bool), *(p.background for p in parts)]),
        dropped,
    )


def _groups(values: np.ndarray) -> np.ndarray:
    """(N, 3) -> (ceil(N / GROUP), GROUP, 3), the last group padded with its last row."""
    pad = -len(values) % GROUP
    return np.concatenate([values, np.repeat(values[-1:], pad, axis=0)]).reshape(-1, GROUP, 3)


def _assign_chunk(
    origins: np.ndarray,
    dirs: np.ndarray,
    boxes: BlockBoxes,
    grid: VisibilityGrid,
    margin: float,
    sky: str,
    offset: int,
) -> Assignment:
    valid = np.all(np.isfinite(origins), axis=1) & np.all(np.isfinite(dirs), axis=1)
    valid_index = np.flatnonzero(valid)
    o, d = origins[valid], dirs[valid]
    n = len(o)
    dropped = {"invalid_ray": len(origins) - n}
    if n:
        group, block = np.nonzero(reachable(_groups(o), _groups(d), boxes.outer))  # (Q,) candidate pairs
        ray = (group[:, None] * GROUP + np.arange(GROUP)[None]).reshape(-1)  # (Q * GROUP,)
        block = np.repeat(block, GROUP)
        real = ray < n
        ray, block = ray[real], block[real]
    else:
        ray = block = np.zeros(0, np.int64)
    t0, t1 = _pair_slab(o, 1.0 / _safe(d), ray, boxes.outer[block, 0], boxes.outer[block, 1])
    entry_z = o[ray, 2] + t0 * d[ray, 2]
    crosses = (t1 > t0) & ~((t0 > 0) & (entry_z < boxes.ground[block]))
    ray, block, t0, t1 = ray[crosses], block[crosses], t0[crosses], t1[crosses]

    count = np.bincount(ray, minlength=n)
    first = np.full(n, np.inf, dtype=np.float32)
    last = np.full(n, -np.inf, dtype=np.float32)
    np.minimum.at(first, ray, t0)
    np.maximum.at(last, ray, t0)
    several = np.flatnonzero(count >= 2)
    if several.size:
        hit = np.full(n, np.inf, dtype=np.float32)
        hit[several] = grid.first_hit(o[several], d[several], first[several], last[several] - margin)
        seen = t0 <= hit[ray] + margin
        ray, block, t0, t1 = ray[seen], block[seen], t0[seen], t1[seen]

    near_far = np.stack([t0, t1], axis=-1)
    background = np.zeros(len(ray), dtype=bool)
    none = np.flatnonzero(count == 0)
    if sky == "background" and none.size:
        sky_block, sky_t = nearest_footprint(o[none], d[none], boxes.inner_xy)
        ray = np.concatenate([ray, none])
        block = np.concatenate([block, sky_block])
        near_far = np.concatenate([near_far, np.stack([sky_t, sky_t], axis=-1)])
        background = np.concatenate([background, np.ones(none.size, dtype=bool)])
    else:
        dropped["sky"] = int(none.size)
    return Assignment(valid_index[ray].astype(np.int64) + offset, block.astype(np.int32), near_far, background, dropped)

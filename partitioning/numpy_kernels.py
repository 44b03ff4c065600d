"""The numpy fallback of the compiled partitioning kernels, for machines without numba.

The same rules and arithmetic as `partitioning.assign._assign` and `partitioning.voxels.march` (float32 slab
tests, the distance-field march in float64 cell units), vectorised over rays instead of looping over them, so
the results are identical pair for pair (a test holds them equal); only the speed differs.
"""

from __future__ import annotations

import numpy as np

from partitioning.assign import _safe, slab
from partitioning.voxels import _NUDGE, STILL

#: Rays handled at once; bounds the (rays, blocks) temporaries.
CHUNK_RAYS = 1 << 15


def march_rays(
    origins: np.ndarray,
    dirs: np.ndarray,
    t_start: np.ndarray,
    t_stop: np.ndarray,
    distance: np.ndarray,
    grid_origin: np.ndarray,
    cell: np.float32,
) -> np.ndarray:
    """`partitioning.voxels.march` for rays origins, dirs (N, 3) float32 at once: (N,) float32 entry t of
    each ray's first occupied cell in [t_start, t_stop], else inf."""
    out = np.full(len(origins), np.inf, dtype=np.float32)
    per_cell = 1.0 / np.float64(cell)
    p = (origins.astype(np.float64) - grid_origin.astype(np.float64)) * per_cell  # (N, 3) cells
    d = dirs.astype(np.float64)
    moving = d != 0.0
    with np.errstate(divide="ignore"):
        inv = np.where(moving, 1.0 / d, STILL)  # (N, 3)
    leaves_by = np.where(d >= 0.0, 1.0 - p, -p)  # (N, 3) the side by which the ray leaves a cell, less p
    lo = t_start.astype(np.float64) * per_cell
    hi = t_stop.astype(np.float64) * per_cell
    ok = t_stop >= t_start
    for a, size in enumerate(distance.shape):  # clip to the grid's box
        ok &= moving[:, a] | ((p[:, a] >= 0.0) & (p[:, a] < size))
        ta, tb = -p[:, a] * inv[:, a], (size - p[:, a]) * inv[:, a]
        lo = np.where(moving[:, a], np.maximum(lo, np.minimum(ta, tb)), lo)
        hi = np.where(moving[:, a], np.minimum(hi, np.maximum(ta, tb)), hi)
    t = lo.copy()
    active = np.flatnonzero(ok & (lo <= hi))
    upper = np.array(distance.shape) - 1
    while active.size:
        ta = t[active]
        ijk = np.clip((p[active] + ta[:, None] * d[active]).astype(np.int64), 0, upper)  # (A, 3)
        far = distance[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        hit = far == 0
        done = active[hit]
        out[done] = (np.maximum(ta[hit] - _NUDGE, lo[done]) * np.float64(cell)).astype(np.float32)
        reach = far.astype(np.float64) - 1.0  # (A,) cells of the empty cube on each side of this one
        leave = (ijk + leaves_by[active]) * inv[active] + reach[:, None] * np.abs(inv[active])  # (A, 3)
        t[active] = np.maximum(np.minimum(leave[:, 0], np.minimum(leave[:, 1], leave[:, 2])), ta) + _NUDGE
        active = active[~hit]
        active = active[t[active] <= hi[active]]
    return out


def nearest_footprint(origins: np.ndarray, dirs: np.ndarray, inner_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`partitioning.assign.nearest_footprint`, vectorised: block (N,) int32 and t (N,) float32."""
    o2 = origins[:, :2]
    block = np.zeros(len(o2), dtype=np.int64)
    t = np.zeros(len(o2), dtype=np.float32)
    keys = np.ascontiguousarray(o2, dtype=np.float32).view(np.uint64).reshape(-1)  # one key per origin (x, y)
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
        block[missed] = (gap * gap).sum(axis=-1).argmin(axis=1)[inverse[missed]]
        t[missed] = 0.0
    return block.astype(np.int32), t


def _may_cross(o: np.ndarray, inv: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """(G, B) bool: `partitioning.assign._may_cross` for groups of rays, origins o and inverse directions inv
    (G, n, 3) float32, against boxes outer (B, 2, 3) float32."""
    enter = np.zeros((len(o), len(outer)), dtype=np.float32)
    leave = np.full_like(enter, np.inf)
    for a in range(3):
        origin = np.stack([o[:, :, a].max(axis=1), o[:, :, a].min(axis=1)], axis=-1)  # (G, 2)
        inverse = np.stack([inv[:, :, a].min(axis=1), inv[:, :, a].max(axis=1)], axis=-1)  # (G, 2)
        gap = outer[None, :, :, a, None] - origin[:, None, None, :]  # (G, B, plane, origin)
        t = (gap[..., None] * inverse[:, None, None, None, :]).reshape(len(o), len(outer), 8)  # corners
        np.maximum(enter, t.min(axis=-1), out=enter)
        np.minimum(leave, t.max(axis=-1), out=leave)
    return enter < leave


def assign_arrays(
    o: np.ndarray,
    d: np.ndarray,
    outer: np.ndarray,
    inner_xy: np.ndarray,
    ground: np.ndarray,
    distance: np.ndarray,
    grid_origin: np.ndarray,
    cell: np.float32,
    margin: np.float32,
    keep_sky: bool,
    group: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """`partitioning.assign._assign`: ray (M,) int32, block (M,) int32, near_far (M, 2) float32, background
    (M,) bool, the numbers of invalid and of dropped sky rays; pairs in (ray, block) order."""
    ray, block, near_far, background = [], [], [], []
    invalid = dropped_sky = 0
    for start in range(0, len(o), CHUNK_RAYS):
        chunk = slice(start, start + CHUNK_RAYS)
        valid = np.all(np.isfinite(o[chunk]), axis=1) & np.all(np.isfinite(d[chunk]), axis=1)
        rows = np.flatnonzero(valid) + start
        invalid += len(valid) - len(rows)
        pairs = _foreground(o[rows], d[rows], outer, ground, distance, grid_origin, cell, margin, group)
        crossing = np.zeros(len(rows), dtype=bool)
        crossing[pairs[0]] = True
        ray.append(rows[pairs[0]])
        block.append(pairs[1])
        near_far.append(pairs[2])
        background.append(np.zeros(len(pairs[0]), dtype=bool))
        sky = np.flatnonzero(~crossing)
        if not keep_sky:
            dropped_sky += sky.size
        elif sky.size:
            sky_block, sky_t = nearest_footprint(o[rows[sky]], d[rows[sky]], inner_xy)
            ray.append(rows[sky])
            block.append(sky_block)
            near_far.append(np.stack([sky_t, sky_t], axis=-1))
            background.append(np.ones(sky.size, dtype=bool))
    ray_all = np.concatenate([np.zeros(0, np.int32), *ray]).astype(np.int32)
    block_all = np.concatenate([np.zeros(0, np.int32), *block]).astype(np.int32)
    order = np.lexsort((block_all, ray_all))
    return (
        ray_all[order],
        block_all[order],
        np.concatenate([np.zeros((0, 2), np.float32), *near_far])[order],
        np.concatenate([np.zeros(0, bool), *background])[order],
        invalid,
        dropped_sky,
    )


def _foreground(
    o: np.ndarray,
    d: np.ndarray,
    outer: np.ndarray,
    ground: np.ndarray,
    distance: np.ndarray,
    grid_origin: np.ndarray,
    cell: np.float32,
    margin: np.float32,
    group: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (ray, block) pairs of valid rays o, d (N, 3) that train a block: ray (M,) int64 into o, block (M,),
    near_far (M, 2) float32."""
    n = len(o)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 2), np.float32)
    pad = -n % group  # the last group padded with its last ray
    grouped_o = np.concatenate([o, np.repeat(o[-1:], pad, axis=0)]).reshape(-1, group, 3)
    inv = np.float32(1.0) / _safe(d)
    grouped_inv = np.concatenate([inv, np.repeat(inv[-1:], pad, axis=0)]).reshape(-1, group, 3)
    group_of, block = np.nonzero(_may_cross(grouped_o, grouped_inv, outer))  # (Q,) candidate (group, block)
    ray = (group_of[:, None] * group + np.arange(group)[None]).reshape(-1)
    block = np.repeat(block, group)
    real = ray < n
    ray, block = ray[real], block[real]
    t0 = np.zeros(len(ray), dtype=np.float32)
    t1 = np.full(len(ray), np.inf, dtype=np.float32)
    for axis in range(3):
        origin, step = o[ray, axis], inv[ray, axis]
        ta, tb = (outer[block, 0, axis] - origin) * step, (outer[block, 1, axis] - origin) * step
        np.maximum(t0, np.minimum(ta, tb), out=t0)
        np.minimum(t1, np.maximum(ta, tb), out=t1)
    crosses = (t1 > t0) & ~((t0 > 0) & (o[ray, 2] + t0 * d[ray, 2] < ground[block]))
    ray, block, t0, t1 = ray[crosses], block[crosses], t0[crosses], t1[crosses]
    count = np.bincount(ray, minlength=n)
    first = np.full(n, np.inf, dtype=np.float32)
    last = np.full(n, -np.inf, dtype=np.float32)
    np.minimum.at(first, ray, t0)
    np.maximum.at(last, ray, t0)
    several = np.flatnonzero(count >= 2)
    seen = np.full(n, np.inf, dtype=np.float32)
    hit = march_rays(o[several], d[several], first[several], last[several] - margin, distance, grid_origin, cell)
    seen[several] = hit + margin
    keep = t0 <= seen[ray]
    return ray[keep], block[keep].astype(np.int32), np.stack([t0[keep], t1[keep]], axis=-1)

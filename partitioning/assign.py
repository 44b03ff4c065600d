"""Ray-to-block assignment: which blocks train on a ray, over which segment.

A ray trains a block when its segment crosses the block's outer box (a slab test), does not enter it
from under the block's ground (it would have met the ground outside the box, where there may be no SfM
points to say so), and starts no later than the ray's first surface voxel plus a margin: a block does
not train on pixels it cannot see. The block's near/far is that segment. Rays that cross no box (sky) go
to the background of the first block whose ground footprint they pass over, with an empty segment
(near == far), or are dropped with `sky="drop"`.

One compiled pass over the rays (numba): consecutive rays are grouped (callers pass image tiles, see
`tile_order`), a slab test on intervals per group (bounds on its origins and inverse directions; clusters of
blocks first) keeps the few blocks the group may cross, the slab test runs against those only (a box against
all the group's rays at once, in SIMD lanes), and one visibility march per ray (jumping across empty space; the
group's rays step in turn) serves every block it crosses.
Without numba, `partitioning.numpy_kernels` gives the same results, vectorised over rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from partitioning.compiled import COMPILED, inlined, jit
from partitioning.voxels import MARCH_STATE, VisibilityGrid, march

#: Direction components smaller than this are treated as this (keeps the slab test finite).
_TINY = np.float32(1e-12)
#: Consecutive rays sharing one test of which boxes they may cross (a 16 x 16 pixel tile).
GROUP = 256
#: Rays one `assign` call takes at most: pairs index them in int32 (half the memory and traffic of int64 for the
#: tens of millions of pairs a batch holds).
MAX_RAYS = np.iinfo(np.int32).max
#: Boxes tested together before one by one: CLUSTER consecutive block ids (part of a row of the layout) under the
#: box holding them, so that a group of rays, or a sky ray, passes over most blocks of a large layout at once.
CLUSTER = 8


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
    """M (ray, block) pairs in ray order: ray (M,) int32 indices into the input rays, block (M,) int32,
    near_far (M, 2) float32 segment, background (M,) bool (near == far); dropped rays by reason."""

    ray: np.ndarray
    block: np.ndarray
    near_far: np.ndarray
    background: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PairBuffers:
    """Room for `assign`'s (ray, block) pairs: ray (C,) int32, block (C,) int32, near_far (C, 2) float32, background
    (C,) bool. The pairs of N rays take about 1.5 N rows and `for_rays` gives 2 N + 16 (more are allocated if
    needed); a caller allocates them where their memory is reused (see `partitioning.tasks`)."""

    ray: np.ndarray
    block: np.ndarray
    near_far: np.ndarray
    background: np.ndarray

    def __post_init__(self) -> None:
        """The compiled kernel writes into these unchecked: refuse anything but the layout it expects."""
        capacity = len(self.ray)
        expected = {
            "ray": (np.int32, ()),
            "block": (np.int32, ()),
            "near_far": (np.float32, (2,)),
            "background": (np.bool_, ()),
        }
        for name, (dtype, shape) in expected.items():
            array = getattr(self, name)
            if array.dtype != dtype or array.shape != (capacity, *shape) or not array.flags.c_contiguous:
                raise ValueError(
                    f"PairBuffers.{name}: {array.dtype} {array.shape}, not C-contiguous {np.dtype(dtype)} "
                    f"{(capacity, *shape)}"
                )

    @classmethod
    def for_rays(cls, n: int) -> PairBuffers:
        return cls.for_pairs(2 * n + 16)

    @classmethod
    def for_pairs(cls, capacity: int) -> PairBuffers:
        return cls(
            np.empty(capacity, np.int32),
            np.empty(capacity, np.int32),
            np.empty((capacity, 2), np.float32),
            np.empty(capacity, np.bool_),
        )


def tile_order(width: int, height: int, tile: int = 16) -> np.ndarray:
    """(W*H,) permutation of row-major pixel indices into tile x tile tiles, so GROUP rays point alike."""
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


def nearest_footprint(origins: np.ndarray, dirs: np.ndarray, inner_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rays (N, 3) crossing no box: the block whose footprint (B, 2, 2) the ray's ground projection
    passes over first (the one under its origin, if any), else (a ray leaving the layout) the footprint
    nearest its origin. Returns block (N,) int32 and the distance t (N,) float32 where the ray reaches
    that footprint (0 if none)."""
    origins = np.ascontiguousarray(origins, dtype=np.float32)
    dirs = np.ascontiguousarray(dirs, dtype=np.float32)
    inner_xy = np.ascontiguousarray(inner_xy, dtype=np.float32)
    if not COMPILED:
        from partitioning import numpy_kernels  # imports this module: loaded only where it runs

        return numpy_kernels.nearest_footprint(origins, dirs, inner_xy)
    return _nearest_footprints(origins, dirs, inner_xy)


@jit
def _nearest_footprints(origins: np.ndarray, dirs: np.ndarray, inner_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    block = np.empty(len(origins), dtype=np.int32)
    t = np.empty(len(origins), dtype=np.float32)
    bounds, footprints = _holding(inner_xy, len(inner_xy))[0], _holding(inner_xy, CLUSTER)
    under = nearest = -1
    x = y = np.nan
    for r in range(len(origins)):
        if origins[r, 0] != x or origins[r, 1] != y:  # rays of one camera share their origin
            x, y = origins[r, 0], origins[r, 1]
            under, nearest = _over(origins[r], inner_xy)
        block[r], t[r] = under, np.float32(0.0)
        if under < 0:
            block[r], t[r] = _sky_block(
                origins[r, 0], origins[r, 1], dirs[r, 0], dirs[r, 1], inner_xy, bounds, footprints, nearest
            )
    return block, t


def assign(
    origins: np.ndarray,
    dirs: np.ndarray,
    boxes: BlockBoxes,
    grid: VisibilityGrid,
    margin: float,
    sky: str = "background",
    out: PairBuffers | None = None,
) -> Assignment:
    """Assign rays origins, dirs (N, 3) float32 (unit dirs) to blocks; see the module docstring. The pairs are
    views into `out` when given and large enough (the numpy fallback allocates its own)."""
    if len(origins) > MAX_RAYS:
        raise ValueError(f"assign: {len(origins)} rays in one call; it takes at most {MAX_RAYS} (one image at a time)")
    o = np.ascontiguousarray(origins, dtype=np.float32)
    d = np.ascontiguousarray(dirs, dtype=np.float32)
    args = (
        o,
        d,
        np.ascontiguousarray(boxes.outer, dtype=np.float32),
        np.ascontiguousarray(boxes.inner_xy, dtype=np.float32),
        np.ascontiguousarray(boxes.ground, dtype=np.float32),
        grid.distance,
        grid.origin,
        np.float32(grid.cell),
        np.float32(margin),
        sky == "background",
    )
    if COMPILED:
        pairs = out if out is not None else PairBuffers.for_rays(len(o))
        found = _assign(*args, pairs.ray, pairs.block, pairs.near_far, pairs.background)
    else:
        from partitioning import numpy_kernels  # imports this module: loaded only where it runs

        found = numpy_kernels.assign_arrays(*args, group=GROUP)
    ray, block, near_far, background, invalid, dropped_sky = found
    dropped = {"invalid_ray": int(invalid)}
    if sky != "background":
        dropped["sky"] = int(dropped_sky)
    return Assignment(ray, block, near_far, background, dropped)


@inlined
def _safe_component(value: np.float32) -> np.float32:
    """A direction component with magnitude at least _TINY (keeps the slab test finite), as `_safe`."""
    if abs(value) < _TINY:
        return -_TINY if value < 0 else _TINY
    return value


@inlined
def _over(origin: np.ndarray, inner_xy: np.ndarray) -> tuple[int, int]:
    """For a ray origin: the first block whose footprint (B, 2, 2) holds its ground projection (else -1), and
    the block whose footprint is nearest to it (the first of equals; that one when it lies over one)."""
    nearest_block, nearest_gap = -1, np.inf
    for b in range(len(inner_xy)):
        if inner_xy[b, 0, 0] <= origin[0] <= inner_xy[b, 1, 0] and inner_xy[b, 0, 1] <= origin[1] <= inner_xy[b, 1, 1]:
            return b, b
        gap = np.float32(0.0)
        for a in range(2):
            g = max(inner_xy[b, 0, a] - origin[a], origin[a] - inner_xy[b, 1, a], np.float32(0.0))
            gap += g * g
        if gap < nearest_gap:
            nearest_block, nearest_gap = b, gap
    return -1, nearest_block


@inlined
def _footprint_entry(
    lo_x: float, lo_y: float, hi_x: float, hi_y: float, ox: float, oy: float, inv_x: float, inv_y: float
) -> tuple[np.float32, np.float32]:
    """Entry and exit t (t >= 0) of a ray's ground projection, from (ox, oy), through a rectangle; it crosses where
    exit >= entry."""
    ta, tb = (lo_x - ox) * inv_x, (hi_x - ox) * inv_x
    tc, td = (lo_y - oy) * inv_y, (hi_y - oy) * inv_y
    return max(np.float32(0.0), min(ta, tb), min(tc, td)), min(max(ta, tb), max(tc, td))


@inlined
def _sky_block(
    ox: float,
    oy: float,
    dx: float,
    dy: float,
    inner_xy: np.ndarray,
    bounds: np.ndarray,
    footprints: np.ndarray,
    nearest: int,
) -> tuple[int, np.float32]:
    """`nearest_footprint` for one ray from (ox, oy, .) along (dx, dy, .) whose origin lies over no footprint;
    `nearest` is the footprint nearest the origin (`_over`), bounds (2, 2) the rectangle holding every footprint
    and footprints (C, 2, 2) the rectangles holding each CLUSTER of them (`_holding`)."""
    zero = np.float32(0.0)
    inv_x, inv_y = np.float32(1.0) / _safe_component(dx), np.float32(1.0) / _safe_component(dy)
    best, best_t = -1, np.float32(np.inf)
    enter, leave = _footprint_entry(bounds[0, 0], bounds[0, 1], bounds[1, 0], bounds[1, 1], ox, oy, inv_x, inv_y)
    if leave >= enter:
        # no footprint is entered before the bounds: the first is one holding the point where the ray enters them
        px, py = ox + enter * dx, oy + enter * dy
        for k in range(len(footprints)):
            if not (
                footprints[k, 0, 0] <= px <= footprints[k, 1, 0] and footprints[k, 0, 1] <= py <= footprints[k, 1, 1]
            ):
                continue
            for b in range(k * CLUSTER, min(len(inner_xy), (k + 1) * CLUSTER)):
                if inner_xy[b, 0, 0] <= px <= inner_xy[b, 1, 0] and inner_xy[b, 0, 1] <= py <= inner_xy[b, 1, 1]:
                    t0, t1 = _footprint_entry(
                        inner_xy[b, 0, 0], inner_xy[b, 0, 1], inner_xy[b, 1, 0], inner_xy[b, 1, 1], ox, oy, inv_x, inv_y
                    )
                    if t1 >= t0 and t0 < best_t:
                        best, best_t = b, t0
        if best < 0:  # footprints that leave gaps in the bounds (or rounding at an edge): try every one
            for b in range(len(inner_xy)):
                t0, t1 = _footprint_entry(
                    inner_xy[b, 0, 0], inner_xy[b, 0, 1], inner_xy[b, 1, 0], inner_xy[b, 1, 1], ox, oy, inv_x, inv_y
                )
                if t1 >= t0 and t0 < best_t:
                    best, best_t = b, t0
        if best >= 0:
            return best, best_t
    return nearest, zero


@jit
def _holding(boxes: np.ndarray, size: int) -> np.ndarray:
    """(ceil(B / size), 2, D) float32: the box holding each `size` consecutive boxes of (B, 2, D). It holds them
    exactly in float32, so a slab test that no ray passes for it, no ray passes for them. `size` CLUSTER gives the
    clusters; B, the rectangle holding every footprint."""
    count = (len(boxes) + size - 1) // size
    out = np.empty((count, 2, boxes.shape[2]), dtype=np.float32)
    for k in range(count):
        members = boxes[k * size : (k + 1) * size]
        for a in range(boxes.shape[2]):
            out[k, 0, a] = members[:, 0, a].min()
            out[k, 1, a] = members[:, 1, a].max()
    return out


@inlined
def _axis_span(
    lo: np.float32, hi: np.float32, o_min: np.float32, o_max: np.float32, i_min: np.float32, i_max: np.float32
) -> tuple[np.float32, np.float32]:
    """Bounds on where rays, origins in [o_min, o_max] and inverse directions in [i_min, i_max] on one axis, enter
    and leave the slab [lo, hi] of that axis: (plane - origin) * inverse is monotone in each, so its extremes lie
    at the corners, in float32 as in the slab test (rounding keeps the order)."""
    a, b, c, e = (lo - o_max) * i_min, (lo - o_max) * i_max, (lo - o_min) * i_min, (lo - o_min) * i_max
    f, g, h, k = (hi - o_max) * i_min, (hi - o_max) * i_max, (hi - o_min) * i_min, (hi - o_min) * i_max
    enter = min(min(min(a, b), min(c, e)), min(min(f, g), min(h, k)))
    leave = max(max(max(a, b), max(c, e)), max(max(f, g), max(h, k)))
    return enter, leave


@inlined
def _spans(x: np.ndarray, y: np.ndarray, z: np.ndarray, valid: np.ndarray, g: int, size: int, out: np.ndarray) -> None:
    """out (2, 3) = the (min, max) of x, y, z (GROUP,) float32 over the group's valid rays (valid[g + j])."""
    x_lo = y_lo = z_lo = np.float32(np.inf)
    x_hi = y_hi = z_hi = np.float32(-np.inf)
    for j in range(size):
        if valid[g + j]:
            x_lo, x_hi = min(x_lo, x[j]), max(x_hi, x[j])
            y_lo, y_hi = min(y_lo, y[j]), max(y_hi, y[j])
            z_lo, z_hi = min(z_lo, z[j]), max(z_hi, z[j])
    out[0, 0], out[0, 1], out[0, 2], out[1, 0], out[1, 1], out[1, 2] = x_lo, y_lo, z_lo, x_hi, y_hi, z_hi


@inlined
def _may_cross(box: np.ndarray, origin_span: np.ndarray, inverse_span: np.ndarray) -> bool:
    """Whether any ray of a group, origins within origin_span (2, 3) and inverse directions within inverse_span
    (2, 3) (min and max per axis), may cross box (2, 3): an interval slab test that never misses a crossing."""
    enter, leave = np.float32(0.0), np.float32(np.inf)
    for a in range(3):
        t0, t1 = _axis_span(
            box[0, a], box[1, a], origin_span[0, a], origin_span[1, a], inverse_span[0, a], inverse_span[1, a]
        )
        enter, leave = max(enter, t0), min(leave, t1)
    return enter < leave


@inlined
def _slab_lanes(
    box: np.ndarray,
    ground: np.float32,
    ox: np.ndarray,
    oy: np.ndarray,
    oz: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    iz: np.ndarray,
    dz: np.ndarray,
    size: int,
    t0s: np.ndarray,
    t1s: np.ndarray,
    crosses: np.ndarray,
) -> None:
    """The slab test of rays [0, size) (origins ox, oy, oz, inverse directions ix, iy, iz, dz the direction's z)
    against one box (2, 3): entry t0s, exit t1s (t >= 0), and whether each ray crosses it without entering
    from under its ground. Branch-free over rays, so it compiles to SIMD."""
    zero = np.float32(0.0)
    lo_x, lo_y, lo_z, hi_x, hi_y, hi_z = box[0, 0], box[0, 1], box[0, 2], box[1, 0], box[1, 1], box[1, 2]
    for j in range(size):
        ta, tb = (lo_x - ox[j]) * ix[j], (hi_x - ox[j]) * ix[j]
        tc, td = (lo_y - oy[j]) * iy[j], (hi_y - oy[j]) * iy[j]
        te, tf = (lo_z - oz[j]) * iz[j], (hi_z - oz[j]) * iz[j]
        t0 = max(max(max(zero, min(ta, tb)), min(tc, td)), min(te, tf))
        t1 = min(min(max(ta, tb), max(tc, td)), max(te, tf))
        t0s[j], t1s[j] = t0, t1
        crosses[j] = (t1 > t0) & ((t0 <= zero) | (oz[j] + t0 * dz[j] >= ground))


@jit
def _assign(
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
    ray: np.ndarray,
    block: np.ndarray,
    near_far: np.ndarray,
    background: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """`assign` over rays o, d (N, 3) float32 into the pair buffers ray, block, near_far, background (`PairBuffers`,
    replaced by larger ones when full): ray (M,) int32, block (M,) int32, near_far (M, 2) float32, background (M,)
    bool, and the numbers of invalid and of dropped sky rays."""
    n, num_boxes = len(o), len(outer)
    bounds, footprints, clusters = (
        _holding(inner_xy, len(inner_xy))[0],
        _holding(inner_xy, CLUSTER),
        _holding(outer, CLUSTER),
    )
    valid = np.empty(n, dtype=np.bool_)
    zero = np.float32(0.0)
    for r in range(n):  # x * 0 is 0 for finite x, nan for inf and nan: a branch-free finiteness test
        valid[r] = (
            o[r, 0] * zero + o[r, 1] * zero + o[r, 2] * zero + d[r, 0] * zero + d[r, 1] * zero + d[r, 2] * zero == zero
        )
    capacity = len(ray)
    candidates = np.empty(num_boxes, dtype=np.int64)
    origin_span, inverse_span = np.empty((2, 3), np.float32), np.empty((2, 3), np.float32)  # a group's (min, max)
    # a group's rays, one array per coordinate, so the slab test runs over rays in SIMD lanes
    ox, oy, oz = np.empty(GROUP, np.float32), np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
    ix, iy, iz = np.empty(GROUP, np.float32), np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
    dz = np.empty(GROUP, np.float32)
    t0s = np.empty((num_boxes, GROUP), np.float32)  # (candidate, ray) entry and exit
    t1s = np.empty((num_boxes, GROUP), np.float32)
    crosses = np.empty((num_boxes, GROUP), np.bool_)
    crossed = np.empty(GROUP, np.int64)  # per ray: boxes crossed, and the first and last entry into one
    first, last = np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
    seen = np.empty(GROUP, np.float32)  # per ray: its first surface voxel plus the margin, inf if not marched
    rows, t_start, t_stop = np.empty(GROUP, np.int64), np.empty(GROUP, np.float32), np.empty(GROUP, np.float32)
    hits, state, active = np.empty(GROUP, np.float32), np.empty((GROUP, MARCH_STATE)), np.empty(GROUP, np.int64)
    inf = np.float32(np.inf)
    m = dropped_sky = 0
    for g in range(0, n, GROUP):
        end = min(n, g + GROUP)
        if not valid[g:end].any():
            continue
        size = end - g
        for j in range(size):
            r = g + j
            ox[j], oy[j], oz[j], dz[j] = o[r, 0], o[r, 1], o[r, 2], d[r, 2]
            ix[j] = np.float32(1.0) / _safe_component(d[r, 0])
            iy[j] = np.float32(1.0) / _safe_component(d[r, 1])
            iz[j] = np.float32(1.0) / _safe_component(d[r, 2])
        _spans(ox, oy, oz, valid, g, size, origin_span)
        _spans(ix, iy, iz, valid, g, size, inverse_span)
        c = 0
        for k in range(len(clusters)):
            if _may_cross(clusters[k], origin_span, inverse_span):
                for b in range(k * CLUSTER, min(num_boxes, (k + 1) * CLUSTER)):
                    candidates[c] = b
                    c += _may_cross(outer[b], origin_span, inverse_span)
        for i in range(c):
            b = candidates[i]
            _slab_lanes(outer[b], ground[b], ox, oy, oz, ix, iy, iz, dz, size, t0s[i], t1s[i], crosses[i])
        if m + size * max(c, 1) > capacity:  # a ray gives at most one pair per candidate, or one sky pair
            capacity = 2 * capacity + size * max(c, 1)
            ray = np.concatenate((ray, np.empty(capacity - len(ray), dtype=np.int32)))
            block = np.concatenate((block, np.empty(capacity - len(block), dtype=np.int32)))
            near_far = np.concatenate((near_far, np.empty((capacity - len(near_far), 2), dtype=np.float32)))
            background = np.concatenate((background, np.empty(capacity - len(background), dtype=np.bool_)))
        for j in range(size):
            crossed[j], first[j], last[j] = 0, inf, -inf
        for i in range(c):  # box by box over the rays, without branches: SIMD lanes again
            for j in range(size):
                crossed[j] += crosses[i, j]
                first[j] = min(first[j], t0s[i, j] if crosses[i, j] else inf)
                last[j] = max(last[j], t0s[i, j] if crosses[i, j] else -inf)
        queued = 0  # rays crossing several boxes, marched together: the visibility of the later ones
        for j in range(size):
            if crossed[j] >= 2 and valid[g + j]:
                rows[queued], t_start[queued], t_stop[queued] = g + j, first[j], last[j] - margin
                queued += 1
        march(o, d, rows, t_start, t_stop, queued, distance, grid_origin, cell, hits, state, active)
        for j in range(size):
            seen[j] = inf
        for k in range(queued):
            seen[rows[k] - g] = hits[k] + margin
        for i in range(c):  # a box a ray enters past its first surface voxel (and the margin) is not seen
            for j in range(size):
                crosses[i, j] &= t0s[i, j] <= seen[j]
        under, nearest, x, y = -1, -1, np.nan, np.nan  # `_over` the origin (x, y): a group's rays share origins
        for j in range(size):
            r = g + j
            if not valid[r]:
                continue
            if crossed[j] == 0:  # sky
                if not keep_sky:
                    dropped_sky += 1
                    continue
                if o[r, 0] != x or o[r, 1] != y:
                    x, y = o[r, 0], o[r, 1]
                    under, nearest = _over(o[r], inner_xy)
                sky_block, sky_t = under, np.float32(0.0)
                if under < 0:
                    sky_block, sky_t = _sky_block(
                        o[r, 0], o[r, 1], d[r, 0], d[r, 1], inner_xy, bounds, footprints, nearest
                    )
                ray[m], block[m], background[m] = r, sky_block, True
                near_far[m, 0], near_far[m, 1] = sky_t, sky_t
                m += 1
                continue
            for i in range(c):
                if crosses[i, j]:
                    ray[m], block[m], background[m] = r, candidates[i], False
                    near_far[m, 0], near_far[m, 1] = t0s[i, j], t1s[i, j]
                    m += 1
    return ray[:m], block[:m], near_far[:m], background[:m], n - valid.sum(), dropped_sky

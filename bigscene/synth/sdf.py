"""The city's signed distance function in torch: analytic primitives, their union, and a grid that
limits each point's work to the primitives near it.

Outside each primitive the distances are exact for prisms (exact extrusions of exact 2D rounded rectangles)
and conservative bounds for ellipsoids, the rolling ground and the ground-following sidewalk slabs (each
divided by its Lipschitz constant), so sphere tracing never steps through a surface. Union is `min`.

For tracing, the same primitives also give ray-aware safe steps (`CitySDF.step`): exact ray entry distances
for prisms and ellipsoids, and bounds divided by how fast a ray can close on them for the ground and slabs.
"""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np
import torch

from bigscene.synth.layout import Layout

_FAR = 1.0e6  # where the padding primitives live
_STYLE_COLS = 11  # wall rgb, roof rgb, floor h, bay w, window w, window h, base z (tree tints use the first 3)
_FULL_CHUNK = 64  # primitives per pass when evaluating the ungridded SDF
_PAD = {
    "prisms": [_FAR, _FAR, 0.0, 1.0, 1.0, 1.0, 0.0],
    "slabs": [_FAR, _FAR, 1.0, 1.0, 0.0, 0.0],
    "ellipsoids": [_FAR, _FAR, 0.0, 1.0, 1.0, 1.0],
}  # one unused row per kind keeps tensors non-empty
#: Grid lists by kind, and the primitive table each indexes: sharp boxes and rounded prisms (vertical
#: cylinders, rounded boxes) share the prism table but are cast differently.
_KINDS = {"slabs": "slabs", "boxes": "prisms", "rounds": "prisms", "ellipsoids": "ellipsoids"}


class Material(IntEnum):
    GROUND = 0  # roads and open ground, told apart by position
    SIDEWALK = 1
    PARK = 2
    BUILDING = 3
    ROOF_UNIT = 4
    TRUNK = 5
    FOLIAGE = 6
    TRANSIENT = 7


def rect_sdf(dx: torch.Tensor, dy: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Exact 2D signed distance to a rounded rectangle centred at the origin."""
    qx = dx.abs() - (a - r)
    qy = dy.abs() - (b - r)
    return torch.hypot(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0) - r


def prism_sdf(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Exact distance from points (N, 3) to prisms (cx, cy, z0, z1, half_a, half_b, radius), given as (K, 7)
    shared by all points or (N, K, 7) per point -> (N, K)."""
    cx, cy, z0, z1, a, b, r = params.unbind(-1)
    d2 = rect_sdf(points[:, 0:1] - cx, points[:, 1:2] - cy, a, b, r)
    z = points[:, 2:3]
    wz = torch.maximum(z0 - z, z - z1)
    return torch.maximum(d2, wz).clamp_max(0) + torch.hypot(d2.clamp_min(0), wz.clamp_min(0))


def slab_sdf(points: torch.Tensor, params: torch.Tensor, ground_h: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Distance bound from points (N, 3) to ground-following slabs (cx, cy, half_a, half_b, radius, top) whose
    top is `top` above the ground h (N,): max(footprint distance, height above the top / L) -> (N, K)."""
    cx, cy, a, b, r, top = params.unbind(-1)
    d2 = rect_sdf(points[:, 0:1] - cx, points[:, 1:2] - cy, a, b, r)
    return torch.maximum(d2, (points[:, 2:3] - ground_h[:, None] - top) / lipschitz)


def along_ray(value: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """A safe step along a ray for a function that falls at most `rate` per unit of travel: value / rate, or
    infinity when it cannot fall; non-positive values (inside) pass through."""
    step = torch.where(rate > 1e-6, value / rate.clamp_min(1e-6), torch.full_like(value, float("inf")))
    return torch.where(value <= 0, value, step)


def ellipsoid_sdf(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Distance bound from points (N, 3) to ellipsoids (cx, cy, cz, rx, ry, rz) ((K, 6) or (N, K, 6)) -> (N, K).

    (|p / r| - 1) * min(r) is 1-Lipschitz and zero on the surface, hence a bound; exact for spheres.
    """
    centre, radii = params[..., :3], params[..., 3:]
    q = (points[:, None, :] - centre) / radii  # (N, K, 3)
    return (q.norm(dim=-1) - 1.0) * radii.amin(-1)


def _interval(offset_lo: torch.Tensor, offset_hi: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray parameter interval (M,) inside a slab lo <= x <= hi, from the offsets lo - x, hi - x and 1 / dir."""
    t1, t2 = offset_lo * inv, offset_hi * inv
    return torch.minimum(t1, t2), torch.maximum(t1, t2)


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def rounded_rect_intervals(
    points: torch.Tensor,
    dirs: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Where rays (M, 3) from points (M, 3) are over an axis-aligned rounded rectangle (M,) each): one
    (t_in, t_out) interval (M,) per convex piece of it (two rectangles and four corner discs); their union
    is the rectangle."""
    px, py, dx, dy = points[:, 0] - cx, points[:, 1] - cy, dirs[:, 0], dirs[:, 1]
    ix, iy = _safe_inverse(dx), _safe_inverse(dy)
    out = []
    for ha, hb in ((a, b - r), (a - r, b)):
        x_in, x_out = _interval(-ha - px, ha - px, ix)
        y_in, y_out = _interval(-hb - py, hb - py, iy)
        out.append((torch.maximum(x_in, y_in), torch.minimum(x_out, y_out)))
    qa = (dx * dx + dy * dy).clamp_min(1e-12)
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            ox, oy = px - sx * (a - r), py - sy * (b - r)
            qb = ox * dx + oy * dy
            disc = qb * qb - qa * (ox * ox + oy * oy - r * r)
            root = torch.where(disc >= 0, disc.clamp_min(0).sqrt(), torch.full_like(disc, float("nan")))
            out.append(((-qb - root) / qa, (-qb + root) / qa))  # NaN (a miss) compares false below
    return out


def box_step(points: torch.Tensor, dirs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Safe step along rays (M, 3) from points (M, 3) to sharp prisms (boxes, (M, 7)) paired one to one ->
    (M,): the exact entry distance when the ray meets the box ahead, infinity when it misses, <= 0 inside."""
    cx, cy, z0, z1, a, b, _ = params.unbind(-1)
    inv = _safe_inverse(dirs)
    x_in, x_out = _interval(cx - a - points[:, 0], cx + a - points[:, 0], inv[:, 0])
    y_in, y_out = _interval(cy - b - points[:, 1], cy + b - points[:, 1], inv[:, 1])
    z_in, z_out = _interval(z0 - points[:, 2], z1 - points[:, 2], inv[:, 2])
    enter = torch.maximum(torch.maximum(x_in, y_in), z_in)
    leave = torch.minimum(torch.minimum(x_out, y_out), z_out)
    return torch.where(leave >= enter.clamp_min(0.0), enter, torch.full_like(enter, float("inf")))


def prism_step(points: torch.Tensor, dirs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Safe step along rays (M, 3) from points (M, 3) to rounded prisms (M, 7) paired one to one -> (M,): the
    exact entry distance when the ray meets the prism ahead, infinity when it misses, 0 inside."""
    cx, cy, z0, z1, a, b, r = params.unbind(-1)
    z_in, z_out = _interval(z0 - points[:, 2], z1 - points[:, 2], _safe_inverse(dirs[:, 2]))
    best = torch.full_like(cx, float("inf"))
    for t_in, t_out in rounded_rect_intervals(points, dirs, cx, cy, a, b, r):
        enter, leave = torch.maximum(t_in, z_in), torch.minimum(t_out, z_out)
        meets = leave >= enter.clamp_min(0.0)
        best = torch.where(meets, torch.minimum(best, enter.clamp_min(0.0)), best)
    return best


def slab_step(
    points: torch.Tensor, dirs: torch.Tensor, params: torch.Tensor, ground_h: torch.Tensor, rate: torch.Tensor
) -> torch.Tensor:
    """Safe step along rays (M, 3) to ground-following slabs (M, 6) paired one to one -> (M,): the later of
    the exact entry over the footprint and the along-ray bound on reaching the top (rate (M,): how fast
    the ray can descend relative to the ground)."""
    cx, cy, a, b, r, top = params.unbind(-1)
    best = torch.full_like(cx, float("inf"))
    over = torch.zeros_like(cx, dtype=torch.bool)
    for t_in, t_out in rounded_rect_intervals(points, dirs, cx, cy, a, b, r):
        meets = t_out >= t_in.clamp_min(0.0)
        over = over | (meets & (t_in <= 0))
        best = torch.where(meets & (t_in > 0), torch.minimum(best, t_in), best)
    footprint = torch.where(over, torch.zeros_like(best), best)
    return torch.maximum(footprint, along_ray(points[:, 2] - ground_h - top, rate))


def ellipsoid_step(points: torch.Tensor, dirs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Safe step along rays (M, 3) to ellipsoids (M, 6) paired one to one -> (M,): the exact entry distance
    (at least the SDF bound, which absorbs rounding at the surface) when the ray meets it ahead, infinity
    when it misses, the SDF bound inside."""
    centre, radii = params[:, :3], params[:, 3:]
    o = (points - centre) / radii  # (M, 3) in the unit-sphere frame
    d = dirs / radii
    qa, qb, qc = (d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) - 1.0
    disc = qb * qb - qa * qc
    root = disc.clamp_min(0).sqrt()
    entry, exit_ = (-qb - root) / qa, (-qb + root) / qa
    sdf = (qc + 1.0).sqrt().sub(1.0) * radii.amin(-1)
    meets = (disc >= 0) & (exit_ > 0)
    step = torch.where(meets, torch.maximum(entry, sdf), torch.full_like(entry, float("inf")))
    return torch.where(qc > 0, step, sdf)


def _csr(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged lists as (flat ids (L,), start (C,), count (C,))."""
    count = torch.tensor([len(x) for x in lists], dtype=torch.long)
    start = torch.cumsum(count, 0) - count
    flat = torch.tensor([i for x in lists for i in x], dtype=torch.long)
    return flat, start, count


class CitySDF:
    """The city as a signed distance field on `device`.

    Primitive ids (what `evaluate(..., with_id=True)` returns): slabs, then prisms, then ellipsoids, each
    kind followed by one unused id, then `ground_id`; transient occluders passed as `extras` get ids from
    `ground_id + 1` on. `material`, `object` and `style` are indexed by id.

    `evaluate` is the fast gridded SDF used for rendering: each point is paired only with the primitives
    listed for its grid cell (those within `margin` of it; ragged lists, so the work follows the local
    count, not the busiest cell), and capped by the distance to the cell grown by `margin`, below which
    nothing unlisted can be. It is a valid distance bound everywhere and equals `full` (the min over every
    primitive) on and near every surface. `__call__` evaluates `full` on tensors or arrays.
    """

    def __init__(self, layout: Layout, device: str | torch.device = "cpu", cell_size: float = 12.0) -> None:
        self.layout = layout
        self.ground = layout.ground
        self.lipschitz = layout.ground.lipschitz
        self.z_top = layout.max_height + 0.5  # nothing solid above
        x0, y0, x1, y1 = layout.extent
        self.far = max(2000.0, 10.0 * math.hypot(x1 - x0, y1 - y0))  # rays give up (haze) beyond

        slabs = [[s.cx, s.cy, s.half_a, s.half_b, s.radius, s.z1] for s in layout.blocks]
        prisms: list[list[float]] = []
        p_material: list[int] = []
        p_object: list[int] = []
        p_style: list[list[float]] = []
        zero_style = [0.0] * _STYLE_COLS
        for i, building in enumerate(layout.buildings):
            for mat, group in ((Material.BUILDING, building.parts), (Material.ROOF_UNIT, building.units)):
                for part in group:
                    prisms.append(part.row())
                    p_material.append(mat)
                    p_object.append(i)
                    p_style.append(building.style.row())
        for i, tree in enumerate(layout.trees):
            prisms.append(tree.trunk.row())
            p_material.append(Material.TRUNK)
            p_object.append(i)
            p_style.append(zero_style)
        ellipsoids = [t.crown.row() for t in layout.trees]

        self.n_slabs, self.n_prisms, self.n_ellipsoids = len(slabs), len(prisms), len(ellipsoids)
        self.prism_base = self.n_slabs + 1
        self.ellipsoid_base = self.prism_base + self.n_prisms + 1
        self.ground_id = self.ellipsoid_base + self.n_ellipsoids + 1
        self.slabs = torch.tensor(slabs + [_PAD["slabs"]], dtype=torch.float32)
        self.prisms = torch.tensor(prisms + [_PAD["prisms"]], dtype=torch.float32)
        self.ellipsoids = torch.tensor(ellipsoids + [_PAD["ellipsoids"]], dtype=torch.float32)

        ground = int(Material.GROUND)
        material = [Material.PARK if park else Material.SIDEWALK for park in layout.parks] + [ground]
        material += p_material + [ground] + [Material.FOLIAGE] * self.n_ellipsoids + [ground, ground]
        obj = list(range(self.n_slabs)) + [0] + p_object + [0] + list(range(self.n_ellipsoids)) + [0, 0]
        style = [zero_style] * (self.n_slabs + 1) + p_style + [zero_style]
        style += [[*t.tint] + [0.0] * (_STYLE_COLS - 3) for t in layout.trees] + [zero_style] * 2
        self.material = torch.tensor([int(m) for m in material], dtype=torch.long)
        self.object = torch.tensor(obj, dtype=torch.long)
        self.style = torch.tensor(style, dtype=torch.float32)
        self._build_grid(layout, cell_size)
        self.to(device)

    def _build_grid(self, layout: Layout, cell_size: float) -> None:
        """A uniform xy grid over the city; each cell lists the primitives whose xy box touches the cell grown
        by `margin`, so nothing unlisted is nearer than the grown cell's boundary."""
        x0, y0, x1, y1 = layout.extent
        nx, ny = max(1, round((x1 - x0) / cell_size)), max(1, round((y1 - y0) / cell_size))
        self.grid_origin = (x0, y0)
        self.cell = ((x1 - x0) / nx, (y1 - y0) / ny)
        self.grid_shape = (nx, ny)
        self.margin = 0.3 * min(self.cell)

        def boxes(rows: torch.Tensor, cx: int, ha: int) -> np.ndarray:  # (K, 4) xmin ymin xmax ymax
            r = rows[:-1].double().numpy()
            return np.stack(
                [r[:, cx] - r[:, ha], r[:, cx + 1] - r[:, ha + 1], r[:, cx] + r[:, ha], r[:, cx + 1] + r[:, ha + 1]],
                axis=-1,
            )

        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        source = {
            "slabs": boxes(self.slabs, 0, 2),
            "prisms": boxes(self.prisms, 0, 4),
            "ellipsoids": boxes(self.ellipsoids, 0, 3),
        }
        every = np.concatenate(list(source.values()))
        self.bbox_xy = (
            tuple(every[:, :2].min(0).tolist() + every[:, 2:].max(0).tolist()) if len(every) else ((0.0, 0.0, 0.0, 0.0))
        )
        rounded = self.prisms[:-1, 6].numpy() > 0
        wanted = {"slabs": None, "boxes": ~rounded, "rounds": rounded, "ellipsoids": None}
        for kind, table in _KINDS.items():
            arr, lists = source[table], []
            for iy in range(ny):
                for ix in range(nx):
                    cx0 = x0 + ix * self.cell[0] - self.margin
                    cy0 = y0 + iy * self.cell[1] - self.margin
                    cx1, cy1 = cx0 + self.cell[0] + 2 * self.margin, cy0 + self.cell[1] + 2 * self.margin
                    touch = (arr[:, 0] < cx1) & (arr[:, 2] > cx0) & (arr[:, 1] < cy1) & (arr[:, 3] > cy0)
                    if wanted[kind] is not None:
                        touch &= wanted[kind]
                    lists.append(np.flatnonzero(touch).tolist())
            self.tables[kind] = _csr(lists)

    def to(self, device: str | torch.device) -> CitySDF:
        self.device = torch.device(device)
        for name in ("slabs", "prisms", "ellipsoids", "material", "object", "style"):
            setattr(self, name, getattr(self, name).to(self.device))
        self.tables = {k: tuple(t.to(self.device) for t in v) for k, v in self.tables.items()}
        return self

    def ground_height(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ground.height(x, y)

    def _cells(self, points: torch.Tensor, dirs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell index (N,) of each point (clamped into the grid) and the distance (N,) below which the cell's
        primitives are all that matter: to the boundary of the cell grown by `margin` (inside the grid) or to
        the box around all primitives (outside it). With ray dirs (N, 3): how far each ray can travel before
        reaching either (infinity if it never does)."""
        x, y = points[:, 0], points[:, 1]
        nx, ny = self.grid_shape
        fx = torch.floor((x - self.grid_origin[0]) / self.cell[0])
        fy = torch.floor((y - self.grid_origin[1]) / self.cell[1])
        inside = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
        ix, iy = fx.clamp(0, nx - 1), fy.clamp(0, ny - 1)
        lx0 = self.grid_origin[0] + ix * self.cell[0] - self.margin
        ly0 = self.grid_origin[1] + iy * self.cell[1] - self.margin
        lx1, ly1 = lx0 + self.cell[0] + 2 * self.margin, ly0 + self.cell[1] + 2 * self.margin
        bx0, by0, bx1, by1 = self.bbox_xy
        if dirs is None:
            cap_in = torch.minimum(torch.minimum(x - lx0, lx1 - x), torch.minimum(y - ly0, ly1 - y))
            ox = torch.maximum(bx0 - x, x - bx1).clamp_min(0)
            cap_out = torch.hypot(ox, torch.maximum(by0 - y, y - by1).clamp_min(0))
        else:
            inv_x = 1.0 / torch.where(dirs[:, 0].abs() < 1e-12, torch.full_like(x, 1e-12), dirs[:, 0])
            inv_y = 1.0 / torch.where(dirs[:, 1].abs() < 1e-12, torch.full_like(y, 1e-12), dirs[:, 1])
            exit_x = torch.maximum((lx0 - x) * inv_x, (lx1 - x) * inv_x)
            exit_y = torch.maximum((ly0 - y) * inv_y, (ly1 - y) * inv_y)
            cap_in = torch.minimum(exit_x, exit_y)
            ax, bx = (bx0 - x) * inv_x, (bx1 - x) * inv_x
            ay, by = (by0 - y) * inv_y, (by1 - y) * inv_y
            t_near = torch.maximum(torch.minimum(ax, bx), torch.minimum(ay, by))
            t_far = torch.minimum(torch.maximum(ax, bx), torch.maximum(ay, by))
            cap_out = torch.where(t_far >= t_near.clamp_min(0), t_near.clamp_min(0), torch.full_like(x, float("inf")))
        return (iy * nx + ix).long(), torch.where(inside, cap_in, cap_out)

    def _pairs(self, kind: str, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(point index (M,), primitive row (M,)) for every primitive listed in each point's cell."""
        flat, start, count = self.tables[kind]
        counts = count[cell]  # (N,)
        total = int(counts.sum())
        point = torch.repeat_interleave(torch.arange(len(cell), device=cell.device), counts, output_size=total)
        offset = start[cell] - (torch.cumsum(counts, 0) - counts)  # (N,) list start minus the point's first pair
        return point, flat[offset[point] + torch.arange(total, device=cell.device)]

    def evaluate(
        self,
        points: torch.Tensor,
        extras: torch.Tensor | None = None,
        with_id: bool = False,
        dirs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gridded SDF at points (N, 3) float32 -> (sdf (N,), primitive id (N,) or None).

        extras: optional (T, 7) prism rows (transient occluders) evaluated against every point.
        dirs: optional unit ray directions (N, 3). Then the result is a safe step along each ray instead of
        the distance: prisms and ellipsoids give their exact entry distance, or infinity when the ray misses
        them; slab footprints and the grid cap give how far the ray goes before reaching them; the ground
        and slab tops are divided by how fast the ray can descend onto them. Rays then hit walls in a step or
        two, graze the ground without crawling, and pass silhouettes without stalling.
        """
        h = self.ground_height(points[:, 0], points[:, 1])  # (N,)
        cell, cap = self._cells(points, dirs)
        above_ground = points[:, 2] - h
        if dirs is None:
            best = above_ground / self.lipschitz
        else:
            flat = torch.hypot(dirs[:, 0], dirs[:, 1])  # how fast xy distances can shrink
            rate = self.ground.slope * flat - dirs[:, 2]  # how fast the height above the ground can shrink
            best = along_ray(above_ground, rate)
        ident = torch.full_like(cell, self.ground_id) if with_id else None
        bases = {"slabs": 0, "prisms": self.prism_base, "ellipsoids": self.ellipsoid_base}
        for kind, table in _KINDS.items():
            point, row = self._pairs(kind, cell)
            if len(point) == 0:
                continue
            p, rows = points[point], getattr(self, table)[row]  # (M, 3), (M, cols)
            if dirs is None:
                d = self._distance(kind, p, rows, h[point])
            elif kind == "slabs":
                d = slab_step(p, dirs[point], rows, h[point], rate[point])
            elif kind == "boxes":
                d = box_step(p, dirs[point], rows)
            elif kind == "rounds":
                d = prism_step(p, dirs[point], rows)
            else:
                d = ellipsoid_step(p, dirs[point], rows)
            nearest = torch.full_like(best, float("inf")).scatter_reduce(0, point, d, "amin")
            if ident is not None:
                win = torch.nonzero((d == nearest[point]) & (d < best[point]))[:, 0]
                ident[point[win]] = bases[table] + row[win]
            best = torch.minimum(best, nearest)
        if extras is not None and len(extras):
            value, arg = prism_sdf(points, extras).min(1)
            if ident is not None:
                ident = torch.where(value < best, self.ground_id + 1 + arg, ident)
            best = torch.minimum(best, value)
        return torch.minimum(best, cap), ident

    def _distance(self, kind: str, points: torch.Tensor, rows: torch.Tensor, ground_h: torch.Tensor) -> torch.Tensor:
        """Distance (bound) (M,) from points (M, 3) to the primitives `rows` (M, cols) of `kind`, pairwise."""
        if kind == "slabs":
            return slab_sdf(points, rows[:, None, :], ground_h, self.lipschitz)[:, 0]
        if kind == "ellipsoids":
            return ellipsoid_sdf(points, rows[:, None, :])[:, 0]
        return prism_sdf(points, rows[:, None, :])[:, 0]

    def sdf(self, points: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
        """Gridded SDF (N,) at points (N, 3) on this field's device."""
        return self.evaluate(points, extras)[0]

    def step(self, points: torch.Tensor, dirs: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
        """Safe step (N,) along unit rays dirs (N, 3) from points (N, 3); see `evaluate`."""
        return self.evaluate(points, extras, dirs=dirs)[0]

    def full(self, points: torch.Tensor) -> torch.Tensor:
        """The min over every primitive, no grid: (N, 3) -> (N,); memory grows with N x 64, not the city."""
        h = self.ground_height(points[:, 0], points[:, 1])
        best = (points[:, 2] - h) / self.lipschitz
        for rows, count, fn in (
            (self.slabs, self.n_slabs, lambda p, c: slab_sdf(p, c, h, self.lipschitz)),
            (self.prisms, self.n_prisms, prism_sdf),
            (self.ellipsoids, self.n_ellipsoids, ellipsoid_sdf),
        ):
            for start in range(0, count, _FULL_CHUNK):
                best = torch.minimum(best, fn(points, rows[start : min(start + _FULL_CHUNK, count)]).amin(1))
        return best

    def __call__(self, points: torch.Tensor | np.ndarray, chunk: int = 65536) -> torch.Tensor | np.ndarray:
        """The true SDF at any points (N, 3): a tensor (any device) or an array in, the same kind out."""
        as_numpy = isinstance(points, np.ndarray)
        pts = torch.from_numpy(np.asarray(points, dtype=np.float32)) if as_numpy else points
        source = pts.device
        pts = pts.to(self.device, torch.float32).reshape(-1, 3)
        out = [self.full(pts[i : i + chunk]) for i in range(0, len(pts), chunk)]
        result = torch.cat(out) if out else torch.zeros(0, device=self.device)
        return result.cpu().numpy() if as_numpy else result.to(source)

"""Procedural materials: albedo (linear RGB) at surface points, rich enough for SIFT.

Every pattern is keyed by world position and object ids through an integer hash, never by a repeating
tile: windows vary one by one (glass, lights, blinds, curtains), shop signs carry random "lettering",
roads have worn markings, stains and repairs, and every surface carries multi-scale value noise plus
scattered spots (stains, vents, flowers, litter) at several sizes: the blobs SIFT detects, in an
arrangement that never repeats.

Noise octaves finer than the pixel footprint (`fp`, metres a pixel covers on the surface) fade to their
mean, as mip-mapping would, so that views at different distances see the same band-limited texture rather
than aliasing.
"""

from __future__ import annotations

import torch

from bigscene.synth.layout import SIDEWALK
from bigscene.synth.sdf import CitySDF, Material, rect_sdf

_MASK = 0xFFFFFFFF
_PRIMES = (0x27D4EB2F, 0x165667B1, 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)
_SIGN_HUES = (
    (0.75, 0.08, 0.06),
    (0.05, 0.25, 0.7),
    (0.9, 0.7, 0.05),
    (0.05, 0.5, 0.2),
    (0.85, 0.85, 0.82),
    (0.5, 0.1, 0.55),
    (0.9, 0.35, 0.05),
    (0.08, 0.08, 0.08),
)
_CAR_PAINT = (
    (0.6, 0.04, 0.03),
    (0.85, 0.85, 0.85),
    (0.03, 0.03, 0.035),
    (0.45, 0.47, 0.5),
    (0.05, 0.15, 0.5),
    (0.8, 0.6, 0.05),
)
_STREET_THINGS = (
    (0.55, 0.1, 0.08),
    (0.1, 0.3, 0.12),
    (0.75, 0.7, 0.2),
    (0.15, 0.2, 0.45),
    (0.08, 0.08, 0.08),
    (0.8, 0.8, 0.78),
)
_FLOWERS = ((0.85, 0.75, 0.1), (0.85, 0.85, 0.85), (0.6, 0.15, 0.5), (0.8, 0.25, 0.1))


def hash_ints(*keys: torch.Tensor | int) -> torch.Tensor:
    """A well-mixed 32-bit hash of up to five integer tensors (broadcast), as float in [0, 1).

    Integer arithmetic only, so it is the same on every device."""
    h = None
    for key, prime in zip(keys, _PRIMES[: len(keys)], strict=True):
        k = key if isinstance(key, torch.Tensor) else torch.tensor(key)
        term = ((k.long() & _MASK) * prime) & _MASK
        h = term if h is None else ((h ^ term) * 0x01000193) & _MASK
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _MASK
    h = ((h ^ (h >> 12)) * 0x297A2D39) & _MASK
    h = h ^ (h >> 15)
    return h.to(torch.float32) * (1.0 / 4294967296.0)


def _fade(freq: float, fp: torch.Tensor) -> torch.Tensor:
    """Weight (N,) of a pattern of `freq` cycles per metre: 1 while a period spans >= 4 pixels, 0 below 2."""
    return (2.0 - 4.0 * freq * fp).clamp(0.0, 1.0)


def noise2(x: torch.Tensor, y: torch.Tensor, freq: float, salt: torch.Tensor | int, fp: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1] with `freq` lattice cells per metre, faded to 0.5 when too fine."""
    sx, sy = x * freq, y * freq
    fx, fy = torch.floor(sx), torch.floor(sy)
    tx, ty = sx - fx, sy - fy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = fx.long(), fy.long()
    a, b = hash_ints(ix, iy, salt), hash_ints(ix + 1, iy, salt)
    c, d = hash_ints(ix, iy + 1, salt), hash_ints(ix + 1, iy + 1, salt)
    value = torch.lerp(torch.lerp(a, b, tx), torch.lerp(c, d, tx), ty)
    return 0.5 + (value - 0.5) * _fade(freq, fp)


def noise3(p: torch.Tensor, freq: float, salt: torch.Tensor | int, fp: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1] of points (N, 3), `freq` cells per metre, faded to 0.5 when too fine."""
    s = p * freq
    f = torch.floor(s)
    t = s - f
    t = t * t * (3 - 2 * t)
    i = f.long()
    corners = [
        hash_ints(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, salt) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)
    ]
    x0 = [torch.lerp(corners[k], corners[k + 1], t[:, 0]) for k in (0, 2, 4, 6)]
    y0 = [torch.lerp(x0[0], x0[1], t[:, 1]), torch.lerp(x0[2], x0[3], t[:, 1])]
    return 0.5 + (torch.lerp(y0[0], y0[1], t[:, 2]) - 0.5) * _fade(freq, fp)


def fbm2(
    x: torch.Tensor, y: torch.Tensor, freq: float, salt: torch.Tensor | int, fp: torch.Tensor, octaves: int = 4
) -> torch.Tensor:
    """Fractal value noise in [0, 1]: octaves at doubling frequency and halving weight, rotated apart."""
    total, norm, amp = torch.zeros_like(x), 0.0, 1.0
    for k in range(octaves):
        total = total + amp * noise2(x, y, freq, salt * 7 + k, fp)
        norm += amp
        amp *= 0.5
        freq *= 2.0
        x, y = 0.81 * x - 0.59 * y + 17.3, 0.59 * x + 0.81 * y - 9.1  # rotate ~36 degrees, shift
    return total / norm


def spots(
    x: torch.Tensor, y: torch.Tensor, cell: float, density: float, salt: torch.Tensor | int, fp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattered discs: at most one per `cell`-metre square (with probability `density`), of random radius
    and position. Returns the anti-aliased coverage (N,) in [0, 1] and a random value (N,) per disc."""
    cx, cy = torch.floor(x / cell), torch.floor(y / cell)
    ix, iy = cx.long(), cy.long()
    present = hash_ints(ix, iy, salt) < density
    radius = cell * (0.1 + 0.22 * hash_ints(ix, iy, salt + 1))
    room = cell - 2 * radius
    ox = cx * cell + radius + room * hash_ints(ix, iy, salt + 2)
    oy = cy * cell + radius + room * hash_ints(ix, iy, salt + 3)
    edge = torch.hypot(x - ox, y - oy) - radius
    cover = (0.5 - edge / fp.clamp_min(0.02)).clamp(0.0, 1.0) * present.float()
    return cover, hash_ints(ix, iy, salt + 4)


def _pick(palette: tuple, value: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(palette, dtype=torch.float32, device=value.device)
    return table[(value * len(palette)).long().clamp_max(len(palette) - 1)]


def _gray(v: torch.Tensor) -> torch.Tensor:
    return v[:, None].expand(-1, 3)


def _mix(base: torch.Tensor, other: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.lerp(base, other, weight[:, None])


def _ground(city: CitySDF, p: torch.Tensor, fp: torch.Tensor, seed: int) -> torch.Tensor:
    """Roads with worn markings, stains and repairs inside the city; meadow outside it."""
    lay = city.layout
    x, y = p[:, 0], p[:, 1]
    asphalt = 0.05 + 0.12 * fbm2(x, y, 0.3, seed + 12, fp, 5)
    repair, tone = spots(x, y, 6.0, 0.35, seed + 13, fp)
    asphalt = asphalt * (1.0 + repair * (0.9 * tone - 0.45))
    stain, kind = spots(x + 0.37, y - 0.81, 1.7, 0.45, seed + 14, fp)
    asphalt = asphalt * (1.0 - 0.55 * stain * (kind < 0.7)) + 0.1 * stain * (kind >= 0.7)
    sw, pitch = lay.street_width, lay.pitch
    sx = torch.remainder(x - lay.extent[0], pitch)  # < sw: in a street running along y
    sy = torch.remainder(y - lay.extent[1], pitch)  # < sw: in a street running along x
    in_x, in_y = sx < sw, sy < sw
    block_x = torch.floor((x - lay.extent[0]) / pitch).long()
    block_y = torch.floor((y - lay.extent[1]) / pitch).long()
    wear = 0.45 + 0.55 * fbm2(x, y, 1.1, seed + 15, fp, 3)
    mark = torch.zeros_like(x)
    # per street: distance across it, position along it, position along the pitch, in it, in a crossing one
    for axis, across, along, along_mod, band, other in ((0, sx, y, sy, in_x, in_y), (1, sy, x, sx, in_y, in_x)):
        street = block_x if axis == 0 else block_y
        segment = block_y if axis == 0 else block_x
        dash = 4.0 + 4.0 * hash_ints(street, axis, seed + 16)
        centre = ((across - sw / 2).abs() < 0.09) & (torch.remainder(along, dash) < dash / 2)
        edges = ((across - 0.9).abs() < 0.07) | ((across - (sw - 0.9)).abs() < 0.07)
        to_crossing = torch.minimum(along_mod - sw, pitch - along_mod)
        has_zebra = hash_ints(street, segment, to_crossing.lt(pitch / 2).long(), axis, seed + 17) < 0.6
        zebra = has_zebra & (to_crossing > 0.6) & (to_crossing < 3.6) & (torch.remainder(across, 1.0) < 0.5)
        mark = torch.where(band & ~other & (centre | edges | zebra), torch.ones_like(mark), mark)
    road = asphalt + mark * wear * 0.6
    hole, _ = spots(x, y, 9.0, 0.3, seed + 18, fp)
    road = torch.lerp(road, 0.04 + 0.1 * noise2(x, y, 6.0, seed + 19, fp), hole)  # manholes
    rgb = _gray(road) * torch.tensor([1.0, 1.0, 1.04], device=p.device)
    x0, y0, x1, y1 = lay.extent
    outside = (x < x0) | (x > x1) | (y < y0) | (y > y1)
    return torch.where(outside[:, None], _grass(x, y, fp, seed + 20), rgb)


def _grass(x: torch.Tensor, y: torch.Tensor, fp: torch.Tensor, salt: int) -> torch.Tensor:
    """Lawn with mowing tone, dirt patches and flowers."""
    base = torch.tensor([0.09, 0.2, 0.045], device=x.device)
    dirt = torch.tensor([0.3, 0.23, 0.15], device=x.device)
    n = fbm2(x, y, 0.2, salt, fp, 5)
    rgb = base * (0.45 + 1.1 * n)[:, None]
    patch, _ = spots(x, y, 5.0, 0.2, salt + 1, fp)
    rgb = _mix(rgb, dirt * (0.7 + 0.6 * noise2(x, y, 2.0, salt + 2, fp))[:, None], patch)
    flower, colour = spots(x, y, 1.1, 0.12, salt + 3, fp)
    return _mix(rgb, _pick(_FLOWERS, colour), flower)


def _slab(
    city: CitySDF, p: torch.Tensor, n: torch.Tensor, ids: torch.Tensor, fp: torch.Tensor, park: bool, seed: int
) -> torch.Tensor:
    """Sidewalk paving (with stains and street furniture) around each block; plaza, lawn or park inside."""
    prm = city.slabs[ids]
    lx, ly = p[:, 0] - prm[:, 0], p[:, 1] - prm[:, 1]
    half = prm[:, 2]
    x, y = p[:, 0], p[:, 1]
    tile = 0.6
    tx, ty = torch.floor(x / tile), torch.floor(y / tile)
    shade = 0.36 + 0.22 * hash_ints(tx.long(), ty.long(), seed + 21) * _fade(1 / tile, fp)
    grout = ((torch.remainder(x, tile) < 0.04) | (torch.remainder(y, tile) < 0.04)) & (fp < 0.1)
    shade = torch.where(grout, shade * 0.6, shade) * (0.7 + 0.6 * fbm2(x, y, 0.35, seed + 22, fp, 3))
    paving = _gray(shade)
    stain, _ = spots(x, y, 1.3, 0.35, seed + 23, fp)
    paving = paving * (1.0 - 0.5 * stain)[:, None]
    thing, colour = spots(x + 0.5, y + 0.5, 3.2, 0.3, seed + 24, fp)
    paving = _mix(paving, _pick(_STREET_THINGS, colour), thing)
    inner = torch.maximum(lx.abs(), ly.abs()) < half - SIDEWALK
    if park:
        path = (lx - 0.4 * ly).abs() < 1.1
        gravel = _gray(0.35 + 0.2 * noise2(x, y, 4.0, seed + 25, fp)) * torch.tensor([1.0, 0.9, 0.75], device=p.device)
        courtyard = torch.where(path[:, None], gravel, _grass(x, y, fp, seed + 26))
    else:
        lawn = fbm2(x, y, 0.12, seed + 27, fp, 2) > 0.55
        courtyard = torch.where(lawn[:, None], _grass(x, y, fp, seed + 28), paving * 0.85)
    top = torch.where(inner[:, None], courtyard, paving)
    kerb = _gray(0.5 + 0.15 * noise2(x + y, p[:, 2], 3.0, seed + 29, fp))
    return torch.where((n[:, 2] > 0.5)[:, None], top, kerb)


def _facade_coords(p: torch.Tensor, n: torch.Tensor, prm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal facade coordinate u (metres along the wall) and a face index (0-3) per point."""
    lx, ly = p[:, 0] - prm[:, 0], p[:, 1] - prm[:, 1]
    a, b, r = prm[:, 4], prm[:, 5], prm[:, 6]
    round_ = r >= torch.minimum(a, b) - 1e-3
    xface = n[:, 0].abs() >= n[:, 1].abs()
    u_box = torch.where(xface, ly * torch.sign(n[:, 0]), -lx * torch.sign(n[:, 1]))
    face = torch.where(xface, (n[:, 0] < 0).long(), 2 + (n[:, 1] < 0).long())
    u_round = r * torch.atan2(ly, lx)
    return torch.where(round_, u_round, u_box), torch.where(round_, torch.zeros_like(face), face)


def _roof(
    city: CitySDF, p: torch.Tensor, ids: torch.Tensor, fp: torch.Tensor, prm: torch.Tensor, seed: int
) -> torch.Tensor:
    """Gravel roofs with vents and tar patches, a lighter parapet, and solar panels on some."""
    st, obj = city.style[ids], city.object[ids]
    wall_rgb, roof_rgb = st[:, 0:3], st[:, 3:6]
    x, y = p[:, 0], p[:, 1]
    dev = p.device
    lx, ly = x - prm[:, 0], y - prm[:, 1]
    inside = -rect_sdf(lx, ly, prm[:, 4], prm[:, 5], prm[:, 6])  # distance in from the roof's edge
    roof = roof_rgb * (0.55 + 0.9 * fbm2(x, y, 0.3, obj + seed, fp, 5))[:, None]
    tar, _ = spots(x, y, 5.0, 0.45, seed + 30, fp)
    roof = roof * (1.0 - 0.45 * tar)[:, None]
    vent, kind = spots(x + 0.3, y + 0.7, 1.8, 0.4, seed + 31, fp)
    roof = _mix(roof, _gray(torch.where(kind < 0.5, 0.06, 0.75)), vent)
    roof = torch.where((inside < 0.45)[:, None], wall_rgb * 0.9 + 0.1, roof)
    has_panels = hash_ints(ids, seed + 32) < 0.45
    px, py = torch.remainder(lx + 0.3, 1.15), torch.remainder(ly, 1.75)
    panel_zone = has_panels & (inside > 1.5) & (lx < 0.3 * prm[:, 4]) & (ly > -0.2 * prm[:, 5])
    panel = (px < 1.0) & (py < 1.6)
    panel_rgb = (
        torch.tensor([0.04, 0.06, 0.16], device=dev)
        * (0.7 + 0.8 * hash_ints(torch.floor(lx / 1.15).long(), torch.floor(ly / 1.75).long(), ids))[:, None]
    )
    roof = torch.where((panel_zone & panel)[:, None], panel_rgb, roof)
    return torch.where((panel_zone & ~panel)[:, None], torch.full_like(roof, 0.6), roof)


def _building(
    city: CitySDF, p: torch.Tensor, n: torch.Tensor, ids: torch.Tensor, fp: torch.Tensor, seed: int
) -> torch.Tensor:
    """Roofs, and walls with a window grid (every window different), shop fronts and signs below."""
    prm, st, obj = city.prisms[ids - city.prism_base], city.style[ids], city.object[ids]
    wall_rgb = st[:, 0:3]
    fh, bw, ww, wh, base = st[:, 6], st[:, 7], st[:, 8], st[:, 9], st[:, 10]
    dev = p.device
    u, face = _facade_coords(p, n, prm)
    v = p[:, 2] - base
    floor_ = torch.floor(v / fh)
    bay = torch.floor(u / bw)
    fu, fv = u / bw - bay, v / fh - floor_
    fl, bl = floor_.long(), bay.long()
    key = obj * 4 + face
    grime = 1.0 - 0.3 * fbm2(u, v * 0.08, 1.5, key + 7, fp, 3)  # vertical streaks
    weather = (0.7 + 0.6 * fbm2(u, v, 0.3, key + seed, fp, 4)) * grime
    wall = wall_rgb * weather[:, None]
    wall = torch.where((fv < 0.05)[:, None], wall * 0.72, wall)
    poster, colour = spots(u, v, 2.5, 0.12, key + seed + 8, fp)
    wall = _mix(wall, _pick(_SIGN_HUES, colour), poster)

    win = ((fu - 0.5).abs() < ww / 2) & ((fv - 0.55).abs() < wh / 2) & (fl >= 1)
    wy = ((0.55 + wh / 2) - fv) / wh  # 0 at the window top, 1 at its bottom
    wx = (fu - 0.5) / ww + 0.5
    r1, r2, r3 = (hash_ints(key, fl, bl, seed + k) for k in (41, 42, 43))
    sky_reflection = torch.stack([0.06 + 0.12 * wy, 0.09 + 0.14 * wy, 0.13 + 0.18 * wy], dim=-1)
    lit = torch.stack([0.75 + 0.2 * r2, 0.55 + 0.2 * r2, 0.25 + 0.15 * r3], dim=-1)
    curtain = torch.stack([0.3 + 0.6 * r2, 0.25 + 0.5 * r3, 0.2 + 0.5 * torch.remainder(r2 + r3, 1.0)], dim=-1)
    glass = torch.where((r1 < 0.45)[:, None], sky_reflection, torch.where((r1 < 0.7)[:, None], lit, curtain))
    blind = wy < r3 * 0.8
    slats = 0.62 + 0.12 * (torch.remainder(v * 14.0, 1.0) < 0.5).float() * _fade(14.0, fp)
    glass = torch.where(blind[:, None], _gray(slats) * torch.tensor([1.0, 0.95, 0.85], device=dev), glass)
    frame = (wx < 0.07) | (wx > 0.93) | (wy < 0.06) | (wy > 0.94) | ((wx - 0.5).abs() < 0.025)
    frame_rgb = torch.where((hash_ints(obj, seed + 44) < 0.5)[:, None], torch.full_like(wall, 0.85), wall * 0.35)
    window = torch.where(frame[:, None], frame_rgb, glass)

    ground_floor = fl == 0
    shop_bay = torch.floor(u / (2 * bw)).long()
    shop = ground_floor & ((fu - 0.5).abs() < 0.42) & (fv > 0.08) & (fv < 0.7)
    sign = ground_floor & (fv > 0.75) & (fv < 0.92)
    hue = _pick(_SIGN_HUES, hash_ints(key, shop_bay, seed + 45))
    letters = hash_ints(key, torch.floor(u / 0.28).long(), torch.floor(fv * 30).long() // 4, seed + 46) < 0.45
    sign_rgb = torch.where(letters[:, None], 1.0 - hue * 0.8, hue)
    shop_rgb = torch.where((hash_ints(key, shop_bay, seed + 47) < 0.5)[:, None], lit * 0.8, sky_reflection * 1.3)
    facade = torch.where(win[:, None], window, wall)
    facade = torch.where(shop[:, None], shop_rgb, facade)
    facade = torch.where(sign[:, None], sign_rgb, facade)
    return torch.where((n[:, 2] > 0.6)[:, None], _roof(city, p, ids, fp, prm, seed), facade)


def albedo(
    city: CitySDF, points: torch.Tensor, normals: torch.Tensor, ids: torch.Tensor, footprint: torch.Tensor, seed: int
) -> torch.Tensor:
    """Linear RGB albedo (N, 3) in [0, 1] at surface points (N, 3) with unit normals (N, 3) on primitives `ids`
    (N,) (as `CitySDF.evaluate(..., with_id=True)` gives them), seen with pixel footprints (N,) in metres."""
    out = torch.zeros_like(points)
    transient = ids > city.ground_id
    material = city.material[ids.clamp_max(city.ground_id)]
    material = torch.where(transient, torch.full_like(material, int(Material.TRANSIENT)), material)
    for mat in torch.unique(material).tolist():
        sel = (material == mat).nonzero()[:, 0]
        p, n, i, fp = points[sel], normals[sel], ids[sel], footprint[sel]
        if mat == Material.GROUND:
            rgb = _ground(city, p, fp, seed)
        elif mat in (Material.SIDEWALK, Material.PARK):
            rgb = _slab(city, p, n, i, fp, mat == Material.PARK, seed)
        elif mat == Material.BUILDING:
            rgb = _building(city, p, n, i, fp, seed)
        elif mat == Material.ROOF_UNIT:
            tone = 0.35 + 0.35 * hash_ints(i, seed + 51)
            ribs = 0.8 + 0.2 * (torch.remainder((p[:, 0] + p[:, 1]) * 4.0, 1.0) < 0.5).float() * _fade(4.0, fp)
            rgb = _gray(tone * ribs * (0.7 + 0.6 * noise3(p, 2.0, seed + 52, fp)))
        elif mat == Material.TRUNK:
            bark = 0.6 + 0.8 * noise3(p * torch.tensor([1.0, 1.0, 0.25], device=p.device), 6.0, seed + 53, fp)
            rgb = torch.tensor([0.22, 0.15, 0.09], device=p.device) * bark[:, None]
        elif mat == Material.FOLIAGE:
            leaf = (0.4 + 1.1 * noise3(p, 1.3, seed + 54, fp)) * (0.65 + 0.7 * noise3(p, 5.0, seed + 55, fp))
            rgb = city.style[i, :3] * leaf[:, None]
        else:
            paint = _pick(_CAR_PAINT, hash_ints(i, seed + 56))
            glass_band = (p[:, 2] - city.ground_height(p[:, 0], p[:, 1]) > 1.0) & (n[:, 2] < 0.5)
            rgb = torch.where(glass_band[:, None], torch.full_like(paint, 0.05), paint)
        out[sel] = rgb.clamp(0.0, 0.95)
    return out


def sky(dirs: torch.Tensor, sun: torch.Tensor) -> torch.Tensor:
    """Radiance (N, 3) of rays that escape: a zenith-to-horizon gradient and a glow around the sun."""
    up = dirs[:, 2].clamp(-0.2, 1.0)
    t = (up.clamp_min(0) ** 0.5)[:, None]
    horizon = torch.tensor([0.78, 0.84, 0.92], device=dirs.device)
    zenith = torch.tensor([0.22, 0.42, 0.82], device=dirs.device)
    glow = (dirs @ sun).clamp_min(0) ** 48
    return horizon * (1 - t) + zenith * t + glow[:, None] * torch.tensor([1.0, 0.9, 0.7], device=dirs.device)

"""Seeded procedural city: a street grid of blocks, buildings of varied shapes on lots, trees, rolling ground.

Everything is drawn from `numpy.random.default_rng([seed, ...])`, so one config gives one city.
The city is centred on the origin with z up; blocks are separated by streets and ringed by one more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bigscene.synth.presets import SynthConfig

SIDEWALK = 3.0  # sidewalk ring inside each block, kerb to building line
KERB = 0.15  # sidewalk height above the road
_ALLEY = 1.5  # gap between lots
_BURY = 2.0  # solids start this far below the lowest ground so the rolling ground never shows their base
_SUBSTREAM = {"ground": 1, "blocks": 2, "buildings": 3, "trees": 4}

_WALL_PALETTE = np.array(
    [
        (0.55, 0.25, 0.18),  # brick
        (0.78, 0.72, 0.60),  # sandstone
        (0.62, 0.62, 0.60),  # concrete
        (0.86, 0.85, 0.80),  # white render
        (0.30, 0.38, 0.46),  # blue-grey cladding
        (0.72, 0.58, 0.42),  # ochre
        (0.58, 0.66, 0.56),  # pale green
        (0.42, 0.36, 0.34),  # dark stone
    ]
)


@dataclass(frozen=True)
class Prism:
    """A vertical prism: an axis-aligned rounded rectangle (half sizes a, b, corner radius r) extruded from
    z0 to z1. With `on_ground`, the top is z1 above the rolling ground (sidewalk slabs) and z0 is ignored."""

    cx: float
    cy: float
    z0: float
    z1: float
    half_a: float
    half_b: float
    radius: float = 0.0
    on_ground: bool = False

    def row(self) -> list[float]:
        return [self.cx, self.cy, self.z0, self.z1, self.half_a, self.half_b, self.radius]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid (tree crowns)."""

    cx: float
    cy: float
    cz: float
    rx: float
    ry: float
    rz: float

    def row(self) -> list[float]:
        return [self.cx, self.cy, self.cz, self.rx, self.ry, self.rz]


@dataclass(frozen=True)
class FacadeStyle:
    """Per-building texture parameters: colours in linear RGB, window grid in metres / fractions."""

    wall_rgb: tuple[float, float, float]
    roof_rgb: tuple[float, float, float]
    floor_height: float
    bay_width: float
    window_w: float  # fraction of a bay
    window_h: float  # fraction of a floor
    base_z: float  # ground-floor level

    def row(self) -> list[float]:
        return [
            *self.wall_rgb,
            *self.roof_rgb,
            self.floor_height,
            self.bay_width,
            self.window_w,
            self.window_h,
            self.base_z,
        ]


@dataclass
class Building:
    kind: str  # box | rounded | lshape | tower | setback
    parts: list[Prism]
    units: list[Prism]  # rooftop plant: boxes and tanks
    height: float  # above its ground
    style: FacadeStyle


@dataclass
class Tree:
    trunk: Prism
    crown: Ellipsoid
    tint: tuple[float, float, float]


@dataclass(frozen=True)
class Ground:
    """Gently rolling ground z = h(x, y): two sinusoids, with a Lipschitz bound for a valid SDF."""

    amplitude: float
    wavelength: float
    phases: tuple[float, float, float]
    heading: float

    def height(
        self, x: torch.Tensor | np.ndarray | float, y: torch.Tensor | np.ndarray | float
    ) -> torch.Tensor | np.ndarray | float:
        """h(x, y), for tensors, arrays or floats alike."""
        if self.amplitude == 0.0:
            return x * 0.0
        sin, cos = (torch.sin, math.cos) if isinstance(x, torch.Tensor) else (np.sin, math.cos)
        k1, k2 = 2 * math.pi / self.wavelength, 2 * math.pi / (0.6 * self.wavelength)
        along = x * cos(self.heading) + y * math.sin(self.heading)
        a, b, c = self.phases
        return self.amplitude * (0.6 * sin(k1 * x + a) * sin(k1 * y + b) + 0.4 * sin(k2 * along + c))

    @property
    def slope(self) -> float:
        """An upper bound on |grad h|."""
        k1, k2 = 2 * math.pi / self.wavelength, 2 * math.pi / (0.6 * self.wavelength)
        return abs(self.amplitude) * (0.6 * k1 + 0.4 * k2)

    @property
    def lipschitz(self) -> float:
        """sqrt(1 + max|grad h|^2): dividing z - h by it makes a distance bound."""
        return math.sqrt(1.0 + self.slope**2)


@dataclass
class Layout:
    """The whole city. `extent` is the xy box (min x, min y, max x, max y) out to the outer streets' edges."""

    blocks_x: int
    blocks_y: int
    block_size: float
    street_width: float
    ground: Ground
    blocks: list[Prism]  # sidewalk slabs
    parks: list[bool]
    buildings: list[Building]
    trees: list[Tree]
    extent: tuple[float, float, float, float]
    roi: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))  # (2, 3) min, max corner

    @property
    def pitch(self) -> float:
        return self.block_size + self.street_width

    @property
    def max_height(self) -> float:
        """z of the highest solid: roofs, rooftop units and tree crowns."""
        tops = [p.z1 for b in self.buildings for p in b.parts + b.units]
        tops += [t.crown.cz + t.crown.rz for t in self.trees]
        return max(tops, default=KERB + abs(self.ground.amplitude))

    def block_centres(self) -> np.ndarray:
        """(blocks_x * blocks_y, 2) block centres, x fastest."""
        x0, y0 = self.extent[0], self.extent[1]
        first = self.street_width + self.block_size / 2
        xs = x0 + first + self.pitch * np.arange(self.blocks_x)
        ys = y0 + first + self.pitch * np.arange(self.blocks_y)
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        return np.stack([gx.ravel(), gy.ravel()], axis=-1)


def _rng(config: SynthConfig, stream: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, _SUBSTREAM[stream]])


def _split_lots(rng: np.random.Generator, cx: float, cy: float, w: float, d: float, n: int) -> list[tuple]:
    """Split a (w x d) rectangle centred at (cx, cy) into n lots (cx, cy, w, d) separated by alleys."""
    if n == 1:
        return [(cx, cy, w, d)]
    along_x = w >= d if n == 2 else bool(rng.random() < 0.5)
    f = rng.uniform(0.4, 0.6)
    if along_x:
        w1, w2 = f * (w - _ALLEY), (1 - f) * (w - _ALLEY)
        halves = [(cx - w / 2 + w1 / 2, cy, w1, d), (cx + w / 2 - w2 / 2, cy, w2, d)]
    else:
        d1, d2 = f * (d - _ALLEY), (1 - f) * (d - _ALLEY)
        halves = [(cx, cy - d / 2 + d1 / 2, w, d1), (cx, cy + d / 2 - d2 / 2, w, d2)]
    if n == 2:
        return halves
    if n == 3:
        pick = int(rng.integers(2))
        return [halves[1 - pick], *_split_lots(rng, *halves[pick], 2)]
    return [lot for half in halves for lot in _split_lots(rng, *half, 2)]


def _style(rng: np.random.Generator, base_z: float, glassy: bool) -> FacadeStyle:
    wall = _WALL_PALETTE[rng.integers(len(_WALL_PALETTE))] * rng.uniform(0.85, 1.15, 3)
    roof = np.full(3, rng.uniform(0.25, 0.55)) * rng.uniform(0.9, 1.1, 3)
    return FacadeStyle(
        wall_rgb=tuple(np.clip(wall, 0.05, 0.95).tolist()),
        roof_rgb=tuple(np.clip(roof, 0.05, 0.95).tolist()),
        floor_height=float(rng.uniform(3.0, 4.2)),
        bay_width=float(rng.uniform(1.6, 2.6) if glassy else rng.uniform(2.2, 3.4)),
        window_w=float(rng.uniform(0.75, 0.9) if glassy else rng.uniform(0.4, 0.7)),
        window_h=float(rng.uniform(0.7, 0.85) if glassy else rng.uniform(0.45, 0.65)),
        base_z=base_z,
    )


def _building(rng: np.random.Generator, lot: tuple, height: float, ground_z: float, z0: float) -> Building:
    """One building of a random kind filling most of `lot` (cx, cy, w, d)."""
    cx, cy, w, d = lot
    kind = str(rng.choice(["box", "rounded", "lshape", "tower", "setback"], p=[0.25, 0.15, 0.2, 0.15, 0.25]))
    a = w / 2 * rng.uniform(0.78, 0.95)
    b = d / 2 * rng.uniform(0.78, 0.95)
    top = ground_z + height
    if kind == "box":
        parts = [Prism(cx, cy, z0, top, a, b)]
    elif kind == "rounded":
        parts = [Prism(cx, cy, z0, top, a, b, radius=float(rng.uniform(0.25, 0.6) * min(a, b)))]
    elif kind == "tower":
        r = min(a, b)
        parts = [Prism(cx, cy, z0, top, r, r, radius=r)]
    elif kind == "lshape":
        sx, sy = rng.choice([-1.0, 1.0], 2)
        fb, fa = rng.uniform(0.4, 0.6, 2)
        wing_b = fb * b
        wing_a = fa * a
        low = ground_z + max(height * rng.uniform(0.55, 0.9), 4.0)
        parts = [
            Prism(cx, cy + sy * (b - wing_b), z0, top, a, wing_b),
            Prism(cx + sx * (a - wing_a), cy, z0, low, wing_a, b),
        ]
    else:  # setback: 2 or 3 tiers, each narrower and shorter
        tiers = int(rng.integers(2, 4))
        splits = np.cumsum(rng.dirichlet(np.full(tiers, 3.0)))
        parts = []
        for k in range(tiers):
            shrink = 1.0 - 0.18 * k
            parts.append(Prism(cx, cy, z0, ground_z + height * float(splits[k]), a * shrink, b * shrink))
    style = _style(rng, ground_z, glassy=kind == "tower" or bool(rng.random() < 0.15))
    return Building(kind, parts, _roof_units(rng, max(parts, key=lambda p: p.z1)), height, style)


def _roof_units(rng: np.random.Generator, roof: Prism) -> list[Prism]:
    """0-3 boxes or tanks on a roof, kept inside its inscribed rectangle."""
    units = []
    inner_a = roof.half_a / (math.sqrt(2) if roof.radius >= min(roof.half_a, roof.half_b) else 1.0)
    inner_b = roof.half_b / (math.sqrt(2) if roof.radius >= min(roof.half_a, roof.half_b) else 1.0)
    for _ in range(int(rng.integers(0, 4))):
        tank = bool(rng.random() < 0.35)
        ua = float(rng.uniform(0.6, 1.5))
        ub = ua if tank else float(rng.uniform(0.6, 1.5))
        room_a, room_b = inner_a - ua - 0.6, inner_b - ub - 0.6
        if room_a <= 0 or room_b <= 0:
            continue
        ux = roof.cx + float(rng.uniform(-room_a, room_a))
        uy = roof.cy + float(rng.uniform(-room_b, room_b))
        uh = float(rng.uniform(1.0, 2.8))
        units.append(Prism(ux, uy, roof.z1 - 0.3, roof.z1 + uh, ua, ub, radius=ua if tank else 0.0))
    return units


def _footprint_distance(x: float, y: float, parts: list[Prism]) -> float:
    """Horizontal distance from (x, y) to the nearest building part (negative inside); axis-aligned parts."""
    best = math.inf
    for p in parts:
        qx, qy = abs(x - p.cx) - p.half_a, abs(y - p.cy) - p.half_b
        outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
        best = min(best, outside + min(max(qx, qy), 0.0))
    return best


def _tree(rng: np.random.Generator, x: float, y: float, ground_z: float, z0: float, scale: float) -> Tree:
    trunk_r = float(rng.uniform(0.15, 0.3))
    trunk_h = float(rng.uniform(2.0, 3.5))
    r = float(rng.uniform(1.4, 2.6) * scale)
    rz = r * float(rng.uniform(0.9, 1.4))
    cz = ground_z + trunk_h + rz * 0.8
    tint = tuple(np.clip(np.array([0.16, 0.32, 0.10]) * rng.uniform(0.7, 1.3, 3), 0.02, 0.6).tolist())
    return Tree(
        trunk=Prism(x, y, z0, cz, trunk_r, trunk_r, radius=trunk_r),
        crown=Ellipsoid(x, y, cz, r, r * float(rng.uniform(0.85, 1.15)), rz),
        tint=tint,
    )


def generate_layout(config: SynthConfig) -> Layout:
    """The city for `config`: deterministic in config.seed and the layout fields."""
    g_rng = _rng(config, "ground")
    ground = Ground(
        amplitude=config.ground_amplitude,
        wavelength=config.ground_wavelength,
        phases=tuple(g_rng.uniform(0, 2 * math.pi, 3).tolist()),
        heading=float(g_rng.uniform(0, math.pi)),
    )
    z0 = -abs(config.ground_amplitude) - _BURY
    pitch = config.block_size + config.street_width
    width = config.blocks_x * pitch + config.street_width
    depth = config.blocks_y * pitch + config.street_width
    extent = (-width / 2, -depth / 2, width / 2, depth / 2)
    layout = Layout(
        config.blocks_x,
        config.blocks_y,
        config.block_size,
        config.street_width,
        ground,
        blocks=[],
        parks=[],
        buildings=[],
        trees=[],
        extent=extent,
    )
    centres = layout.block_centres()
    half = config.block_size / 2
    reach = float(np.linalg.norm(centres, axis=1).max()) or 1.0

    b_rng, t_rng, k_rng = _rng(config, "buildings"), _rng(config, "trees"), _rng(config, "blocks")
    for bx, by in centres:
        bx, by = float(bx), float(by)
        layout.blocks.append(Prism(bx, by, z0, KERB, half, half, radius=2.0, on_ground=True))
        park = bool(k_rng.random() < config.park_fraction)
        layout.parks.append(park)
        parts: list[Prism] = []
        if not park:
            inner = config.block_size - 2 * SIDEWALK
            lots = _split_lots(b_rng, bx, by, inner, inner, config.lots_per_block)
            downtown = 1.0 - 0.5 * math.hypot(bx, by) / reach
            for lot in lots:
                u = b_rng.random() ** 1.3
                height = config.height_min + (config.height_max - config.height_min) * u * downtown
                ground_z = float(ground.height(lot[0], lot[1]))
                building = _building(b_rng, lot, max(height, config.height_min), ground_z, z0)
                layout.buildings.append(building)
                parts.extend(building.parts)
        count = config.trees_per_block * (3 if park else 1)
        for _ in range(count):
            for _attempt in range(20):
                if park:
                    x, y = (float(v) for v in t_rng.uniform(-half + 2.5, half - 2.5, 2) + (bx, by))
                else:  # street trees on the sidewalk ring
                    side = int(t_rng.integers(4))
                    s = float(t_rng.uniform(-half + 2.5, half - 2.5))
                    off = half - 1.4
                    x, y = [(bx + s, by - off), (bx + off, by + s), (bx + s, by + off), (bx - off, by + s)][side]
                if _footprint_distance(x, y, parts) > 1.5 and all(
                    math.hypot(x - t.trunk.cx, y - t.trunk.cy) > 3.0 for t in layout.trees
                ):
                    ground_z = float(ground.height(x, y)) + KERB
                    layout.trees.append(_tree(t_rng, x, y, ground_z, z0, 1.3 if park else 1.0))
                    break

    layout.roi = np.array(
        [
            [extent[0], extent[1], -abs(config.ground_amplitude) - config.roi_margin],
            [extent[2], extent[3], layout.max_height + config.roi_margin],
        ]
    )
    return layout

"""Camera paths: drone lawnmower passes (nadir and oblique, several altitudes, as in Mill-19) and walks along
the streets; every k-th capture view held out for testing, plus novel test views off the capture path."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bigscene.scene.cameras import Camera
from bigscene.synth.layout import Layout
from bigscene.synth.presets import SynthConfig

_STREET_PITCH_DEG = {"forward": 4.0, "backward": 4.0, "left": 10.0, "right": 10.0}
_LANE_OFFSET = 2.0  # street cameras keep right of the centre line


@dataclass
class View:
    """One planned image: file name, camera-to-world (4, 4) OpenCV pose, split, and how it was made."""

    name: str
    c2w: np.ndarray
    split: str  # train | test
    kind: str  # aerial | street | novel


def look_at(eye: np.ndarray, forward: np.ndarray, up_hint: np.ndarray | None = None) -> np.ndarray:
    """OpenCV camera-to-world (4, 4) at `eye` looking along `forward`; image up follows `up_hint` (world z by
    default; pass the heading for nadir views)."""
    f = np.asarray(forward, dtype=np.float64)
    f = f / np.linalg.norm(f)
    up = np.array([0.0, 0.0, 1.0]) if up_hint is None else np.asarray(up_hint, dtype=np.float64)
    right = np.cross(f, up)
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, f, eye
    return c2w


def intrinsics(config: SynthConfig) -> Camera:
    """The one pinhole camera all views share: square pixels, horizontal field of view `fov_deg`."""
    f = config.width / 2 / math.tan(math.radians(config.fov_deg) / 2)
    return Camera.pinhole(f, f, config.width / 2, config.height / 2, config.width, config.height)


def _heading_vectors(heading: np.ndarray) -> dict[str, np.ndarray]:
    left = np.array([-heading[1], heading[0], 0.0])
    return {"forward": heading, "backward": -heading, "left": left, "right": -left}


def aerial_poses(config: SynthConfig, layout: Layout) -> list[np.ndarray]:
    """Lawnmower passes along x over the city at each altitude. The passes define ground targets; each view
    (nadir or oblique, relative to the heading) is placed so that it looks at its target, as when an oblique
    rig's cameras each cover the survey area on their own pass."""
    x0, y0, x1, y1 = layout.extent
    grow = 1.0 + config.aerial_overshoot
    w, d = (x1 - x0) * grow, (y1 - y0) * grow
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    tilt = math.radians(config.oblique_deg)
    ys = cy + (np.linspace(-0.35 * d, 0.35 * d, config.aerial_lines) if config.aerial_lines > 1 else np.zeros(1))
    xs = cx + (np.linspace(-0.35 * w, 0.35 * w, config.aerial_stops) if config.aerial_stops > 1 else np.zeros(1))
    poses = []
    for clearance in config.aerial_clearance:
        z = layout.max_height + clearance
        for line, y in enumerate(ys):
            sign = 1.0 if line % 2 == 0 else -1.0
            heading = np.array([sign, 0.0, 0.0])
            dirs = _heading_vectors(heading)
            for x in xs[:: int(sign)]:
                target = np.array([x, y, float(layout.ground.height(float(x), float(y)))])
                for view in config.aerial_views:
                    if view == "nadir":
                        poses.append(look_at(np.array([x, y, z]), np.array([0.0, 0.0, -1.0]), heading))
                    else:
                        forward = dirs[view] * math.sin(tilt) + np.array([0.0, 0.0, -math.cos(tilt)])
                        eye = target - forward * (z - target[2]) / math.cos(tilt)
                        poses.append(look_at(eye, forward))
    return poses


def street_network(layout: Layout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centre lines of every street as (start, end) xy segments: the x-running ones, then the y-running ones."""
    x0, y0, x1, y1 = layout.extent
    half = layout.street_width / 2
    segments = []
    for j in range(layout.blocks_y + 1):
        y = y0 + half + j * layout.pitch
        segments.append((np.array([x0 + half, y]), np.array([x1 - half, y])))
    for i in range(layout.blocks_x + 1):
        x = x0 + half + i * layout.pitch
        segments.append((np.array([x, y0 + half]), np.array([x, y1 - half])))
    return segments


def _street_pose(layout: Layout, xy: np.ndarray, heading: np.ndarray, view: str, height: float) -> np.ndarray:
    """A camera `height` above the street at xy looking along `view` of `heading`; on the outer streets a
    view that would look straight out of the city (at the empty meadow) is turned to look in."""
    direction = _heading_vectors(np.array([heading[0], heading[1], 0.0]))[view]
    x0, y0, x1, y1 = layout.extent
    ring = layout.street_width
    for outward, on_ring in (
        ((1.0, 0.0), xy[0] > x1 - ring),
        ((-1.0, 0.0), xy[0] < x0 + ring),
        ((0.0, 1.0), xy[1] > y1 - ring),
        ((0.0, -1.0), xy[1] < y0 + ring),
    ):
        normal = np.array([*outward, 0.0])
        if on_ring and direction @ normal > 0.7:
            direction = direction - 2.0 * (direction @ normal) * normal
    pitch = math.radians(_STREET_PITCH_DEG[view])
    forward = direction * math.cos(pitch) + np.array([0.0, 0.0, math.sin(pitch)])
    ground = float(layout.ground.height(float(xy[0]), float(xy[1])))
    return look_at(np.array([xy[0], xy[1], ground + height]), forward)


def street_poses(config: SynthConfig, layout: Layout) -> list[np.ndarray]:
    """Stops spread evenly along the street network (driving on the right); one pose per street view."""
    segments = street_network(layout)
    lengths = np.array([np.linalg.norm(b - a) for a, b in segments])
    ends = np.cumsum(lengths)
    spacing = ends[-1] / config.street_stops
    poses = []
    for k in range(config.street_stops):
        s = (k + 0.5) * spacing
        seg = min(int(np.searchsorted(ends, s, side="right")), len(segments) - 1)
        a, b = segments[seg]
        along = s - (ends[seg] - lengths[seg])
        heading = (b - a) / lengths[seg]
        if seg % 2:  # alternate the driving direction between streets
            heading = -heading
            along = lengths[seg] - along
            a = b
        xy = a + heading * along + np.array([heading[1], -heading[0]]) * _LANE_OFFSET
        for view in config.street_views:
            poses.append(_street_pose(layout, xy, heading, view, config.camera_height))
    return poses


def novel_poses(config: SynthConfig, layout: Layout) -> list[np.ndarray]:
    """Test views off the capture path: random drone poses between the flight altitudes and/or street poses
    off the lanes, with random headings."""
    rng = np.random.default_rng([config.seed, 5])
    x0, y0, x1, y1 = layout.extent
    kinds = {"aerial": ["aerial"], "street": ["street"], "both": ["aerial", "street"]}[config.capture]
    poses = []
    segments = street_network(layout)
    for k in range(config.novel_views):
        yaw = rng.uniform(0, 2 * math.pi)
        heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        if kinds[k % len(kinds)] == "aerial":
            lo, hi = min(config.aerial_clearance), max(config.aerial_clearance)
            z = layout.max_height + rng.uniform(0.8 * lo, 1.1 * hi)
            xy = rng.uniform(0.3, 0.7, 2) * (x1 - x0, y1 - y0) + (x0, y0)
            tilt = math.radians(rng.uniform(10.0, config.oblique_deg + 10.0))
            forward = heading * math.sin(tilt) + np.array([0.0, 0.0, -math.cos(tilt)])
            poses.append(look_at(np.array([xy[0], xy[1], z]), forward))
        else:
            a, b = segments[int(rng.integers(len(segments)))]
            along = (b - a) * rng.uniform(0.1, 0.9)
            normal = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
            xy = a + along + normal * rng.uniform(-3.0, 3.0)
            height = config.camera_height + rng.uniform(-0.3, 1.0)
            poses.append(_street_pose(layout, xy, heading[:2], "forward", height))
    return poses


def plan_views(config: SynthConfig, layout: Layout) -> list[View]:
    """Every view to render, in order: capture views (every `test_every`-th held out) then novel test views."""
    capture: list[tuple[str, np.ndarray]] = []
    if config.capture in ("aerial", "both"):
        capture += [("aerial", c2w) for c2w in aerial_poses(config, layout)]
    if config.capture in ("street", "both"):
        capture += [("street", c2w) for c2w in street_poses(config, layout)]
    views = []
    k = config.test_every
    for i, (kind, c2w) in enumerate(capture):
        split = "test" if k > 0 and i % k == k // 2 else "train"
        views.append(View(f"{kind}_{i:04d}.png", c2w, split, kind))
    views += [View(f"novel_{j:04d}.png", c2w, "test", "novel") for j, c2w in enumerate(novel_poses(config, layout))]
    return views

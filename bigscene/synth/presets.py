"""The synthetic city's typed configuration, its named presets, and overrides from strings.

Every field that changes what is generated is part of the scene's identity (see `identity`); execution
fields (device, chunk size) are not, so a workspace made on a GPU is the same scene when re-run on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from bigscene.errors import ConfigError

CAPTURES = ("aerial", "street", "both")
AERIAL_VIEWS = ("nadir", "forward", "backward", "left", "right")
STREET_VIEWS = ("forward", "backward", "left", "right")

#: Fields that say how to run, not what to make: left out of the scene's identity.
EXECUTION_FIELDS = ("device", "chunk_rays")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic city capture. Lengths are metres (scene units), z is up."""

    seed: int = 0
    # city layout
    blocks_x: int = 2
    blocks_y: int = 2
    block_size: float = 26.0  # side of one city block, kerb to kerb
    street_width: float = 12.0
    lots_per_block: int = 1  # buildings per block (1, 2, 3 or 4 lots)
    park_fraction: float = 0.0  # share of blocks that are parks: trees, no buildings
    height_min: float = 8.0
    height_max: float = 30.0
    trees_per_block: int = 3
    ground_amplitude: float = 0.0  # rolling ground, peak height; 0 is flat
    ground_wavelength: float = 140.0
    # capture
    capture: str = "aerial"  # aerial | street | both
    width: int = 96
    height: int = 72
    fov_deg: float = 60.0  # horizontal field of view
    aerial_clearance: tuple[float, ...] = (30.0,)  # flight altitudes above the tallest roof
    aerial_lines: int = 2  # lawnmower passes per altitude
    aerial_stops: int = 4  # capture stops per pass
    aerial_views: tuple[str, ...] = ("nadir", "forward", "backward")
    aerial_overshoot: float = 0.0  # passes extend past the city by this fraction of its size
    oblique_deg: float = 40.0  # tilt of oblique views from nadir
    street_stops: int = 0  # capture stops spread along the street network
    street_views: tuple[str, ...] = ("forward", "left", "right")
    camera_height: float = 1.7
    test_every: int = 6  # every k-th capture view is held out as a test view (0: none)
    novel_views: int = 2  # extra test views off the capture path
    # rendering
    render_images: bool = True  # false: poses and sparse points only (the `scale` preset)
    supersample: int = 1  # ss x ss rays per pixel
    soft_shadows: bool = False
    ambient_occlusion: bool = True
    appearance_variation: float = 0.0  # std of per-image log exposure / white balance; 0 is off
    transients: int = 0  # transient occluders (cars, people) per training image; 0 is off
    max_steps: int = 192  # sphere-tracing steps per ray
    # sparse points
    points: int = 800  # candidate surface samples (those seen by < 2 train views are dropped)
    point_noise: float = 0.02  # std of the 3D position noise, scene units
    pixel_noise: float = 0.5  # std of the keypoint noise, pixels
    # ground truth
    gt_mesh: bool = True
    gt_voxel: float = 0.4
    roi_margin: float = 2.0
    # execution (not part of the scene identity)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chunk_rays: int = 65536

    def __post_init__(self) -> None:
        if self.capture not in CAPTURES:
            raise ConfigError(f"synth.capture={self.capture!r}: expected one of {', '.join(CAPTURES)}")
        for name, choices in (("aerial_views", AERIAL_VIEWS), ("street_views", STREET_VIEWS)):
            bad = [v for v in getattr(self, name) if v not in choices]
            if bad:
                raise ConfigError(f"synth.{name}: unknown view {bad[0]!r}; expected any of {', '.join(choices)}")
        positive = ("blocks_x", "blocks_y", "width", "height", "supersample", "max_steps", "chunk_rays")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"synth.{name}={getattr(self, name)}: must be at least 1")
        if not 1 <= self.lots_per_block <= 4:
            raise ConfigError(f"synth.lots_per_block={self.lots_per_block}: expected 1 to 4")
        if not 0.0 < self.height_min <= self.height_max:
            raise ConfigError(f"synth.height_min/height_max: need 0 < {self.height_min} <= {self.height_max}")
        if self.gt_voxel <= 0 or self.block_size <= 0 or self.street_width <= 2:
            raise ConfigError("synth.gt_voxel, block_size must be positive and street_width above 2")
        if self.capture in ("aerial", "both") and not (self.aerial_clearance and self.aerial_views):
            raise ConfigError("synth: an aerial capture needs aerial_clearance and aerial_views")
        if self.capture in ("street", "both") and not (self.street_stops and self.street_views):
            raise ConfigError("synth: a street capture needs street_stops >= 1 and street_views")

    def identity(self) -> dict[str, Any]:
        """The JSON-ready fields that define the scene (execution fields left out)."""
        out = dataclasses.asdict(self)
        for name in EXECUTION_FIELDS:
            out.pop(name)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# GPU scale: 5x5 blocks (~90 buildings), ~1,400 images at 640x480 with shadows and appearance change.
_CITY = SynthConfig(
    blocks_x=5,
    blocks_y=5,
    block_size=40.0,
    lots_per_block=4,
    park_fraction=0.1,
    height_min=10.0,
    height_max=80.0,
    trees_per_block=6,
    ground_amplitude=1.5,
    ground_wavelength=220.0,
    capture="both",
    width=640,
    height=480,
    aerial_clearance=(40.0, 70.0, 110.0),
    aerial_lines=6,
    aerial_stops=12,
    aerial_views=AERIAL_VIEWS,
    street_stops=100,
    test_every=10,
    novel_views=40,
    supersample=2,
    soft_shadows=True,
    appearance_variation=0.1,
    max_steps=256,
    points=200_000,
    gt_voxel=0.25,
    chunk_rays=262_144,
)

PRESETS: dict[str, SynthConfig] = {
    # CI: four buildings, 24 capture views + 2 novel at 96x72; a few seconds on a CPU.
    "tiny": SynthConfig(),
    # Demo: ~16 buildings, aerial and street views, ~80 images at 200x150; under a minute on 2 cores.
    "small": SynthConfig(
        lots_per_block=4,
        height_max=36.0,
        block_size=32.0,
        trees_per_block=4,
        ground_amplitude=0.6,
        capture="both",
        width=200,
        height=150,
        aerial_clearance=(28.0, 45.0),
        aerial_lines=2,
        aerial_stops=5,
        street_stops=6,
        test_every=8,
        novel_views=4,
        points=3000,
        gt_voxel=0.3,
    ),
    "city": _CITY,
    # 10,000 drone poses (4 altitudes x 10 passes x 50 stops x 5 views) over 8x8 blocks, with sparse points.
    # No images are rendered (render_images=false): poses, points, the COLMAP model and ground truth only.
    "scale": dataclasses.replace(
        _CITY,
        blocks_x=8,
        blocks_y=8,
        trees_per_block=4,
        ground_wavelength=260.0,
        capture="aerial",
        width=32,
        height=24,
        aerial_clearance=(40.0, 60.0, 90.0, 130.0),
        aerial_lines=10,
        aerial_stops=50,
        street_stops=0,
        test_every=50,
        novel_views=0,
        render_images=False,
        supersample=1,
        soft_shadows=False,
        appearance_variation=0.0,
        points=100_000,
        point_noise=0.05,
        gt_voxel=0.5,
    ),
    # Real SIFT SfM: 30 overlapping nadir + oblique views at 320x240 of a textured 3x3-block town. The field of
    # view makes the focal length 1.2 x the longer side, the prior COLMAP assumes for photos without EXIF.
    "sfm": SynthConfig(
        blocks_x=3,
        blocks_y=3,
        block_size=22.0,
        street_width=10.0,
        lots_per_block=2,
        height_min=8.0,
        height_max=24.0,
        trees_per_block=3,
        width=320,
        height=240,
        fov_deg=2 * math.degrees(math.atan(1 / 2.4)),
        aerial_clearance=(30.0,),
        aerial_lines=3,
        aerial_stops=5,
        aerial_views=("nadir", "forward"),
        oblique_deg=35.0,
        test_every=0,
        novel_views=0,
        points=2000,
    ),
}


def _convert(name: str, kind: Any, value: Any) -> Any:
    """`value` (a string from the command line, or already typed) as the field's type."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").strip("()[]").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"synth.{name}={value!r}: expected a comma-separated list")
        return tuple(_convert(name, item, v) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"synth.{name}={value!r}: expected true or false")
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise ConfigError(f"synth.{name}={value!r}: expected {kind.__name__}") from None
    return str(value)


def make_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> SynthConfig:
    """The named preset with `overrides` (field -> value or string) applied and type-converted."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown synth preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    hints = typing.get_type_hints(SynthConfig)
    fields = [f.name for f in dataclasses.fields(SynthConfig)]
    changes = {}
    for key, value in (overrides or {}).items():
        name = key.removeprefix("synth.")
        if name not in hints:
            raise ConfigError(f"unknown synth field {key!r}; valid fields: {', '.join(fields)}")
        changes[name] = _convert(name, hints[name], value)
    return dataclasses.replace(PRESETS[preset], **changes)


def config_from_identity(identity: dict[str, Any]) -> SynthConfig:
    """Rebuild a config from `SynthConfig.identity()` (e.g. the copy kept in synth.json)."""
    return make_config("tiny", {k: v for k, v in identity.items() if k not in EXECUTION_FIELDS})

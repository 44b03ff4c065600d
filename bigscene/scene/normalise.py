"""Normalise a scene's frame: z up, origin at the centre of the region of interest, ROI of unit half-extent.

The region of interest (ROI) is a robust axis-aligned box around the SfM points, found after the up axis
is fixed. Every output keeps `world_from_input`, the similarity from the frame the data came in, so results
can be mapped back.

Choosing up (``NormaliseOptions.up``):

- ``"cameras"``: the mean of the cameras' up vectors (the world direction of each camera's -y axis in the
  OpenCV convention). Right for hand-held and street-level captures, where photographers hold cameras
  upright.
- ``"points"``: the normal of the dominant plane of the SfM points (RANSAC on the robust points, refined by
  PCA of the inliers), oriented toward the side the cameras are on. Right for aerial captures, whose ground
  is the dominant plane and whose nadir cameras say nothing about up.
- ``"auto"``: ``"points"`` when most cameras look down onto the dominant plane, that is, when more than half
  the cameras' viewing directions point into the plane at more than 30 degrees below it (aerial nadir and
  oblique flights, whatever their headings); otherwise ``"cameras"``; and ``"cameras"`` whenever there are
  fewer than 3 usable points. A street-level capture that looks head-on at one facade is geometrically
  the same as a nadir flight over flat ground; auto takes it for aerial, so pass ``up="cameras"`` there.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from bigscene.errors import ConfigError, InputError
from bigscene.scene.geometry import (
    apply_similarity,
    make_similarity,
    rotation_between,
    similarity_scale,
    transform_poses,
)
from bigscene.scene.model import Scene

__all__ = [
    "NormaliseOptions",
    "UP_CHOICES",
    "apply_similarity",
    "estimate_up",
    "normalise",
    "robust_roi_points",
    "similarity_scale",
]

log = logging.getLogger(__name__)

UP_CHOICES = ("auto", "cameras", "points")

#: "auto" picks the point plane when more than this fraction of cameras look down onto it ...
_AUTO_DOWN_FRACTION = 0.5
#: ... at more than 30 degrees below the plane (sin 30 = 0.5).
_AUTO_DOWN_SIN = 0.5
_RANSAC_ITERATIONS = 512
_RANSAC_MAX_POINTS = 20000
#: RANSAC inlier distance, as a fraction of the robust points' largest extent.
_RANSAC_THRESHOLD = 0.01
#: Flat ROIs (all points on a plane) get at least this fraction of the largest half-extent on every axis.
_MIN_HALF_EXTENT = 1e-3


@dataclass
class NormaliseOptions:
    """How `normalise` picks the frame.

    up: "auto", "cameras" or "points" (see the module docs).
    min_track_length: SfM points seen in fewer images are left out of the ROI and the plane fit.
    roi_percentile: the ROI spans the [p, 100 - p] percentiles of the points on each axis, so a few
        stray points do not blow it up.
    roi_margin: the box's half-extents grow by this fraction.
    scale: "roi" scales so the ROI's largest half-extent is 1; a number is a fixed scale factor.
    """

    up: str = "auto"
    min_track_length: int = 3
    roi_percentile: float = 1.0
    roi_margin: float = 0.1
    scale: str | float = "roi"

    def __post_init__(self) -> None:
        if self.up not in UP_CHOICES:
            raise ConfigError(f"normalise.up must be one of {', '.join(UP_CHOICES)}; got {self.up!r}")
        if not 0.0 <= float(self.roi_percentile) < 50.0:
            raise ConfigError(f"normalise.roi_percentile must be in [0, 50); got {self.roi_percentile}")
        if not float(self.roi_margin) >= 0.0:
            raise ConfigError(f"normalise.roi_margin must be >= 0; got {self.roi_margin}")
        if int(self.min_track_length) < 0:
            raise ConfigError(f"normalise.min_track_length must be >= 0; got {self.min_track_length}")
        if isinstance(self.scale, str):
            if self.scale != "roi":
                try:
                    self.scale = float(self.scale)
                except ValueError:
                    raise ConfigError(
                        f"normalise.scale must be 'roi' or a positive number; got {self.scale!r}"
                    ) from None
        if not isinstance(self.scale, str) and not (np.isfinite(self.scale) and float(self.scale) > 0.0):
            raise ConfigError(f"normalise.scale must be 'roi' or a positive number; got {self.scale!r}")


def _sfm_points(scene: Scene, min_track_length: int) -> tuple[np.ndarray, str]:
    """Finite SfM points with a track of at least `min_track_length`, else all finite ones (maybe none)."""
    pts = scene.points
    if len(pts) == 0:
        return np.zeros((0, 3)), "no points"
    finite = np.all(np.isfinite(pts.xyz), axis=1)
    good = finite & (np.asarray(pts.track_length) >= min_track_length)
    if good.any():
        return pts.xyz[good], f"{int(good.sum())} points with track >= {min_track_length}"
    return pts.xyz[finite], f"all {int(finite.sum())} points (none with track >= {min_track_length})"


def robust_roi_points(scene: Scene, min_track_length: int = 3) -> tuple[np.ndarray, str]:
    """The points the ROI is built from, and where they came from.

    SfM points with a track of at least `min_track_length`; all points when none has; the corners of the
    scene's own ROI when it has no points but an ROI; the camera centres when it has neither.
    """
    xyz, source = _sfm_points(scene, min_track_length)
    if len(xyz):
        return xyz, source
    if scene.roi is not None and np.all(np.isfinite(scene.roi)):
        lo, hi = np.asarray(scene.roi, dtype=np.float64)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return corners, "the corners of the input ROI (no sparse points)"
    return scene.camera_centres(), "camera centres (no sparse points)"


def _percentile_box(xyz: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis [p, 100 - p] percentiles of xyz (min and max when p is 0)."""
    if p <= 0.0:
        return xyz.min(axis=0), xyz.max(axis=0)
    lo, hi = np.percentile(xyz, [p, 100.0 - p], axis=0)
    return lo, hi


def _fit_plane(xyz: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit normal and a point of the dominant plane (RANSAC, then PCA of the inliers); None if degenerate."""
    if len(xyz) < 3:
        return None
    if len(xyz) > _RANSAC_MAX_POINTS:
        xyz = xyz[rng.choice(len(xyz), _RANSAC_MAX_POINTS, replace=False)]
    extent = float(np.max(xyz.max(axis=0) - xyz.min(axis=0)))
    if extent <= 0.0:
        return None
    threshold = _RANSAC_THRESHOLD * extent
    best_count, best_normal, best_point = -1, None, None
    for _ in range(_RANSAC_ITERATIONS):
        a, b, c = xyz[rng.choice(len(xyz), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        norm = np.linalg.norm(normal)
        if norm <= 1e-12 * extent * extent:
            continue
        normal /= norm
        count = int((np.abs((xyz - a) @ normal) < threshold).sum())
        if count > best_count:
            best_count, best_normal, best_point = count, normal, a
    if best_normal is None:  # every sample collinear
        return None
    normal, point = best_normal, best_point
    for _ in range(3):  # refine: PCA of the inliers, then re-select inliers around the refined plane
        inliers = xyz[np.abs((xyz - point) @ normal) < threshold]
        if len(inliers) < 3:
            break
        point = inliers.mean(axis=0)
        _, vecs = np.linalg.eigh(np.cov((inliers - point).T))
        normal = vecs[:, 0]
    return normal / np.linalg.norm(normal), point


def _cameras_up(scene: Scene) -> np.ndarray:
    up = -scene.c2w[:, :3, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    if norm < 1e-9:
        raise InputError("scene", "the cameras' up vectors cancel out; pass up='points'")
    return up / norm


def estimate_up(scene: Scene, options: NormaliseOptions | None = None) -> tuple[np.ndarray, str]:
    """The scene's up direction (unit, in the scene's current frame) and which rule gave it."""
    options = options or NormaliseOptions()
    pts, _ = _sfm_points(scene, options.min_track_length)
    if len(pts) >= 3:
        lo, hi = _percentile_box(pts, options.roi_percentile)
        pts = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]
    plane = _fit_plane(pts, np.random.default_rng(0)) if options.up != "cameras" else None
    normal = None
    if plane is not None:
        normal, on_plane = plane
        if np.median((scene.camera_centres() - on_plane) @ normal) < 0:  # orient toward the cameras
            normal = -normal
    if options.up == "points":
        if normal is None:
            raise InputError("scene", f"up='points' needs at least 3 non-collinear sparse points, got {len(pts)}")
        return normal, "points"
    if options.up == "auto" and normal is not None:
        views = scene.c2w[:, :3, 2]
        down = float(np.mean(views @ normal < -_AUTO_DOWN_SIN))
        if down > _AUTO_DOWN_FRACTION:
            log.info("up: %.0f%% of cameras look down onto the point plane; using its normal", 100 * down)
            return normal, "points"
        log.info("up: only %.0f%% of cameras look down onto the point plane; using camera up", 100 * down)
    return _cameras_up(scene), "cameras"


def normalise(scene: Scene, options: NormaliseOptions | None = None) -> Scene:
    """A new Scene in the normalised frame: z up, origin at the ROI centre, scaled per `options.scale`.

    Camera rotations stay orthonormal (c2w's rotation is left-multiplied by the frame rotation), centres,
    points and the ROI go through the similarity, and ``world_from_input`` becomes that similarity composed
    with the input's. The input scene is not modified.
    """
    options = options or NormaliseOptions()
    scene.validate()
    up, up_rule = estimate_up(scene, options)
    R = rotation_between(up, np.array([0.0, 0.0, 1.0]))

    pts, source = robust_roi_points(scene, options.min_track_length)
    lo, hi = _percentile_box(pts @ R.T, options.roi_percentile)
    centre = (lo + hi) / 2.0
    half = (hi - lo) / 2.0 * (1.0 + float(options.roi_margin))
    largest = float(half.max())
    if not np.isfinite(largest) or largest <= 0.0:
        raise InputError("scene", f"cannot find a region of interest: {source} all coincide")
    half = np.maximum(half, _MIN_HALF_EXTENT * largest)

    s = 1.0 / largest if options.scale == "roi" else float(options.scale)
    T = make_similarity(s, R, -s * centre)  # p -> s * (R p - centre)
    log.info(
        "normalised: up from %s, ROI from %s, ROI half-extent %s -> scale %.6g",
        up_rule,
        source,
        np.array2string(half, precision=4),
        s,
    )

    points = dataclasses.replace(
        scene.points,
        xyz=apply_similarity(T, scene.points.xyz) if len(scene.points) else scene.points.xyz.copy(),
    )
    return dataclasses.replace(
        scene,
        cameras=dict(scene.cameras),
        images=[dataclasses.replace(im) for im in scene.images],
        c2w=transform_poses(T, scene.c2w),
        points=points,
        roi=np.stack([-half * s, half * s]),
        world_from_input=T @ np.asarray(scene.world_from_input, dtype=np.float64),
    )

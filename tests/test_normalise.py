"""Normalisation (z up, ROI-centred, unit ROI) and the similarity helpers it is built on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigscene.errors import ConfigError, InputError
from bigscene.scene.cameras import Camera
from bigscene.scene.geometry import (
    align_similarity,
    apply_similarity,
    invert_similarity,
    make_similarity,
    rotation_between,
    similarity_rotation,
    similarity_scale,
    transform_poses,
)
from bigscene.scene.model import ImageRecord, Scene, SparsePoints
from bigscene.scene.normalise import NormaliseOptions, estimate_up, normalise

Z = np.array([0.0, 0.0, 1.0])


def _rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _look_at(centre, target, world_up=Z) -> np.ndarray:
    """OpenCV camera-to-world looking from centre at target with image 'up' toward world_up."""
    forward = np.asarray(target, float) - np.asarray(centre, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, world_up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def _nadir(centre, heading: float) -> np.ndarray:
    """OpenCV camera-to-world looking straight down, image x along `heading` (radians from +x)."""
    right = np.array([math.cos(heading), math.sin(heading), 0.0])
    forward = -Z
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def _city_points(rng: np.random.Generator, n_ground: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Ground (z = 0 with 5 cm noise) over [-60, 40] x [-30, 50] and a few box buildings up to 25 m tall."""
    ground = np.column_stack(
        [rng.uniform(-60, 40, n_ground), rng.uniform(-30, 50, n_ground), rng.normal(0, 0.05, n_ground)]
    )
    parts = [ground]
    for cx, cy, h in [(-30, 0, 25.0), (10, 20, 12.0), (-5, -15, 18.0)]:
        m = 300
        wall_x = np.column_stack([np.full(m, cx + 8), rng.uniform(cy - 8, cy + 8, m), rng.uniform(0, h, m)])
        wall_y = np.column_stack([rng.uniform(cx - 8, cx + 8, m), np.full(m, cy - 8), rng.uniform(0, h, m)])
        roof = np.column_stack([rng.uniform(cx - 8, cx + 8, m), rng.uniform(cy - 8, cy + 8, m), np.full(m, h)])
        parts += [wall_x, wall_y, roof]
    xyz = np.concatenate(parts)
    track = rng.integers(3, 12, len(xyz)).astype(np.int32)
    return xyz, track


def _scene(c2w: np.ndarray, xyz: np.ndarray, track: np.ndarray) -> Scene:
    camera = Camera("SIMPLE_RADIAL", 800, 600, (700.0, 400.0, 300.0, -0.05))
    images = [ImageRecord(f"im{i:03d}.jpg", 1, i) for i in range(len(c2w))]
    points = SparsePoints(
        xyz=xyz.astype(np.float64),
        rgb=np.full((len(xyz), 3), 128, np.uint8),
        track_length=track.astype(np.int32),
        error=np.full(len(xyz), 0.5, np.float32),
    )
    return Scene({1: camera}, images, np.asarray(c2w), points=points, image_root="/tmp/images")


def _aerial_c2w(rng: np.random.Generator) -> np.ndarray:
    """A fixed-heading nadir lawnmower grid at 80 m plus an oblique orbit at 60 m."""
    poses = [_nadir([x, y, 80.0 + rng.normal(0, 0.5)], 0.3) for x in range(-50, 41, 15) for y in range(-20, 41, 15)]
    for a in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        centre = np.array([-10 + 70 * math.cos(a), 10 + 70 * math.sin(a), 60.0])
        poses.append(_look_at(centre, [-10.0, 10.0, 0.0]))
    return np.stack(poses)


def _street_c2w(rng: np.random.Generator) -> np.ndarray:
    """Upright hand-held cameras at 1.6 m walking the streets, looking roughly horizontally."""
    poses = []
    for _ in range(40):
        centre = np.array([rng.uniform(-55, 35), rng.uniform(-25, 45), 1.6 + rng.normal(0, 0.05)])
        heading = rng.uniform(0, 2 * np.pi)
        target = centre + np.array([math.cos(heading), math.sin(heading), rng.normal(0, 0.05)])
        poses.append(_look_at(centre, target))
    return np.stack(poses)


#: The input frame: the true (z-up, metres) frame seen through an arbitrary similarity.
TRUE_TO_INPUT = make_similarity(0.37, _rotation([0.4, -0.7, 0.2], 2.1), [12.0, -7.0, 3.5])


def _input_scene(kind: str, seed: int = 0) -> Scene:
    rng = np.random.default_rng(seed)
    xyz, track = _city_points(rng)
    c2w = _aerial_c2w(rng) if kind == "aerial" else _street_c2w(rng)
    return _scene(transform_poses(TRUE_TO_INPUT, c2w), apply_similarity(TRUE_TO_INPUT, xyz), track)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))


def _true_up_in_output(out: Scene) -> np.ndarray:
    true_to_output = out.world_from_input @ TRUE_TO_INPUT
    return similarity_rotation(true_to_output) @ Z


# --- similarity helpers -------------------------------------------------------------------------------


def test_align_similarity_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    T = make_similarity(2.75, _rotation([1.0, 2.0, -0.5], 1.2), [3.0, -4.0, 10.0])
    src = rng.normal(size=(50, 3)) * 5
    dst = apply_similarity(T, src)
    est = align_similarity(src, dst)
    np.testing.assert_allclose(est, T, atol=1e-10)
    assert similarity_scale(est) == pytest.approx(2.75, rel=1e-12)
    # with noise the estimate is close, and the residual small
    noisy = dst + rng.normal(scale=1e-3, size=dst.shape)
    est = align_similarity(src, noisy)
    assert similarity_scale(est) == pytest.approx(2.75, rel=1e-3)
    assert np.abs(apply_similarity(est, src) - noisy).max() < 1e-2
    # rigid variant keeps the scale at one
    rigid = make_similarity(1.0, _rotation([0, 0, 1], 0.4), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(align_similarity(src, apply_similarity(rigid, src), with_scale=False), rigid, atol=1e-10)


def test_align_similarity_returns_a_rotation_not_a_reflection():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # mirror: the best similarity is still a proper rotation
    R = similarity_rotation(align_similarity(src, dst))
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)


def test_align_similarity_rejects_bad_input():
    with pytest.raises(InputError, match="at least 3"):
        align_similarity(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="coincide"):
        align_similarity(np.ones((5, 3)), np.zeros((5, 3)) + np.arange(5)[:, None])
    with pytest.raises(InputError, match="non-finite"):
        align_similarity(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same shape"):
        align_similarity(np.zeros((4, 3)), np.zeros((5, 3)))


def test_similarity_helpers():
    T = make_similarity(0.5, _rotation([0.2, 1.0, 0.3], -0.8), [1.0, 2.0, 3.0])
    p = np.random.default_rng(3).normal(size=(7, 3))
    np.testing.assert_allclose(apply_similarity(invert_similarity(T), apply_similarity(T, p)), p, atol=1e-12)
    np.testing.assert_allclose(invert_similarity(T), np.linalg.inv(T), atol=1e-12)
    assert apply_similarity(T, p[0]).shape == (3,)
    assert similarity_scale(T) == pytest.approx(0.5)
    for a, b in [(Z, np.array([1.0, 0, 0])), (Z, -Z), (np.array([1.0, 2, 3]), np.array([-1.0, 0.5, 0]))]:
        R = rotation_between(a, b)
        np.testing.assert_allclose(R @ (a / np.linalg.norm(a)), b / np.linalg.norm(b), atol=1e-12)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)


def test_transform_poses_keeps_projections():
    """Moving the cameras and the points by one similarity leaves every pixel where it was."""
    scene = _input_scene("street")
    camera = scene.cameras[1]
    T = make_similarity(3.0, _rotation([1, 1, 0], 0.7), [5.0, 0.0, -2.0])
    c2w_new = transform_poses(T, scene.c2w)
    pts_new = apply_similarity(T, scene.points.xyz)
    for i in range(0, len(scene.c2w), 7):
        before = np.linalg.solve(scene.c2w[i], np.c_[scene.points.xyz, np.ones(len(pts_new))].T).T[:, :3]
        after = np.linalg.solve(c2w_new[i], np.c_[pts_new, np.ones(len(pts_new))].T).T[:, :3]
        front = before[:, 2] > 0.1
        np.testing.assert_allclose(
            camera.project(torch.from_numpy(after[front])).numpy(),
            camera.project(torch.from_numpy(before[front])).numpy(),
            atol=1e-6,
        )


# --- normalise -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "up"),
    [
        ("aerial", "points"),
        ("aerial", "auto"),
        ("street", "cameras"),
        ("street", "auto"),
        ("street", "points"),
    ],
)
def test_normalise_puts_up_on_z_and_the_roi_around_the_origin(kind, up):
    scene = _input_scene(kind)
    out = normalise(scene, NormaliseOptions(up=up))
    # up: the true up (ground normal; also the cameras' mean up for the street scene) is +z within 1 degree
    assert _angle_deg(_true_up_in_output(out), Z) < 1.0
    # ROI centred on the origin with largest half-extent 1
    assert out.roi.shape == (2, 3)
    np.testing.assert_allclose(out.roi[0], -out.roi[1], atol=1e-12)
    assert np.abs(out.roi).max() == pytest.approx(1.0)
    # world_from_input maps the input to the output, and back
    W = out.world_from_input
    np.testing.assert_allclose(apply_similarity(W, scene.points.xyz), out.points.xyz, atol=1e-9)
    np.testing.assert_allclose(apply_similarity(W, scene.camera_centres()), out.camera_centres(), atol=1e-9)
    np.testing.assert_allclose(apply_similarity(np.linalg.inv(W), out.points.xyz), scene.points.xyz, atol=1e-9)
    np.testing.assert_allclose(transform_poses(W, scene.c2w), out.c2w, atol=1e-9)
    # poses stay rigid: orthonormal, right-handed rotations
    R = out.c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_array_equal(out.c2w[:, 3], np.broadcast_to([0, 0, 0, 1], (len(R), 4)))
    # the ROI holds the robust bulk of the points (the city spans 100 x 80 x 25 m)
    inside = np.all((out.points.xyz >= out.roi[0]) & (out.points.xyz <= out.roi[1]), axis=1)
    assert inside.mean() > 0.95
    half_true = (out.roi[1] - out.roi[0]) / 2 / similarity_scale(W @ TRUE_TO_INPUT)
    assert 45 < half_true.max() < 60 and half_true[2] < 20


def test_auto_picks_the_point_plane_for_aerial_and_camera_up_for_street_level():
    aerial, street = _input_scene("aerial"), _input_scene("street")
    assert estimate_up(aerial, NormaliseOptions(up="auto"))[1] == "points"
    assert estimate_up(street, NormaliseOptions(up="auto"))[1] == "cameras"
    # camera up on nadir fixed-heading flights is the heading, not the sky: that is why auto avoids it
    up, rule = estimate_up(aerial, NormaliseOptions(up="cameras"))
    assert rule == "cameras" and _angle_deg(up, similarity_rotation(TRUE_TO_INPUT) @ Z) > 30


def test_plane_normal_points_toward_the_cameras():
    scene = _input_scene("aerial")
    flipped = _scene(
        transform_poses(make_similarity(1.0, np.diag([1.0, -1.0, -1.0]), np.zeros(3)), scene.c2w),
        scene.points.xyz * [1.0, -1.0, -1.0],
        scene.points.track_length,
    )
    for s in (scene, flipped):
        out = normalise(s, NormaliseOptions(up="points"))
        assert np.median(out.camera_centres()[:, 2]) > np.median(out.points.xyz[:, 2])


def test_outliers_beyond_the_percentile_do_not_blow_up_the_roi():
    clean = _input_scene("aerial")
    rng = np.random.default_rng(5)
    n_out = len(clean.points) // 200  # 0.5 % far strays, in every direction
    strays = apply_similarity(TRUE_TO_INPUT, rng.normal(size=(n_out, 3)) * 1e4)
    noisy = _scene(
        clean.c2w,
        np.concatenate([clean.points.xyz, strays]),
        np.concatenate([clean.points.track_length, np.full(n_out, 5, np.int32)]),
    )
    a = normalise(clean)
    b = normalise(noisy)
    sa, sb = similarity_scale(a.world_from_input), similarity_scale(b.world_from_input)
    assert sb == pytest.approx(sa, rel=0.05)
    np.testing.assert_allclose(b.camera_centres(), a.camera_centres(), atol=0.05)
    # without the percentile the strays do blow it up
    c = normalise(noisy, NormaliseOptions(roi_percentile=0.0))
    assert similarity_scale(c.world_from_input) < sa / 50


def test_short_tracks_are_left_out_of_the_roi():
    clean = _input_scene("aerial")
    strays = apply_similarity(TRUE_TO_INPUT, np.array([[1e4, 0, 0], [0, -1e4, 500]]))
    noisy = _scene(
        clean.c2w,
        np.concatenate([clean.points.xyz, strays]),
        np.concatenate([clean.points.track_length, [2, 2]]),
    )
    opts = NormaliseOptions(roi_percentile=0.0)
    assert similarity_scale(normalise(noisy, opts).world_from_input) == pytest.approx(
        similarity_scale(normalise(clean, opts).world_from_input), rel=1e-9
    )
    # with every track short, all points are used instead
    short = _scene(clean.c2w, clean.points.xyz, np.full(len(clean.points), 2, np.int32))
    assert similarity_scale(normalise(short).world_from_input) == pytest.approx(
        similarity_scale(normalise(clean).world_from_input), rel=1e-9
    )


def test_margin_and_fixed_scale():
    scene = _input_scene("street")
    base = normalise(scene, NormaliseOptions(roi_margin=0.0))
    grown = normalise(scene, NormaliseOptions(roi_margin=0.25))
    ratio = similarity_scale(base.world_from_input) / similarity_scale(grown.world_from_input)
    assert ratio == pytest.approx(1.25)
    assert np.abs(grown.roi).max() == pytest.approx(1.0)
    fixed = normalise(scene, NormaliseOptions(scale=2.0))
    assert similarity_scale(fixed.world_from_input @ TRUE_TO_INPUT) == pytest.approx(2.0 * 0.37)
    # a fixed scale keeps the same frame up to the scale
    default = normalise(scene)
    np.testing.assert_allclose(
        fixed.roi / similarity_scale(fixed.world_from_input),
        default.roi / similarity_scale(default.world_from_input),
        rtol=1e-9,
    )
    np.testing.assert_allclose(fixed.c2w[:, :3, :3], default.c2w[:, :3, :3], atol=1e-12)
    assert NormaliseOptions(scale="0.5").scale == 0.5


def test_existing_world_from_input_is_composed():
    scene = _input_scene("street")
    once = normalise(scene)
    twice = normalise(once)
    # normalising a normalised scene changes nothing
    np.testing.assert_allclose(twice.world_from_input, once.world_from_input, atol=1e-9)
    np.testing.assert_allclose(twice.c2w, once.c2w, atol=1e-9)
    np.testing.assert_allclose(twice.roi, once.roi, atol=1e-9)


def test_input_scene_is_not_modified():
    scene = _input_scene("aerial")
    c2w, xyz, w = scene.c2w.copy(), scene.points.xyz.copy(), scene.world_from_input.copy()
    out = normalise(scene)
    np.testing.assert_array_equal(scene.c2w, c2w)
    np.testing.assert_array_equal(scene.points.xyz, xyz)
    np.testing.assert_array_equal(scene.world_from_input, w)
    assert scene.roi is None
    assert out.images == scene.images and out.images is not scene.images
    assert out.image_root == scene.image_root and out.cameras == scene.cameras
    np.testing.assert_array_equal(out.points.track_length, scene.points.track_length)


def test_scene_without_points_uses_camera_centres():
    scene = _input_scene("street")
    bare = Scene(scene.cameras, scene.images, scene.c2w)
    out = normalise(bare)
    assert len(out.points) == 0
    centres = out.camera_centres()
    assert np.abs(centres).max() <= 1.0 + 1e-12
    assert _angle_deg(_true_up_in_output(out), Z) < 1.0
    with pytest.raises(InputError, match="up='points' needs at least 3"):
        normalise(bare, NormaliseOptions(up="points"))
    # a single camera and no points: no region of interest to find
    single = Scene(scene.cameras, scene.images[:1], scene.c2w[:1])
    with pytest.raises(InputError, match="region of interest"):
        normalise(single)


def test_bad_options_raise_config_errors():
    for kwargs in (
        {"up": "sky"},
        {"roi_percentile": 50},
        {"roi_percentile": -1},
        {"roi_margin": -0.1},
        {"scale": "big"},
        {"scale": 0.0},
        {"scale": float("nan")},
        {"min_track_length": -2},
    ):
        with pytest.raises(ConfigError):
            NormaliseOptions(**kwargs)

"""Camera models: projection, distortion, ray generation, resizing, and the errors bad intrinsics raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigscene.errors import InputError
from bigscene.scene.cameras import CAMERA_MODELS, Camera, generate_rays, rays_through

W, H = 640, 480

#: One realistic calibration per supported model (640x480, ~62 degree horizontal field of view).
CAMERAS: dict[str, Camera] = {
    "SIMPLE_PINHOLE": Camera("SIMPLE_PINHOLE", W, H, (520.0, 320.0, 240.0)),
    "PINHOLE": Camera("PINHOLE", W, H, (521.5, 516.0, 318.2, 242.7)),
    "SIMPLE_RADIAL": Camera("SIMPLE_RADIAL", W, H, (520.0, 321.0, 239.0, -0.08)),
    "RADIAL": Camera("RADIAL", W, H, (520.0, 319.5, 240.5, -0.2, 0.05)),
    "OPENCV": Camera("OPENCV", W, H, (521.5, 516.0, 318.2, 242.7, -0.2, 0.05, 1e-3, -5e-4)),
}
DISTORTED = ["SIMPLE_RADIAL", "RADIAL", "OPENCV"]


def test_every_supported_model_has_a_case():
    assert set(CAMERAS) == set(CAMERA_MODELS)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _pose() -> torch.Tensor:
    """A generic camera-to-world pose (rotated about a skew axis, off the origin)."""
    c2w = np.eye(4)
    c2w[:3, :3] = _rotation(np.array([0.3, -1.0, 0.4]), 0.9)
    c2w[:3, 3] = [12.0, -3.5, 4.25]
    return torch.from_numpy(c2w)


def _image_corner_bounds(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Min and max undistorted normalised coordinates of the image (from its corners and edge midpoints)."""
    u = torch.tensor([0.0, W / 2, W, W, W, W / 2, 0.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.0, 0.0, H / 2, H, H, H, H / 2], dtype=torch.float64)
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    xy = camera.undistort(torch.stack([(u - cx) / fx, (v - cy) / fy], dim=-1)).numpy()
    return xy.min(axis=0), xy.max(axis=0)


def _points_in_view(camera: Camera, c2w: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points spread over the whole image (corners included) at depths 0.5..50, and their camera-frame
    coordinates."""
    rng = np.random.default_rng(seed)
    lo, hi = _image_corner_bounds(camera)
    xy = rng.uniform(lo, hi, size=(n, 2))
    xy[:4] = [[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]]  # the exact corners
    depth = rng.uniform(0.5, 50.0, size=(n, 1))
    cam = torch.from_numpy(np.concatenate([xy * depth, depth], axis=1))
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return world, cam


def _pixel_miss(camera: Camera, origins: torch.Tensor, dirs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Perpendicular distance of each point from its ray, in pixels at the point's depth along the ray."""
    v = points.to(torch.float64) - origins.to(torch.float64)
    d = dirs.to(torch.float64)
    along = (v * d).sum(-1)
    perp = (v - along[:, None] * d).norm(dim=-1)
    return perp / along * max(camera.focal)


@pytest.mark.parametrize("model", list(CAMERAS))
def test_rays_through_projected_points_hit_the_points(model):
    camera, c2w = CAMERAS[model], _pose()
    world, cam = _points_in_view(camera, c2w, 2000, seed=1)
    pixels = camera.project(cam)
    # the points cover the whole image, corners included
    assert pixels[:, 0].min() < 1e-6 and pixels[:, 0].max() > W - 1e-6
    assert pixels[:, 1].min() < 1e-6 and pixels[:, 1].max() > H - 1e-6
    origins, dirs = rays_through(camera, c2w, pixels, dtype=torch.float64)
    assert origins.dtype == dirs.dtype == torch.float64
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(len(dirs), dtype=torch.float64))
    assert _pixel_miss(camera, origins, dirs, world).max() < 1e-4
    # the default float32 output (the ray store's dtype) is accurate to float32 rounding
    origins32, dirs32 = rays_through(camera, c2w, pixels)
    assert origins32.dtype == dirs32.dtype == torch.float32
    assert _pixel_miss(camera, origins32, dirs32, world).max() < 1e-2


@pytest.mark.parametrize("model", list(CAMERAS))
def test_generate_rays_through_pixel_centres_hit_points_projecting_there(model):
    camera, c2w = CAMERAS[model], _pose()
    pixels = torch.tensor([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1], [317, 241], [100, 400]])
    origins, dirs = generate_rays(camera, c2w.to(torch.float32), pixels)
    assert origins.dtype == dirs.dtype == torch.float32
    # points along those rays project back onto the pixel centres
    depth = torch.tensor([0.7, 3.0, 11.0, 40.0, 5.0, 2.0], dtype=torch.float64)
    world = origins.double() + depth[:, None] * dirs.double()
    cam = (world - c2w[:3, 3]) @ c2w[:3, :3]
    torch.testing.assert_close(camera.project(cam), pixels.double() + 0.5, atol=2e-3, rtol=0)
    # and agree with rays_through at the centres
    o2, d2 = rays_through(camera, c2w, pixels.double() + 0.5)
    torch.testing.assert_close(dirs, d2, atol=1e-6, rtol=0)
    torch.testing.assert_close(origins, o2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model", list(CAMERAS))
def test_projection_matches_colmap(model):
    pycolmap = pytest.importorskip("pycolmap")
    camera = CAMERAS[model]
    ref = pycolmap.Camera(model=model, width=W, height=H, params=list(camera.params))
    _, cam = _points_in_view(camera, _pose(), 500, seed=2)
    expected = ref.img_from_cam(cam.numpy())
    np.testing.assert_allclose(camera.project(cam).numpy(), expected, atol=1e-9, rtol=0)
    # and the inverse: COLMAP's unprojection of pixels equals ours
    pixels = expected
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    ours = camera.undistort(torch.from_numpy(np.stack([(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy], -1)))
    np.testing.assert_allclose(ours.numpy(), ref.cam_from_img(pixels), atol=1e-9, rtol=0)


@pytest.mark.parametrize("model", DISTORTED)
def test_undistort_inverts_distort_over_the_whole_image(model):
    camera = CAMERAS[model]
    lo, hi = _image_corner_bounds(camera)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 321), np.linspace(lo[1], hi[1], 241), indexing="xy")
    xy = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=-1))
    distorted = camera.distort(xy)
    # the grid's distorted image reaches the image corners
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    px = distorted[:, 0] * fx + cx
    py = distorted[:, 1] * fy + cy
    assert px.min() <= 1e-6 and px.max() >= W - 1e-6 and py.min() <= 1e-6 and py.max() >= H - 1e-6
    back = camera.undistort(distorted)
    assert (back - xy).abs().max() < 1e-6
    assert (back - xy).abs().max() < 1e-12  # in fact to float64 rounding
    # and the other way round: distort(undistort(.)) over a dense pixel grid
    u, v = np.meshgrid(np.linspace(0, W, 161), np.linspace(0, H, 121), indexing="xy")
    xd = torch.from_numpy(np.stack([(u.ravel() - cx) / fx, (v.ravel() - cy) / fy], axis=-1))
    assert (camera.distort(camera.undistort(xd)) - xd).abs().max() < 1e-12


@pytest.mark.parametrize("model", DISTORTED)
def test_undistort_keeps_dtype_and_handles_empty_and_inference_mode(model):
    camera = CAMERAS[model]
    xy = torch.tensor([[0.3, -0.2], [-0.5, 0.4]], dtype=torch.float32)
    out = camera.undistort(xy)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    torch.testing.assert_close(camera.distort(out.double()), xy.double(), atol=1e-6, rtol=0)
    assert camera.undistort(torch.zeros((0, 2), dtype=torch.float64)).shape == (0, 2)
    with torch.inference_mode():
        origins, dirs = generate_rays(camera, _pose(), camera.pixel_grid()[:100])
    assert dirs.shape == (100, 3) and torch.isfinite(dirs).all()
    origins, dirs = generate_rays(camera, _pose(), camera.pixel_grid()[:0])
    assert origins.shape == dirs.shape == (0, 3)


def test_undistort_is_identity_without_distortion():
    xy = torch.rand(10, 2, dtype=torch.float64)
    for model in ("SIMPLE_PINHOLE", "PINHOLE"):
        assert not CAMERAS[model].has_distortion
        assert torch.equal(CAMERAS[model].undistort(xy), xy)
    assert not Camera("OPENCV", W, H, (500, 500, 320, 240, 0, 0, 0, 0)).has_distortion


@pytest.mark.parametrize("model", list(CAMERAS))
def test_jitter_stays_within_the_pixel(model):
    camera, c2w = CAMERAS[model], _pose()
    pixels = camera.pixel_grid()[::97]
    pixels = torch.cat([pixels, torch.tensor([[0, 0], [W - 1, H - 1]])])
    g = torch.Generator().manual_seed(3)
    subpixel = []
    for _ in range(8):
        origins, dirs = generate_rays(camera, c2w, pixels, jitter=True, generator=g)
        world = origins.double() + 4.0 * dirs.double()
        cam = (world - c2w[:3, 3]) @ c2w[:3, :3]
        offset = camera.project(cam) - pixels.double()
        assert offset.min() > -1e-3 and offset.max() < 1 + 1e-3
        subpixel.append(offset)
    offsets = torch.cat(subpixel)
    # spread over the pixel, not stuck at the centre
    assert offsets.min() < 0.05 and offsets.max() > 0.95
    assert abs(offsets.mean().item() - 0.5) < 0.02
    # reproducible with the same seed, different with another
    a = generate_rays(camera, c2w, pixels, jitter=True, generator=torch.Generator().manual_seed(7))[1]
    b = generate_rays(camera, c2w, pixels, jitter=True, generator=torch.Generator().manual_seed(7))[1]
    c = generate_rays(camera, c2w, pixels, jitter=True, generator=torch.Generator().manual_seed(8))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pixel_grid_is_row_major_xy():
    camera = Camera.pinhole(10, 10, 2.5, 1.5, width=5, height=3)
    grid = camera.pixel_grid()
    assert grid.shape == (15, 2) and grid.dtype == torch.int64
    assert grid[:6].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [0, 1]]
    assert grid[-1].tolist() == [4, 2]
    for y in range(3):
        for x in range(5):
            assert grid[y * 5 + x].tolist() == [x, y]


def test_centre_pixel_ray_is_the_optical_axis():
    camera = Camera.pinhole(500, 500, 320, 240, W, H)  # principal point at the corner of pixels 319/320
    c2w = _pose()
    origins, dirs = rays_through(camera, c2w, torch.tensor([[320.0, 240.0]]), dtype=torch.float64)
    torch.testing.assert_close(dirs[0], c2w[:3, 2])
    torch.testing.assert_close(origins[0], c2w[:3, 3])
    # rays come back on the pose's device, whatever the input's dtype
    o, d = generate_rays(camera, torch.eye(4, dtype=torch.float32), torch.tensor([[319, 239]], dtype=torch.int32))
    assert d.device == torch.device("cpu") and d.dtype == torch.float32
    assert d[0, 0] < 0 and d[0, 1] < 0  # up-left of the centre: x and y negative in OpenCV


def test_intrinsic_properties():
    cam = CAMERAS["OPENCV"]
    assert cam.focal == (521.5, 516.0)
    assert cam.principal_point == (318.2, 242.7)
    assert cam.distortion == (-0.2, 0.05, 1e-3, -5e-4)
    np.testing.assert_array_equal(cam.K, [[521.5, 0, 318.2], [0, 516.0, 242.7], [0, 0, 1]])
    assert CAMERAS["SIMPLE_RADIAL"].distortion == (-0.08, 0.0, 0.0, 0.0)
    assert CAMERAS["RADIAL"].distortion == (-0.2, 0.05, 0.0, 0.0)
    assert CAMERAS["SIMPLE_PINHOLE"].focal == (520.0, 520.0)
    # params are normalised to floats; Camera is hashable and compares by value
    a = Camera("SIMPLE_PINHOLE", W, H, (520, 320, 240))
    assert a.params == (520.0, 320.0, 240.0) and all(type(p) is float for p in a.params)
    assert a == CAMERAS["SIMPLE_PINHOLE"] and hash(a) == hash(CAMERAS["SIMPLE_PINHOLE"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("FISHEYE", W, H, (500, 320, 240, 0.1)), "unsupported camera model 'FISHEYE'"),
        (("OPENCV_FISHEYE", W, H, (500, 500, 320, 240, 0, 0, 0, 0)), "unsupported camera model"),
        (("PINHOLE", W, H, (500, 320, 240)), "PINHOLE takes 4 parameters, got 3"),
        (("OPENCV", W, H, (500, 500, 320, 240)), "OPENCV takes 8 parameters, got 4"),
        (("SIMPLE_RADIAL", W, H, (500, 320, 240, 0.1, 0.2)), "SIMPLE_RADIAL takes 4 parameters, got 5"),
        (("PINHOLE", W, H, (500, float("nan"), 320, 240)), "non-finite intrinsics"),
        (("RADIAL", W, H, (500, 320, 240, float("inf"), 0.0)), "non-finite intrinsics"),
        (("PINHOLE", W, H, (500, 0.0, 320, 240)), "non-positive focal length"),
        (("SIMPLE_PINHOLE", W, H, (-500, 320, 240)), "non-positive focal length"),
        (("PINHOLE", 0, H, (500, 500, 320, 240)), "invalid image size 0x480"),
        (("PINHOLE", W, -1, (500, 500, 320, 240)), "invalid image size"),
    ],
)
def test_bad_intrinsics_raise_input_error(args, message):
    with pytest.raises(InputError, match=message) as info:
        Camera(*args)
    assert info.value.path == "camera"


def test_scaled_camera_projects_to_scaled_pixels():
    for model, camera in CAMERAS.items():
        _, cam = _points_in_view(camera, _pose(), 200, seed=4)
        half = camera.scaled(0.5, 0.5, W // 2, H // 2)
        assert (half.width, half.height, half.model) == (W // 2, H // 2, model)
        assert half.distortion == camera.distortion
        torch.testing.assert_close(half.project(cam), camera.project(cam) * 0.5)
        # rays through corresponding positions are the same rays
        pixels = camera.project(cam)
        _, d_full = rays_through(camera, _pose(), pixels, dtype=torch.float64)
        _, d_half = rays_through(half, _pose(), pixels * 0.5, dtype=torch.float64)
        torch.testing.assert_close(d_full, d_half)
    # anisotropic scaling is fine with separate focal lengths
    aniso = CAMERAS["OPENCV"].scaled(0.5, 0.25, W // 2, H // 4)
    _, cam = _points_in_view(CAMERAS["OPENCV"], _pose(), 50, seed=5)
    scale = torch.tensor([0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(aniso.project(cam), CAMERAS["OPENCV"].project(cam) * scale)


def test_scaling_a_single_focal_model_anisotropically_is_an_error():
    for model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        with pytest.raises(InputError, match="one focal length"):
            CAMERAS[model].scaled(0.5, 0.25, W // 2, H // 4)


def test_cropped_camera_shifts_pixels():
    for camera in CAMERAS.values():
        _, cam = _points_in_view(camera, _pose(), 200, seed=6)
        crop = camera.cropped(100, 40, 300, 200)
        assert (crop.width, crop.height) == (300, 200)
        assert crop.focal == camera.focal and crop.distortion == camera.distortion
        shift = torch.tensor([100.0, 40.0], dtype=torch.float64)
        torch.testing.assert_close(crop.project(cam), camera.project(cam) - shift)
        # pixel (i, j) of the crop sees what pixel (i + 100, j + 40) of the full image sees
        pixels = torch.tensor([[0, 0], [299, 199], [150, 77]])
        _, d_crop = generate_rays(crop, _pose(), pixels)
        _, d_full = generate_rays(camera, _pose(), pixels + torch.tensor([100, 40]))
        torch.testing.assert_close(d_crop, d_full)

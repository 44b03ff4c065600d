"""Camera intrinsics in COLMAP's models, with distortion, projection and batched ray generation.

Pixel coordinates follow COLMAP: the top-left pixel's centre is at (0.5, 0.5).
Poses are camera-to-world 4x4 in the OpenCV convention (x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bigscene.errors import InputError

#: COLMAP camera models we support, with their parameter names in COLMAP order.
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}

_UNDISTORT_ITERATIONS = 20


@dataclass(frozen=True)
class Camera:
    """One intrinsic calibration: a COLMAP model name, image size and parameters in COLMAP order."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise InputError(
                "camera", f"unsupported camera model {self.model!r}; supported: {', '.join(CAMERA_MODELS)}"
            )
        expected = len(CAMERA_MODELS[self.model])
        if len(self.params) != expected:
            raise InputError("camera", f"{self.model} takes {expected} parameters, got {len(self.params)}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if not np.all(np.isfinite(self.params)):
            raise InputError("camera", f"non-finite intrinsics {self.params}")
        if min(self.focal) <= 0.0:
            raise InputError("camera", f"non-positive focal length in {self.model} intrinsics {self.params}")
        if self.width <= 0 or self.height <= 0:
            raise InputError("camera", f"invalid image size {self.width}x{self.height}")

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Camera:
        return cls("PINHOLE", int(width), int(height), (fx, fy, cx, cy))

    def _named(self) -> dict[str, float]:
        return dict(zip(CAMERA_MODELS[self.model], self.params, strict=True))

    @property
    def focal(self) -> tuple[float, float]:
        p = self._named()
        return (p["fx"], p["fy"]) if "fx" in p else (p["f"], p["f"])

    @property
    def principal_point(self) -> tuple[float, float]:
        p = self._named()
        return p["cx"], p["cy"]

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix."""
        fx, fy = self.focal
        cx, cy = self.principal_point
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> tuple[float, float, float, float]:
        """(k1, k2, p1, p2) in OpenCV's sense; zeros where the model has none."""
        p = self._named()
        return (p.get("k1", p.get("k", 0.0)), p.get("k2", 0.0), p.get("p1", 0.0), p.get("p2", 0.0))

    @property
    def has_distortion(self) -> bool:
        return any(c != 0.0 for c in self.distortion)

    def scaled(self, sx: float, sy: float, width: int, height: int) -> Camera:
        """The same camera after resizing the image by (sx, sy) to width x height."""
        named = self._named()
        out = []
        for name, value in named.items():
            if name in ("fx", "cx"):
                value *= sx
            elif name in ("fy", "cy"):
                value *= sy
            elif name == "f":
                if not np.isclose(sx, sy):
                    raise InputError("camera", f"{self.model} has one focal length; cannot scale by {sx}, {sy}")
                value *= sx
            out.append(value)
        return Camera(self.model, width, height, tuple(out))

    def cropped(self, left: int, top: int, width: int, height: int) -> Camera:
        """The same camera after cropping the image to the window starting at (left, top)."""
        named = self._named()
        named["cx"] -= left
        named["cy"] -= top
        return Camera(self.model, width, height, tuple(named[n] for n in CAMERA_MODELS[self.model]))

    def distort(self, xy: torch.Tensor) -> torch.Tensor:
        """Apply lens distortion to normalised image coordinates. xy: (N, 2) -> (N, 2)."""
        k1, k2, p1, p2 = self.distortion
        x, y = xy[:, 0], xy[:, 1]
        r2 = x * x + y * y
        radial = 1.0 + k1 * r2 + k2 * r2 * r2
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        return torch.stack([x * radial + dx, y * radial + dy], dim=-1)

    def undistort(self, xy_distorted: torch.Tensor) -> torch.Tensor:
        """Invert `distort` by Newton's method on normalised coordinates. (N, 2) -> (N, 2).

        Uses the closed-form 2x2 Jacobian, so it runs under `torch.no_grad` and `torch.inference_mode`
        and costs a few elementwise passes per iteration. Computed in float64, returned in the input dtype.
        """
        if not self.has_distortion or xy_distorted.shape[0] == 0:
            return xy_distorted
        k1, k2, p1, p2 = self.distortion
        target = xy_distorted.to(torch.float64)
        tx, ty = target[:, 0], target[:, 1]
        x, y = tx.clone(), ty.clone()
        for _ in range(_UNDISTORT_ITERATIONS):
            r2 = x * x + y * y
            radial = 1.0 + k1 * r2 + k2 * r2 * r2
            dradial = 2.0 * k1 + 4.0 * k2 * r2  # d radial / dx = dradial * x, likewise for y
            fx = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - tx
            fy = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - ty
            j00 = radial + dradial * x * x + 2.0 * p1 * y + 6.0 * p2 * x
            j01 = dradial * x * y + 2.0 * p1 * x + 2.0 * p2 * y  # symmetric: d fx/dy == d fy/dx
            j11 = radial + dradial * y * y + 6.0 * p1 * y + 2.0 * p2 * x
            det = j00 * j11 - j01 * j01
            step_x = (j11 * fx - j01 * fy) / det
            step_y = (j00 * fy - j01 * fx) / det
            x = x - step_x
            y = y - step_y
            if torch.maximum(step_x.abs().max(), step_y.abs().max()) < 1e-14:
                break
        return torch.stack([x, y], dim=-1).to(xy_distorted.dtype)

    def project(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates of camera-frame points. points_cam: (N, 3) -> (N, 2)."""
        xy = points_cam[:, :2] / points_cam[:, 2:3]
        xy = self.distort(xy)
        fx, fy = self.focal
        cx, cy = self.principal_point
        return torch.stack([xy[:, 0] * fx + cx, xy[:, 1] * fy + cy], dim=-1)

    def pixel_grid(self) -> torch.Tensor:
        """Integer pixel indices (x, y) of every pixel, row-major. (H*W, 2) int64."""
        ys, xs = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def rays_through(
    camera: Camera,
    c2w: torch.Tensor,
    coords: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through arbitrary (sub-)pixel positions of one camera.

    c2w: (4, 4) camera-to-world (OpenCV). coords: (N, 2) float pixel coordinates (x, y) in COLMAP's
    convention (the top-left pixel's centre is (0.5, 0.5)). Lens distortion is removed, so each ray
    passes through every 3-D point that `camera.project` maps to its coordinate. Returns origins (N, 3)
    and unit dirs (N, 3) in `dtype` (float32 by default), on c2w's device; the maths runs in float64.
    """
    c2w64 = torch.as_tensor(c2w).to(torch.float64)
    coords = torch.as_tensor(coords).to(device=c2w64.device, dtype=torch.float64).reshape(-1, 2)
    fx, fy = camera.focal
    cx, cy = camera.principal_point
    xy = torch.stack([(coords[:, 0] - cx) / fx, (coords[:, 1] - cy) / fy], dim=-1)
    xy = camera.undistort(xy)
    dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)  # (N, 3)
    dirs = dirs_cam @ c2w64[:3, :3].T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w64[:3, 3].expand_as(dirs)
    return origins.to(dtype).contiguous(), dirs.to(dtype).contiguous()


def generate_rays(
    camera: Camera,
    c2w: torch.Tensor,
    pixels: torch.Tensor,
    jitter: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixels of one camera.

    c2w: (4, 4) camera-to-world (OpenCV). pixels: (N, 2) integer pixel indices (x, y), rays go through
    pixel centres, or a uniform point in each pixel with `jitter` (drawn on the CPU from `generator`).
    Returns float32 origins (N, 3) and unit dirs (N, 3), on c2w's device.
    """
    device = c2w.device
    coords = pixels.to(device=device, dtype=torch.float64)
    if jitter:
        coords = coords + torch.rand(coords.shape, generator=generator, dtype=torch.float64).to(device)
    else:
        coords = coords + 0.5
    return rays_through(camera, c2w, coords)

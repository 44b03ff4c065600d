"""Ray generation throughput: distorted (OPENCV, Newton undistortion) against pinhole, whole images."""

from __future__ import annotations

import time

import torch

from benchmarks.table import BenchRow, print_table
from bigscene.scene import Camera, generate_rays

WIDTH, HEIGHT = 640, 480


def rays_per_second(camera: Camera, repeats: int = 3) -> float:
    pixels = camera.pixel_grid()  # (H*W, 2)
    c2w = torch.eye(4)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        generate_rays(camera, c2w, pixels)
        best = min(best, time.perf_counter() - started)
    return len(pixels) / best


def run() -> list[BenchRow]:
    pinhole = Camera.pinhole(500.0, 500.0, WIDTH / 2, HEIGHT / 2, WIDTH, HEIGHT)
    opencv = Camera("OPENCV", WIDTH, HEIGHT, (500.0, 500.0, WIDTH / 2, HEIGHT / 2, -0.2, 0.05, 1e-3, -5e-4))
    baseline = rays_per_second(pinhole)
    return [BenchRow("rays/s, OPENCV 640x480", rays_per_second(opencv), "PINHOLE", baseline, "rays/s")]


if __name__ == "__main__":
    print_table("ray generation (CPU)", run())

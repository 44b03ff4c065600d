"""Synthetic-city render throughput: the gridded, ray-aware sphere tracer against plain sphere tracing of the
full SDF (every primitive, isotropic steps), and whole-image rendering in large chunks against small ones;
on CPU, and on CUDA when present. Both sides of each row run interleaved in the same rounds."""

from __future__ import annotations

import torch

from benchmarks.bench_fields import best_times
from benchmarks.table import BenchRow, print_table
from bigscene.scene.cameras import generate_rays
from bigscene.synth import CitySDF, RenderSettings, generate_layout, make_config, render_view
from bigscene.synth.capture import intrinsics, plan_views
from bigscene.synth.render import ray_bounds, sphere_trace

PRESET = "small"
VIEWS = (3, 20, 66, 79)  # nadir, oblique, street and novel views of the small preset


def _rows(device: torch.device, repeats: int) -> list[BenchRow]:
    config = make_config(PRESET)
    city = CitySDF(generate_layout(config), device)
    views = plan_views(config, city.layout)
    camera = intrinsics(config)
    settings = RenderSettings(max_steps=config.max_steps)
    rays = [
        generate_rays(camera, torch.from_numpy(views[i].c2w).to(device), camera.pixel_grid().to(device)) for i in VIEWS
    ]
    origins, dirs = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])  # (R, 3)
    near, far = ray_bounds(origins, dirs, city.z_top, city.far)
    cone = 0.5 / max(camera.focal)

    def trace(march) -> None:
        for s in range(0, len(origins), settings.chunk_rays):
            sl = slice(s, s + settings.chunk_rays)
            sphere_trace(march, origins[sl], dirs[sl], near[sl], far[sl], settings.max_steps, settings.hit_eps, cone)

    def render(chunk: int) -> None:
        chunked = RenderSettings(max_steps=config.max_steps, chunk_rays=chunk)
        for i in VIEWS:
            render_view(city, camera, views[i].c2w, chunked)

    best = best_times(
        {
            "gridded": lambda: trace(city.step),
            "full": lambda: trace(lambda p, d: city.full(p)),
            "batched": lambda: render(65536),
            "small": lambda: render(2048),
        },
        device,
        repeats,
    )
    n, size = len(origins), f"{PRESET} {config.width}x{config.height}, {device.type.upper()}"
    return [
        BenchRow(
            f"trace rays/s, gridded ray-aware ({size})", n / best["gridded"], "full SDF", n / best["full"], "rays/s"
        ),
        BenchRow(
            f"rendered px/s, 65536-ray chunks ({size})",
            n / best["batched"],
            "2048-ray chunks",
            n / best["small"],
            "px/s",
        ),
    ]


def run() -> list[BenchRow]:
    rows = _rows(torch.device("cpu"), repeats=2)
    if torch.cuda.is_available():
        rows += _rows(torch.device("cuda"), repeats=3)
    return rows


if __name__ == "__main__":
    print_table(f"synthetic city rendering ({torch.get_num_threads()} CPU threads)", run())

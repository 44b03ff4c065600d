"""GPU benchmark: train one block of a reduced `city` synthetic scene for a few minutes; print samples/s and
validation PSNR against training time, then mesh the block and print its F-score against the synthetic ground
truth inside the block's inner box (the region it owns; the other blocks are not trained). End to end (generate,
partition, train, mesh, evaluate, report) in under 8 minutes; the figures are also written to WS/gpu_train.json.

Runs where Ray and W&B are not installed: partition.engine=inline, train.engine=inline, merge.engine=inline,
logging.tracker=csv.
bigscene's own dependencies (zarr, omegaconf) must be importable; on a machine without them, install their
wheels first (see launch/README.md). `--smoke` runs the whole path at toy sizes on any machine (CPU too).

    python benchmarks/gpu_train.py [--minutes 3] [--workspace /tmp/bigscene_gpu_city] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("gpu_train")

#: The `city` preset cut down so that generation takes about two minutes on one GPU: 3 x 3 city blocks,
#: ~300 views at 320 x 240 with no supersampling or soft shadows; the ground-truth mesh at 0.5 m.
CITY = {
    "blocks_x": 3,
    "blocks_y": 3,
    "width": 320,
    "height": 240,
    "supersample": 1,
    "soft_shadows": False,
    "aerial_clearance": "40,70",
    "aerial_lines": 4,
    "aerial_stops": 6,
    "street_stops": 20,
    "novel_views": 8,
    "test_every": 10,
    "points": 40000,
    "gt_voxel": 0.5,
}
CITY_TRAIN = [
    "partition.voxel_size=0.5",
    "partition.chunk_rays=65536",
    "sampler.min_voxel_size=0.25",
    "sampler.surface_band=0.5",
    "train.steps=1000000",  # bounded by --minutes
    "train.rays_per_batch=4096",
    "train.target_samples=262144",
    "train.val_every=250",
    "train.val_views=2",
    "train.val_chunk=16384",
    "train.ckpt_every=1000",
    "train.voxel_update_every=1000",
    "train.log_every=25",
    "merge.voxel_size=0.5",  # F-score at 2 x 0.5 m
]
#: Toy sizes for --smoke: the tiny city and the model the CPU tests train.
#: Bundled config with the toy model and sampler every CPU check trains.
TOY_CONFIG = "cpu_toy"
TINY = {"gt_voxel": 0.5, "width": 48, "height": 36, "ambient_occlusion": False}
TINY_TRAIN = [
    "partition.voxel_size=1.0",
    "partition.chunk_rays=2048",
    "train.steps=40",
    "train.rays_per_batch=256",
    "train.target_samples=4096",
    "train.max_rays_per_batch=1024",
    "train.val_every=20",
    "train.val_views=1",
    "train.ckpt_every=20",
    "train.voxel_update_every=20",
    "train.shuffle_buffer=8192",
    "train.num_workers=0",
    "train.log_every=5",
    "merge.voxel_size=0.5",
    "merge.chunk=33",
]
#: One trained block is meshed alone (the others are absent), without vertex colours (not scored).
ENGINES = [
    "partition.engine=inline",
    "train.engine=inline",
    "merge.engine=inline",
    "merge.allow_missing=true",
    "merge.colour=false",
    "logging.tracker=csv",
]


def check_dependencies() -> None:
    missing = [name for name in ("zarr", "omegaconf", "pycolmap", "trimesh") if importlib.util.find_spec(name) is None]
    if missing:
        log.error("missing %s: install bigscene's dependencies (wheels: see launch/README.md)", ", ".join(missing))
        sys.exit(2)
    if importlib.util.find_spec("numba") is None:
        log.warning("numba is not installed: partitioning runs its numpy kernels (same results, about 5x slower)")


def report(metrics_csv: Path) -> list[tuple[float, int, float | None, float | None]]:
    """(training seconds, step, validation PSNR or None, samples/s or None) rows from the CSV log, by time."""
    rows = []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if not row.get("perf/train_seconds"):
                continue
            psnr = float(row["val/psnr"]) if row.get("val/psnr") else None
            rate = float(row["perf/samples_per_second"]) if row.get("perf/samples_per_second") else None
            rows.append((float(row["perf/train_seconds"]), int(row["step"]), psnr, rate))
    return sorted(rows, key=lambda r: (r[0], r[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="/tmp/bigscene_gpu_city")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time of the block")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the path end to end, on any machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_dependencies()

    import torch
    from rich.console import Console
    from rich.table import Table

    from bigscene.config import load_config
    from bigscene.merge.stage import block_geometry, run_mesh
    from bigscene.synth import generate, make_config
    from bigscene.train import run_train
    from partitioning import run_partition

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    preset, synth = ("tiny", TINY) if args.smoke else ("city", CITY)
    overrides = [*ENGINES, *(TINY_TRAIN if args.smoke else CITY_TRAIN), f"train.max_minutes={args.minutes}"]
    config = load_config(TOY_CONFIG if args.smoke else None, overrides)
    ws = args.workspace
    timings = {}

    started = time.perf_counter()
    summary = generate(make_config(preset, synth), ws)
    timings["generate"] = time.perf_counter() - started
    log.info(
        "%s city: %s images at %dx%d in %.0f s on %s",
        preset,
        summary["images"],
        *summary["resolution"],
        timings["generate"],
        device,
    )

    started = time.perf_counter()
    partition = run_partition(ws, config)
    timings["partition"] = time.perf_counter() - started
    block = max(partition["rays_per_block"], key=partition["rays_per_block"].get)
    log.info(
        "partitioned %d rays into %d blocks in %.0f s; training %s (%d rays) for %.1f min",
        partition["rays"],
        partition["blocks"],
        timings["partition"],
        block,
        partition["rays_per_block"][block],
        args.minutes,
    )

    started = time.perf_counter()
    result = run_train(ws, config, blocks=[block])["records"][block]
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    mesh = run_mesh(ws, config)
    geometry = block_geometry(ws, config, block)
    timings["mesh + eval"] = time.perf_counter() - started
    log.info("meshed %s: %d faces in %.0f s", block, mesh["faces"], timings["mesh + eval"])

    versions = sorted((Path(ws) / "logs" / "csv" / block).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    table = Table(title=f"{block} of the reduced city on {device}: PSNR and samples/s against training time")
    for column in ("train s", "step", "val PSNR", "samples/s"):
        table.add_column(column, justify="right")
    for seconds, step, psnr, rate in report(versions[-1] / "metrics.csv"):
        table.add_row(
            f"{seconds:.1f}", str(step), "" if psnr is None else f"{psnr:.2f}", "" if rate is None else f"{rate:,.0f}"
        )
    console = Console(width=100)
    console.print(table)
    psnr = " -> ".join("?" if v is None else f"{v:.2f}" for v in (result["psnr_start"], result["psnr"]))
    console.print(
        f"{block}: {result['steps']} steps, PSNR {psnr} dB, {result['samples_per_second']:,.0f} samples/s, "
        f"{result['steps_per_second']} steps/s; " + ", ".join(f"{stage} {s:.0f} s" for stage, s in timings.items())
    )
    console.print(
        f"{block} mesh against the ground truth in its inner box: F-score {geometry['fscore']:.3f} at "
        f"{geometry['threshold']:g} scene units (precision {geometry['precision']:.3f}, "
        f"recall {geometry['recall']:.3f}), Chamfer {geometry['chamfer']:.3f}"
    )
    record = {
        "device": device,
        "preset": preset,
        "block": block,
        "train": result,
        "geometry": geometry,
        "seconds": timings,
    }
    Path(ws, "gpu_train.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sampler efficiency on CPU (one thread): held-out PSNR at equal samples per ray, on one block of the `small` city.

The same block is trained twice from the same seed, with the same model (configs/cpu_toy.yaml), steps, rays per
batch and samples per ray (rendered intervals, as the trainer counts samples): once with the surface-guided
sampler (points in the ray's occupied voxels, in a band around its surface, and uniform), once with uniform +
importance sampling (NeuS up-sampling). The figure is the PSNR of the final validation render of the block's
held-out test views, which each sampler renders at the same counts. A ray that misses the surface voxels or
has no surface yet gets fewer guided samples: the mean the guided run used is in the row's label. One seed: at
this CPU budget (the toy model, far from converged) the spread of the final PSNR over seeds exceeds the gap
between the samplers, so read a gap under about 0.5 dB as a tie.

The city is the `small` preset at its full resolution, without the ground-truth mesh (not used here).
"""

from __future__ import annotations

import logging

from benchmarks.table import BenchRow, print_table
from benchmarks.workspaces import partitioned_city
from bigscene.config import Config, load_config
from bigscene.train import BlockResult, fit_block

log = logging.getLogger(__name__)

PRESET = "small"
SYNTH = {"gt_mesh": False}
#: Bundled config with the toy model every CPU check trains.
TOY_CONFIG = "cpu_toy"
PARTITION = ["partition.engine=inline", "partition.chunk_rays=16384", "partition.voxel_size=1.0"]
BLOCK = "b000"
STEPS = 400
RAYS = 512
#: Samples (intervals) per ray of both samplers.
SAMPLES = 24
TRAIN = [
    f"train.steps={STEPS}",
    f"train.rays_per_batch={RAYS}",
    "train.target_samples=0",  # a fixed batch: the same rays every step for both samplers
    f"train.max_rays_per_batch={RAYS}",
    "train.warmup_steps=20",
    f"train.val_every={STEPS}",
    "train.val_views=2",
    f"train.ckpt_every={STEPS}",
    "train.voxel_update_every=50",
    "train.shuffle_buffer=16384",
    "train.num_workers=0",
    "train.engine=inline",
    "logging.tracker=none",
]
#: surface-guided: SAMPLES + 1 points (12 over the ray's occupied voxels, 8 in the band around its surface, 5 uniform)
#: bound SAMPLES intervals.
GUIDED = [
    "sampler.kind=surface_guided",
    f"sampler.voxel_samples={SAMPLES // 2}",
    f"sampler.surface_samples={SAMPLES // 3}",
    f"sampler.guided_uniform_samples={SAMPLES + 1 - SAMPLES // 2 - SAMPLES // 3}",
]
#: uniform + importance: 12 uniform intervals, then 12 NeuS up-sampled points over 4 rounds, each splitting one.
IMPORTANCE = [
    "sampler.kind=importance",
    f"sampler.num_samples={SAMPLES // 2}",
    f"sampler.num_importance={SAMPLES - SAMPLES // 2}",
]


def _config(*overrides: str) -> Config:
    return load_config(TOY_CONFIG, [*PARTITION, *TRAIN, *overrides])


def _train(ws: str, name: str, config: Config) -> tuple[float, float]:
    """(held-out PSNR, mean samples per ray) of a fresh run of BLOCK."""
    result: BlockResult = fit_block(ws, BLOCK, config, progress_bar=False, overwrite=True)
    per_ray = (result.samples_per_second or 0.0) / (result.steps_per_second or 1.0) / RAYS
    psnr = result.psnr if result.psnr is not None else float("nan")
    log.info(
        "%s: held-out PSNR %.2f -> %.2f dB in %d steps (%.0f s), %.1f samples per ray",
        name,
        result.psnr_start if result.psnr_start is not None else float("nan"),
        psnr,
        result.steps,
        result.seconds,
        per_ray,
    )
    return psnr, per_ray


def run() -> list[BenchRow]:
    with partitioned_city(PRESET, SYNTH, PARTITION, "bench_sampling_") as ws:
        guided, guided_per_ray = _train(ws, "surface-guided", _config(*GUIDED))
        importance, _ = _train(ws, "uniform + importance", _config(*IMPORTANCE))
        return [
            BenchRow(
                f"held-out PSNR, surface-guided at up to {SAMPLES} samples/ray (mean {guided_per_ray:.0f}), "
                f"{PRESET} city {BLOCK}, {STEPS} steps",
                guided,
                f"uniform + importance, {SAMPLES}/ray",
                importance,
                "dB",
            )
        ]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print_table("sampler efficiency (CPU, 1 thread)", run())

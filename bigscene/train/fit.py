"""Train one block in this process: build its model, data, tracker and Trainer; resume; validate; export.

The same function runs inline, inside a Ray task, and on every rank of a Lightning DDP launch (rank zero
alone writes status, renders and the exported model).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import fsspec
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from bigscene.config import Config, TrainConfig
from bigscene.errors import BigsceneError, ConfigError
from bigscene.render import SparseVoxels
from bigscene.scene import Scene
from bigscene.store import read_scene
from bigscene.store.blocks import read_voxels, remove_tree
from bigscene.store.workspace import exists
from bigscene.train.blocks import BlockSpec, block_fingerprint, last_checkpoint_path, read_block, read_status
from bigscene.train.callbacks import AtomicCheckpointIO, StatusReporter, ValidationImages, VoxelUpdate, checkpoints
from bigscene.train.data import RayDataModule
from bigscene.train.export import export_block, read_checkpoint
from bigscene.train.loggers import finish, make_logger
from bigscene.train.model import BlockModel
from bigscene.train.module import BlockModule, TrainingDiverged
from bigscene.train.optim import BatchSizer, RayBudget
from bigscene.train.views import block_views

log = logging.getLogger(__name__)


@dataclass
class BlockResult:
    """How one block's training ended; a row of WS/train.json."""

    block: str
    state: str  # done | failed
    steps: int = 0
    seconds: float = 0.0
    psnr: float | None = None
    psnr_start: float | None = None
    ssim: float | None = None
    steps_per_second: float | None = None
    samples_per_second: float | None = None
    resumed_from: int | None = None
    attempt: int = 1
    checkpoint: str | None = None
    best: str | None = None
    model: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_accelerator(name: str) -> str:
    """auto -> gpu when CUDA sees one, else cpu; a GPU asked for but absent is a ConfigError."""
    available = torch.cuda.is_available()
    if name == "gpu" and not available:
        raise ConfigError("train.accelerator=gpu but no GPU is visible to this process; use train.accelerator=cpu")
    return name if name != "auto" else ("gpu" if available else "cpu")


def resolve_precision(name: str, accelerator: str) -> str:
    """auto -> bf16 autocast (MLPs; SDF, normals and eikonal stay float32) on a GPU that has bf16, else float32."""
    if name == "auto":
        return "bf16-mixed" if accelerator == "gpu" and torch.cuda.is_bf16_supported() else "32-true"
    return "32-true" if name == "32" else name


def block_points(scene: Scene, outer: np.ndarray, min_track_length: int) -> torch.Tensor:
    """(P, 3) float32 SfM points inside the box outer (2, 3) with a track of at least min_track_length."""
    pts = scene.points
    xyz = np.asarray(pts.xyz, dtype=np.float64).reshape(-1, 3)
    keep = (np.asarray(pts.track_length) >= min_track_length) & np.all((xyz >= outer[0]) & (xyz <= outer[1]), axis=1)
    return torch.from_numpy(xyz[keep]).float()


def _checkpoint_step(path: str) -> int | None:
    """The global step of a readable checkpoint, else None."""
    if not exists(path):
        return None
    try:
        with fsspec.open(path, "rb") as f:
            return int(torch.load(f, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # a damaged or foreign file: no step to report
        return None


def failed_result(workspace: str, block_id: str, reason: str) -> BlockResult:
    """A failed block's record: the reason, and its last checkpoint (kept for a re-run to resume) if readable."""
    path = last_checkpoint_path(workspace, block_id)
    step = _checkpoint_step(path)
    return BlockResult(
        block=block_id, state="failed", steps=step or 0, checkpoint=path if step else None, reason=reason
    )


def _resume_point(spec: BlockSpec, fingerprint: str, overwrite: bool) -> tuple[str | None, int | None]:
    """The checkpoint to resume from (and its step), after checking it is this block's; with `overwrite`, a
    checkpoint of another config is removed (with the exported model) instead of refused."""
    if not exists(spec.last_ckpt):
        return None, None
    try:
        checkpoint = read_checkpoint(spec.last_ckpt, spec.id, fingerprint)
    except BigsceneError:
        if not overwrite:
            raise
        log.warning("block %s: removing its checkpoints and model of another config (--overwrite)", spec.id)
        remove_tree(spec.ckpt_dir)
        remove_tree(spec.model_path)
        return None, None
    return spec.last_ckpt, int(checkpoint["global_step"])


def _validate(trainer: pl.Trainer, module: BlockModule, data: RayDataModule) -> dict[str, float]:
    metrics = trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in metrics[0].items()} if metrics else {}


def _check_finite(module: BlockModule, step: int) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
        raise TrainingDiverged(f"block {module.block_id}: the weights became non-finite at step {step}")


def _module(spec: BlockSpec, config: Config, scene: Scene, fingerprint: str, budget: RayBudget) -> BlockModule:
    """The block's model (on the partition's surface voxels) wrapped for training."""
    cfg = config.train
    stored = read_voxels(spec.voxels)
    voxels = SparseVoxels(torch.from_numpy(stored.origin).float(), stored.voxel_size, torch.from_numpy(stored.coords))
    model = BlockModel(config.model, config.sampler, spec.inner, spec.outer, len(scene.images), voxels)
    return BlockModule(
        model,
        config,
        block_points(scene, spec.outer, config.partition.min_track_length),
        BatchSizer(budget, cfg.target_samples, cfg.max_rays_per_batch),
        spec.ray_count,
        spec.id,
        fingerprint,
    )


def _trainer(
    spec: BlockSpec,
    cfg: TrainConfig,
    accelerator: str,
    logger: Logger | bool,
    callbacks: list[pl.Callback],
    validate: bool,
    progress_bar: bool,
) -> pl.Trainer:
    """Step-based training on the endless ray stream, validating every val_every steps; DDP over several devices."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
        precision=resolve_precision(cfg.precision, accelerator),
        max_steps=cfg.steps,
        max_epochs=-1,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if validate else 0,
        num_sanity_val_steps=0,
        inference_mode=False,  # validation under no_grad: NeuS normals need autograd inside it
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=spec.dir,
    )


def fit_block(
    workspace: str,
    block_id: str,
    config: Config,
    *,
    run_id: str = "",
    progress_bar: bool = True,
    overwrite: bool = False,
) -> BlockResult:
    """Train block `block_id` to config.train.steps, resuming from its last checkpoint; export its model.pt.

    Raises BigsceneError for bad input (no rays, a foreign or corrupt checkpoint) and TrainingDiverged when
    the loss or weights become non-finite (the last good checkpoint stays on disk).
    """
    started = time.perf_counter()
    cfg = config.train
    spec = read_block(workspace, block_id)
    fingerprint = block_fingerprint(spec, config)
    resume, resumed_from = _resume_point(spec, fingerprint, overwrite)
    previous = read_status(spec)
    attempt = previous.get("attempt", 0) + 1 if run_id and previous.get("run") == run_id else 1
    psnr_start = previous.get("psnr_start") if resume else None

    scene = read_scene(workspace)
    accelerator = resolve_accelerator(cfg.accelerator)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    budget = RayBudget(cfg.rays_per_batch)
    module = _module(spec, config, scene, fingerprint, budget)
    views = block_views(scene, spec.outer, cfg.val_views)
    data = RayDataModule(
        spec.rays,
        views,
        budget,
        cfg.max_rays_per_batch,
        cfg.shuffle_buffer,
        cfg.num_workers,
        cfg.seed,
        pin_memory=accelerator == "gpu",
    )
    logger = make_logger(spec, config, fingerprint)
    status = StatusReporter(
        spec,
        {
            "block": spec.id,
            "run": run_id,
            "attempt": attempt,
            "pid": os.getpid(),
            "steps_total": cfg.steps,
            "fingerprint": fingerprint,
            "resumed_from": resumed_from,
            "psnr_start": psnr_start,
        },
    )
    callbacks = [*checkpoints(spec, cfg.ckpt_every, bool(views)), status, ValidationImages(spec.renders_dir)]
    if cfg.voxel_update_every and config.sampler.kind == "surface_guided":
        callbacks.append(VoxelUpdate(cfg.voxel_update_every))
    trainer = _trainer(spec, cfg, accelerator, logger, callbacks, bool(views), progress_bar)
    log.info(
        "block %s: %d rays, %d validation views, %s",
        spec.id,
        spec.ray_count,
        len(views),
        f"resuming from step {resumed_from}" if resume else "from scratch",
    )
    try:
        if views and resume is None:
            psnr_start = _validate(trainer, module, data).get("val/psnr")
            status.doc["psnr_start"] = psnr_start
        trainer.fit(module, datamodule=data, ckpt_path=resume)
        _check_finite(module, trainer.global_step)
        trainer.save_checkpoint(spec.last_ckpt, weights_only=False)
        if module.validated_at == trainer.global_step:
            final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        else:
            final = _validate(trainer, module, data) if views else {}
    except TrainingDiverged as err:
        finish(logger, "failed")
        kept = _checkpoint_step(spec.last_ckpt)
        reason = f"{err}; stopped, last good checkpoint kept: " + (
            f"{spec.last_ckpt} (step {kept})" if kept is not None else "none (it diverged before the first)"
        )
        status.write(trainer, state="failed", reason=reason)
        raise TrainingDiverged(reason) from err
    except BaseException:
        finish(logger, "failed")
        raise
    finish(logger, "success")
    result = BlockResult(
        block=spec.id,
        state="done",
        steps=trainer.global_step,
        seconds=round(time.perf_counter() - started, 2),
        psnr=final.get("val/psnr"),
        psnr_start=psnr_start,
        ssim=final.get("val/ssim"),
        steps_per_second=round(status.steps_per_second, 3) if status.steps else None,
        samples_per_second=round(status.samples_per_second, 1) if status.steps else None,
        resumed_from=resumed_from,
        attempt=attempt,
        checkpoint=spec.last_ckpt,
        best=spec.best_ckpt if exists(spec.best_ckpt) else None,
        model=spec.model_path,
    )
    if trainer.is_global_zero:
        images = len(scene.images)
        export_block(module.model, spec.id, images, trainer.global_step, result.psnr, fingerprint, spec.model_path)
        status.write(trainer, state="done", psnr=result.psnr)
    return result

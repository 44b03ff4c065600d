"""Lightning callbacks of a block run: checkpoints that never hold diverged weights and are written whole,
surface-voxel updates, the live status file, and validation images."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from bigscene.store.workspace import is_remote, join, write_json_atomic
from bigscene.train.blocks import BlockSpec
from bigscene.train.loggers import log_images
from bigscene.train.module import BlockModule, TrainingDiverged

#: Seconds between writes of the live status file.
STATUS_EVERY = 2.0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint aside and renames it into place: a kill mid-write leaves the old one whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = str(path)
        if is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        staging = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            super().save_checkpoint(checkpoint, staging, storage_options)
            os.replace(staging, path)
        finally:
            Path(staging).unlink(missing_ok=True)


class FiniteCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that refuses to save non-finite weights, so the last checkpoint on disk stays good."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        module = trainer.lightning_module
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            raise TrainingDiverged(f"the weights became non-finite at step {trainer.global_step}")
        super()._save_checkpoint(trainer, filepath)


def checkpoints(spec: BlockSpec, ckpt_every: int, validate: bool) -> list[ModelCheckpoint]:
    """`last.ckpt` every ckpt_every steps and, with validation, `best.ckpt` by validation PSNR."""
    last = FiniteCheckpoint(
        dirpath=spec.ckpt_dir,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=ckpt_every,
        enable_version_counter=False,
    )
    if not validate:
        return [last]
    best = FiniteCheckpoint(
        dirpath=spec.ckpt_dir,
        filename="best",
        monitor="val/psnr",
        mode="max",
        save_top_k=1,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    return [last, best]


class VoxelUpdate(Callback):
    """Every `every` steps, refit the sampler's surface voxels to the current SDF (surface-guided sampling)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: BlockModule, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            pl_module.log("train/voxels", float(pl_module.model.update_voxels()))


class StatusReporter(Callback):
    """Keeps WS/blocks/<id>/train_status.json current (for the scheduler's live table) and measures throughput:
    steps and samples per second of training time (validation excluded)."""

    def __init__(self, spec: BlockSpec, base: dict[str, Any]) -> None:
        self.spec = spec
        self.doc = dict(base)
        self.train_seconds = 0.0
        self.steps = 0
        self.samples = 0
        self._started = 0.0
        self._written = 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0

    def write(self, trainer: pl.Trainer, **fields: Any) -> None:
        if not trainer.is_global_zero:
            return
        self.doc.update(fields, step=trainer.global_step, updated=time.time())
        write_json_atomic(self.spec.status_path, self.doc)
        self._written = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, state="training", world_size=trainer.world_size)

    def on_train_batch_start(self, *args: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: BlockModule, outputs: Any, *args: Any) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._started
        self.steps += 1
        self.samples += pl_module.last_samples
        if now - self._written < STATUS_EVERY:
            return
        pl_module.log_dict(
            {
                "perf/steps_per_second": self.steps_per_second,
                "perf/samples_per_second": self.samples_per_second,
                "perf/train_seconds": self.train_seconds,
            }
        )
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.write(
            trainer,
            loss=float(loss),
            steps_per_second=round(self.steps_per_second, 3),
            samples_per_second=round(self.samples_per_second, 1),
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("perf/train_seconds", self.train_seconds)  # validation metrics against training time

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/psnr")
        if value is not None:
            self.write(trainer, psnr=round(float(value), 3))


class ValidationImages(Callback):
    """Writes each validation view (render | photo) to WS/blocks/<id>/val/<view>.png and logs it to the tracker."""

    def __init__(self, renders_dir: str) -> None:
        self.renders_dir = renders_dir

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: BlockModule) -> None:
        if not trainer.is_global_zero or not pl_module.val_images:
            return
        for name, image in pl_module.val_images:
            save_png(join(self.renders_dir, f"{name}.png"), image)
        log_images(trainer.logger, dict(pl_module.val_images), trainer.global_step)


def save_png(path: str, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image as PNG, written aside then renamed (local paths)."""
    import fsspec

    if is_remote(path):
        with fsspec.open(path, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    staging = f"{path}.{uuid.uuid4().hex}.tmp"
    Image.fromarray(image).save(staging, format="PNG")
    os.replace(staging, path)

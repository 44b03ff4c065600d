"""Experiment trackers: W&B (default, offline unless configured online), TensorBoard, CSV or none.

One run per block, named by the block id and grouped by scene. Optional trackers are imported only when
chosen; a chosen tracker that is not installed is a ConfigError before any block starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from bigscene.config import Config, LoggingConfig
from bigscene.errors import ConfigError
from bigscene.store.workspace import is_remote, join
from bigscene.train.blocks import BlockSpec, scene_name

#: The packages each tracker needs (any one of them).
_NEEDS = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX")}


def check_tracker(config: LoggingConfig) -> None:
    """ConfigError naming the missing package and the alternatives when the chosen tracker is not installed."""
    needs = _NEEDS.get(config.tracker, ())
    if needs and not any(importlib.util.find_spec(name) for name in needs):
        raise ConfigError(
            f"logging.tracker={config.tracker} but {' or '.join(needs)} is not installed; "
            f"`pip install {needs[0]}` or choose logging.tracker=csv (or none)"
        )


def logs_dir(workspace: str, config: LoggingConfig) -> str:
    """Where trackers write: logging.dir, else <workspace>/logs (./logs when the workspace is a URL)."""
    if config.dir:
        return config.dir
    return "logs" if is_remote(workspace) else join(workspace, "logs")


def make_logger(spec: BlockSpec, config: Config, fingerprint: str) -> Logger | bool:
    """The block's run in the configured tracker (False for none). A resumed block continues its W&B run."""
    cfg = config.logging
    check_tracker(cfg)
    save_dir = logs_dir(spec.workspace, cfg)
    group = cfg.group or scene_name(spec.workspace)
    if cfg.tracker == "wandb":
        import wandb

        return WandbLogger(
            project=cfg.project,
            entity=cfg.entity or None,
            name=spec.id,
            group=group,
            id=f"{group}-{spec.id}-{fingerprint[:8]}",
            resume="allow",
            save_dir=save_dir,
            mode=cfg.mode,
            config=dataclasses.asdict(config),
            tags=[group, spec.id],
            settings=wandb.Settings(silent=True, console="off", disable_git=True),
        )
    if cfg.tracker == "tensorboard":
        return TensorBoardLogger(save_dir=join(save_dir, "tensorboard"), name=spec.id, default_hp_metric=False)
    if cfg.tracker == "csv":
        return CSVLogger(save_dir=join(save_dir, "csv"), name=spec.id)
    return False


def log_images(logger: Logger | None, images: dict[str, np.ndarray], step: int) -> None:
    """Validation images (H, W, 3) uint8 by view name, as the tracker takes images (CSV: none; they are PNGs)."""
    if isinstance(logger, WandbLogger):
        logger.log_image(key="val/renders", images=list(images.values()), step=step, caption=list(images))
    elif isinstance(logger, TensorBoardLogger):
        for name, image in images.items():
            logger.experiment.add_image(f"val/{name}", image, step, dataformats="HWC")


def finish(logger: Logger | bool, status: str) -> None:
    """Close the block's run (each block is its own W&B run, even when blocks share a process), and W&B's
    service process with it, so a worker that exits next does not leave it talking to a closed socket."""
    if isinstance(logger, Logger):
        logger.finalize(status)
    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish(exit_code=0 if status == "success" else 1)
        wandb.teardown()

"""Placing blocks on devices: Ray tasks, one block per GPU (CPUs when there is none) on this machine or a
cluster, retried from the last checkpoint when a worker dies; or inline, one block after another.

A block's BigsceneError (bad input, a diverged loss) fails that block only; the others carry on. While
blocks train, a live table shows each one's state: queued, training (step, loss, PSNR, throughput), done, or
failed with its reason, read from the status files the blocks keep (so it works across a cluster's nodes).
Ray is imported only by the Ray engine, so the inline engine works where Ray is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bigscene.config import Config, TrainConfig
from bigscene.errors import BigsceneError, ConfigError
from bigscene.store.blocks import block_dir
from bigscene.store.workspace import join, read_json
from bigscene.train.blocks import STATUS_NAME
from bigscene.train.fit import BlockResult, failed_result, fit_block

log = logging.getLogger(__name__)

#: Seconds between refreshes of the live table.
REFRESH = 1.0
#: Task errors worth another attempt from the last checkpoint (storage hiccups, CUDA errors), never bad input.
RETRYABLE: tuple[type[Exception], ...] = (OSError, RuntimeError)


def train_task(
    workspace: str, block_id: str, config: Config, run_id: str, overwrite: bool, progress_bar: bool
) -> BlockResult:
    """Train one block, turning its BigsceneError into a failed result (other errors propagate: retryable)."""
    try:
        return fit_block(workspace, block_id, config, run_id=run_id, progress_bar=progress_bar, overwrite=overwrite)
    except BigsceneError as err:
        log.error("block %s failed: %s", block_id, err)
        return failed_result(workspace, block_id, str(err))


def _ray_task(workspace: str, block_id: str, config: Config, run_id: str, overwrite: bool, threads: int) -> BlockResult:
    """What a Ray worker runs: as many intra-op threads as CPUs the task holds."""
    torch.set_num_threads(threads)
    return train_task(workspace, block_id, config, run_id, overwrite, progress_bar=False)


def run_inline(
    workspace: str, config: Config, block_ids: list[str], run_id: str, overwrite: bool
) -> Iterator[BlockResult]:
    """Blocks one after another in this process, each with Lightning's progress bar; a block that crashes
    fails alone (re-running resumes it from its last checkpoint)."""
    for block_id in block_ids:
        try:
            yield train_task(workspace, block_id, config, run_id, overwrite, progress_bar=True)
        except Exception as err:  # any crash of one block: record it, carry on with the next
            log.exception("block %s crashed", block_id)
            yield failed_result(workspace, block_id, f"{type(err).__name__}: {err}")


class RayScheduler:
    """Blocks as Ray tasks, each holding `gpus_per_block` GPUs (when the cluster has GPUs) and `cpus_per_block`
    CPUs; a task whose worker dies is retried `max_retries` times and resumes from its last checkpoint."""

    def __init__(self, config: TrainConfig, address: str | None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError(
                "train.engine=ray but Ray is not installed; `pip install ray` or set train.engine=inline"
            ) from err
        self._ray = ray
        self.config = config
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=config.num_cpus or None, include_dashboard=False, logging_level=logging.WARNING)
        self.gpus = float(ray.cluster_resources().get("GPU", 0.0))

    def run(
        self,
        workspace: str,
        config: Config,
        block_ids: list[str],
        run_id: str,
        overwrite: bool,
        on_tick: Callable[[dict[str, BlockResult]], None],
    ) -> Iterator[BlockResult]:
        ray, cfg = self._ray, self.config
        use_gpu = self.gpus > 0 and cfg.gpus_per_block > 0 and cfg.accelerator != "cpu"
        if cfg.accelerator == "gpu" and not use_gpu:
            raise ConfigError(
                "train.accelerator=gpu but the Ray cluster has no GPUs (or train.gpus_per_block=0); "
                "use train.accelerator=cpu"
            )
        task_config = _with_accelerator(config, "gpu" if use_gpu else "cpu")
        log.info(
            "training %d blocks on Ray: %s and %g CPUs per block",
            len(block_ids),
            f"{cfg.gpus_per_block:g} GPUs" if use_gpu else "no GPU",
            cfg.cpus_per_block,
        )
        remote = ray.remote(
            num_gpus=cfg.gpus_per_block if use_gpu else 0,
            num_cpus=cfg.cpus_per_block,
            max_retries=cfg.max_retries,
            retry_exceptions=list(RETRYABLE),
            max_calls=1,  # a fresh process per block: GPU memory and tracker state never leak between blocks
        )(_ray_task)
        threads = max(1, int(cfg.cpus_per_block))
        refs = {remote.remote(workspace, b, task_config, run_id, overwrite, threads): b for b in block_ids}
        pending = list(refs)
        finished: dict[str, BlockResult] = {}
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=REFRESH)
                for ref in done:
                    result = self._result(ref, workspace, refs[ref])
                    finished[result.block] = result
                    yield result
                on_tick(finished)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _result(self, ref: Any, workspace: str, block_id: str) -> BlockResult:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            reason = f"failed after {self.config.max_retries + 1} attempts: {err.cause}"
        except ray.exceptions.RayError as err:
            reason = f"its worker died {self.config.max_retries + 1} times ({type(err).__name__})"
        log.error("block %s %s", block_id, reason)
        return failed_result(workspace, block_id, reason)

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def _with_accelerator(config: Config, accelerator: str) -> Config:
    return replace(config, train=replace(config.train, accelerator=accelerator))


class LiveTable:
    """One row per block: queued, training (from its status file of this run), done or failed (its result)."""

    def __init__(self, workspace: str, block_ids: list[str], run_id: str, console: Console | None = None) -> None:
        self.workspace, self.block_ids, self.run_id = workspace, block_ids, run_id
        self.live = Live(self.table({}), console=console, refresh_per_second=2)

    def table(self, finished: dict[str, BlockResult]) -> Table:
        table = Table(title=f"bigscene train: {self.workspace}", title_justify="left")
        for column in ("block", "state", "step", "loss", "PSNR", "samples/s", "attempt", "note"):
            table.add_column(column, justify="left" if column in ("block", "state", "note") else "right")
        for block_id in self.block_ids:
            status = read_json(join(block_dir(self.workspace, block_id), STATUS_NAME)) or {}
            current = status.get("run") == self.run_id
            result = finished.get(block_id)
            state = result.state if result else status.get("state", "queued") if current else "queued"
            psnr = result.psnr if result and result.psnr is not None else status.get("psnr") if current else None
            shown = current or result is not None
            table.add_row(
                block_id,
                _STYLE.get(state, state),
                f"{status.get('step', 0)}/{status.get('steps_total', '?')}" if shown else "",
                f"{status['loss']:.4f}" if state == "training" and "loss" in status else "",
                "" if psnr is None else f"{psnr:.2f}",
                f"{status['samples_per_second']:,.0f}" if shown and "samples_per_second" in status else "",
                str(status.get("attempt", "")) if current else "",
                (result.reason if result else "")[:100],
            )
        return table

    def refresh(self, finished: dict[str, BlockResult]) -> None:
        self.live.update(self.table(finished))


_STYLE = {"done": "[green]done", "failed": "[red]failed", "training": "[yellow]training"}

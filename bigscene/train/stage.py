"""`bigscene train`: train every block of a partitioned workspace; WS/train.json summarises them.

Idempotent: a block whose exported model is current (same rays and model config, at least train.steps
steps) is not trained again; an interrupted block resumes from its last checkpoint. Blocks that fail are
listed with their reasons in train.json and in the error raised at the end; the others are kept.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from bigscene.config import Config, save_resolved
from bigscene.errors import BigsceneError, ConfigError, WorkspaceError
from bigscene.store.workspace import exists, join, read_json, write_json_atomic
from bigscene.train.blocks import block_fingerprint, partition_block_ids, read_block, read_status
from bigscene.train.fit import BlockResult
from bigscene.train.loggers import check_tracker
from bigscene.train.schedule import LiveTable, RayScheduler, run_inline

log = logging.getLogger(__name__)

SUMMARY_NAME = "train.json"


def _select(available: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return available
    unknown = [b for b in wanted if b not in available]
    if unknown:
        raise ConfigError(f"--blocks: no block {', '.join(unknown)} in this workspace; blocks: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def _engine(config: Config, address: str | None) -> str:
    """The engine that will run: DDP over several devices runs inline (Lightning launches the processes)."""
    cfg = config.train
    if cfg.devices * cfg.num_nodes > 1:
        if address:
            raise ConfigError(
                f"train.devices={cfg.devices} x train.num_nodes={cfg.num_nodes} trains each block with Lightning "
                "DDP, launched by this command (or srun, see launch/slurm_ddp.sbatch), not on a Ray cluster: drop "
                "--address"
            )
        if cfg.engine == "ray":
            log.info("DDP over %d devices x %d nodes: blocks train one after another", cfg.devices, cfg.num_nodes)
        return "inline"
    if cfg.engine == "inline" and address:
        raise ConfigError(f"--address {address} joins a Ray cluster; it needs train.engine=ray")
    return cfg.engine


def _current(workspace: str, block_id: str, config: Config) -> dict[str, Any] | None:
    """The block's last status when its exported model is current for this config, else None."""
    try:
        spec = read_block(workspace, block_id)
    except BigsceneError:
        return None
    status = read_status(spec)
    current = (
        status.get("state") == "done"
        and status.get("fingerprint") == block_fingerprint(spec, config)
        and status.get("step", 0) >= config.train.steps
        and exists(spec.model_path)
    )
    return status if current else None


def run_train(
    workspace: str,
    config: Config,
    blocks: list[str] | None = None,
    address: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the workspace's blocks (all, or `blocks`); returns the summary written to WS/train.json.

    `address` joins a Ray cluster (train.engine=ray); `overwrite` restarts blocks whose checkpoints were made
    with another model config (without it that is an error). Raises WorkspaceError after writing the summary
    when any block failed.
    """
    started = time.perf_counter()
    workspace = str(workspace)
    block_ids = _select(partition_block_ids(workspace), blocks)
    check_tracker(config.logging)
    engine = _engine(config, address)
    summary_path = join(workspace, SUMMARY_NAME)
    records: dict[str, dict[str, Any]] = (read_json(summary_path) or {}).get("records", {})
    todo = []
    for block_id in block_ids:
        status = _current(workspace, block_id, config)
        if status is None:
            todo.append(block_id)
        elif block_id not in records:
            records[block_id] = BlockResult(block_id, "done", steps=status["step"], psnr=status.get("psnr")).to_json()
    if len(todo) < len(block_ids):
        log.info("%d of %d blocks already trained", len(block_ids) - len(todo), len(block_ids))
    if rank_zero_only.rank == 0:
        save_resolved(config, join(workspace, "train.config.yaml"))
    run_id = uuid.uuid4().hex[:12]
    if todo and engine == "inline":
        for result in run_inline(workspace, config, todo, run_id, overwrite):
            records[result.block] = result.to_json()
    elif todo:
        scheduler = RayScheduler(config.train, address)
        table = LiveTable(workspace, todo, run_id)
        try:
            with table.live:
                for result in scheduler.run(workspace, config, todo, run_id, overwrite, table.refresh):
                    records[result.block] = result.to_json()
        finally:
            scheduler.close()
    chosen = {b: records[b] for b in block_ids}
    failed = {b: r["reason"] for b, r in chosen.items() if r["state"] != "done"}
    summary = {
        "stage": "train",
        "blocks": len(block_ids),
        "done": [b for b, r in chosen.items() if r["state"] == "done"],
        "failed": failed,
        "steps": {b: r["steps"] for b, r in chosen.items()},
        "psnr": {b: None if r["psnr"] is None else round(r["psnr"], 2) for b, r in chosen.items()},
        "engine": engine,
        "seconds": round(time.perf_counter() - started, 2),
        "records": records,
    }
    if rank_zero_only.rank == 0:
        write_json_atomic(summary_path, summary)
    if failed:
        reasons = "; ".join(f"{b}: {reason}" for b, reason in failed.items())
        raise WorkspaceError(
            f"{len(failed)} of {len(block_ids)} blocks failed ({reasons}); see {summary_path}. "
            "Re-run to retry them: finished blocks are kept and interrupted ones resume"
        )
    return summary

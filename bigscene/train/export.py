"""A trained block in a small Lightning-free form, and the checks that a checkpoint is this block's.

`model.pt` is a plain `torch.save` dict readable with `torch.load(weights_only=True)`:
    format        "bigscene.block/1"
    block         {id, inner (2, 3), outer (2, 3)}
    model, sampler  the ModelConfig and SamplerConfig as dicts
    num_images    size of the appearance table (global image ids)
    state_dict    BlockModel weights and buffers (boxes, current surface voxels)
    steps, psnr, fingerprint
`load_block(path)` rebuilds the BlockModel from it alone; the merger needs nothing else of training.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch

from bigscene.config import ModelConfig, SamplerConfig
from bigscene.errors import InputError, WorkspaceError
from bigscene.render import SparseVoxels
from bigscene.store.workspace import exists, is_remote
from bigscene.train.model import BlockModel

FORMAT = "bigscene.block/1"
#: The prefix of BlockModel's weights inside a BlockModule checkpoint's state dict.
_PREFIX = "model."


@dataclass
class ExportedBlock:
    """What load_block gives back: the model (eval mode) and the file's metadata."""

    model: BlockModel
    block_id: str
    steps: int
    psnr: float | None
    fingerprint: str


def export_block(
    model: BlockModel, block_id: str, num_images: int, steps: int, psnr: float | None, fingerprint: str, path: str
) -> None:
    """Write the block's model.pt (written aside and renamed in place, so it is whole or absent)."""
    document = {
        "format": FORMAT,
        "block": {"id": block_id, "inner": model.inner.cpu(), "outer": model.outer.cpu()},
        "model": dataclasses.asdict(model.model_config),
        "sampler": dataclasses.asdict(model.sampler_config),
        "num_images": int(num_images),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "steps": int(steps),
        "psnr": None if psnr is None else float(psnr),
        "fingerprint": fingerprint,
    }
    if is_remote(path):
        with fsspec.open(path, "wb") as f:
            torch.save(document, f)
        return
    staging = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        torch.save(document, staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def _load(path: str) -> dict[str, Any]:
    if not exists(path):
        raise WorkspaceError(f"{path}: no such file; train the block first (`bigscene train`)")
    try:
        with fsspec.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise InputError(path, f"not a readable model file ({type(err).__name__}: {err})") from err


def read_export(path: str) -> dict[str, Any]:
    """The model.pt document; InputError when it is not one."""
    document = _load(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(path, f"not a bigscene block model (expected format {FORMAT})")
    return document


def load_block(path: str, device: torch.device | str = "cpu") -> ExportedBlock:
    """Rebuild a block's model from its model.pt alone, in eval mode on `device`."""
    doc = read_export(path)
    state = doc["state_dict"]
    voxels = SparseVoxels(state["voxel_origin"], float(state["voxel_size"]), state["voxel_coords"])
    model = BlockModel(
        ModelConfig(**doc["model"]),
        SamplerConfig(**doc["sampler"]),
        doc["block"]["inner"],
        doc["block"]["outer"],
        doc["num_images"],
        voxels,
    )
    model.load_state_dict(state)
    return ExportedBlock(model.to(device).eval(), doc["block"]["id"], doc["steps"], doc["psnr"], doc["fingerprint"])


def read_checkpoint(path: str, block_id: str, fingerprint: str) -> dict[str, Any]:
    """A block's Lightning checkpoint, checked to be readable and this block's under this model config.

    InputError for a damaged file; WorkspaceError for another block's, or one trained with another model or
    sampler config (or on other rays).
    """
    try:
        with fsspec.open(path, "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise InputError(
            path, f"corrupt checkpoint ({type(err).__name__}: {err}); delete it to train the block from scratch"
        ) from err
    meta = checkpoint.get("bigscene") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise WorkspaceError(f"{path}: not a bigscene block checkpoint; move it away to train the block from scratch")
    if meta.get("block") != block_id:
        raise WorkspaceError(
            f"{path}: a checkpoint of block {meta.get('block')}, not {block_id}; move it away to train from scratch"
        )
    if meta.get("fingerprint") != fingerprint:
        raise WorkspaceError(
            f"{path}: trained with another model/sampler config or on other rays; pass --overwrite to restart "
            "the block, or train with the config it was made with (WS/train.config.yaml)"
        )
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], model: BlockModel) -> BlockModel:
    """Load the BlockModel weights of a BlockModule checkpoint into `model` (same config and block)."""
    state = {k[len(_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(_PREFIX)}
    model.load_state_dict(state)
    return model

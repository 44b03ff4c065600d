"""Typed configuration: one dataclass per section, read from YAML, overridable as `section.key=value`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from bigscene.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _check_choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r}: expected one of {', '.join(choices)}")


@dataclass
class SceneConfig:
    """Reading the input and normalising it."""

    format: str = "auto"  # auto | colmap | transforms | blender | neus
    image_mismatch: str = "error"  # NeuS npz whose images differ in size from K: error | resize | crop
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # RGBA composite colour
    normalise: bool = True
    up: str = "auto"  # auto | cameras | points
    min_track_length: int = 3  # SfM points that define the ROI
    roi_percentile: float = 1.0  # robust box: [p, 100 - p] percentiles of the points
    roi_margin: float = 0.1  # grow the box by this fraction of its size
    scale: str = "roi"  # "roi": ROI half-extent becomes 1; or a number: fixed scale factor
    # structure from motion (bigscene sfm)
    matcher: str = "auto"  # auto | exhaustive | sequential | spatial | vocabtree
    mapper: str = "incremental"  # incremental | global
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = True
    max_image_size: int = 1600
    vocab_tree_path: str = ""

    def __post_init__(self) -> None:
        _check_choice("scene", "format", self.format, ("auto", "colmap", "transforms", "blender", "neus"))
        _check_choice("scene", "image_mismatch", self.image_mismatch, ("error", "resize", "crop"))
        _check_choice("scene", "up", self.up, ("auto", "cameras", "points"))
        _check_choice(
            "scene", "matcher", self.matcher, ("auto", "exhaustive", "sequential", "spatial", "vocabtree")
        )
        _check_choice("scene", "mapper", self.mapper, ("incremental", "global"))
        if len(self.background) != 3:
            raise ConfigError(f"scene.background={self.background}: expected three values in [0, 1]")
        if self.scale != "roi":
            try:
                float(self.scale)
            except ValueError:
                raise ConfigError(f"scene.scale={self.scale!r}: expected 'roi' or a number") from None


@dataclass
class PartitionConfig:
    """Spatial blocks over the ROI's ground plane, and how pixel rays are assigned to them."""

    rows: int = 2
    cols: int = 2
    overlap: float = 0.15  # outer box = inner box grown by this fraction
    voxel_size: float = 0.05  # surface voxels, scene units
    min_track_length: int = 2
    layout: str = "grid"  # grid: rows x cols equal cells | kd: num_blocks cells of similar SfM point counts
    num_blocks: int = 4  # target block count for layout=kd
    height_margin: float = 0.1  # a block's height range: its points' z range grown by this fraction each way
    visibility_margin: float = (
        0.1  # scene units: a block may start this far past the ray's first surface voxel
    )
    visibility_max_cells: int = 2**25  # cap on the dense visibility grid; coarser cells beyond it
    sky: str = "background"  # rays crossing no block: background (of the nearest block) | drop
    images_per_task: int = 8  # images one task reads, assigns and writes; bounds a task's memory
    chunk_rays: int = 65536  # rays per Zarr chunk
    probe_stride: int = 8  # pixel stride of the cheap pass that finds blocks without rays
    merge_empty: bool = False  # merge a block without rays into a neighbour instead of failing
    skip_bad_images: bool = False  # skip (and count) missing or corrupt images instead of failing
    seed: int = 0  # shuffling rays within each task's write
    engine: str = "ray"  # ray | inline (same task functions in this process)
    num_cpus: int = 0  # local Ray cluster size; 0 = all cores (ignored with --address)
    max_retries: int = 3  # retries of a failed task (worker death or transient error)

    def __post_init__(self) -> None:
        _check_choice("partition", "layout", self.layout, ("grid", "kd"))
        _check_choice("partition", "sky", self.sky, ("background", "drop"))
        _check_choice("partition", "engine", self.engine, ("ray", "inline"))
        positive = {
            "rows": self.rows,
            "cols": self.cols,
            "num_blocks": self.num_blocks,
            "voxel_size": self.voxel_size,
            "images_per_task": self.images_per_task,
            "chunk_rays": self.chunk_rays,
            "probe_stride": self.probe_stride,
            "visibility_max_cells": self.visibility_max_cells,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"partition.{key}={value}: must be positive")
        for key in ("overlap", "height_margin", "visibility_margin", "num_cpus", "max_retries"):
            if getattr(self, key) < 0:
                raise ConfigError(f"partition.{key}={getattr(self, key)}: must not be negative")


@dataclass
class ModelConfig:
    """The field each block trains."""

    kind: str = "neus"  # neus | nerf
    hash_levels: int = 16
    hash_features: int = 2
    hash_table_log2: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    hidden_dim: int = 64
    appearance_dim: int = 16


@dataclass
class SamplerConfig:
    """How samples are placed along rays."""

    kind: str = "surface_guided"  # uniform | importance | surface_guided
    num_samples: int = 64
    num_importance: int = 32


@dataclass
class TrainConfig:
    """Optimisation of one block."""

    steps: int = 20000
    rays_per_batch: int = 4096
    lr: float = 1e-2
    ckpt_every: int = 1000
    devices: int = 1
    num_nodes: int = 1
    seed: int = 0


@dataclass
class MergeConfig:
    """Composing blocks, meshing and rendering the whole scene."""

    voxel_size: float = 0.01
    chunk: int = 128
    blend: str = "partition_of_unity"  # partition_of_unity | inverse_distance | image_space


@dataclass
class LoggingConfig:
    """Experiment tracking."""

    tracker: str = "wandb"  # wandb | tensorboard | csv | none
    project: str = "bigscene"
    mode: str = "offline"  # offline | online

    def __post_init__(self) -> None:
        _check_choice("logging", "tracker", self.tracker, ("wandb", "tensorboard", "csv", "none"))
        _check_choice("logging", "mode", self.mode, ("offline", "online"))


@dataclass
class Config:
    scene: SceneConfig = field(default_factory=SceneConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _sections() -> dict[str, type]:
    return {f.name: type(f.default_factory()) for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _unknown_key_error(key: str, origin: str) -> ConfigError:
    sections = _sections()
    section = key.split(".")[0]
    if section in sections and "." in key:
        valid = [f.name for f in dataclasses.fields(sections[section])]
        return ConfigError(f"{origin}: unknown key {key!r}; valid keys in [{section}]: {', '.join(valid)}")
    return ConfigError(f"{origin}: unknown key {key!r}; valid sections: {', '.join(sections)}")


def _merge(base: Any, other: Any, origin: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as err:
        raise _unknown_key_error(str(err.full_key), origin) from err
    except ValidationError as err:
        raise ConfigError(f"{origin}: bad value for {err.full_key!r}: {err.msg.splitlines()[0]}") from err


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (a name resolves in configs/), then `section.key=value`s."""
    merged = OmegaConf.structured(Config)
    if path is not None:
        yaml_path = Path(path)
        if not yaml_path.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
            yaml_path = CONFIG_DIR / f"{path}.yaml"
        if not yaml_path.exists():
            available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"{path}: no such config file; bundled configs: {', '.join(available)}")
        try:
            loaded = OmegaConf.load(yaml_path)
        except (OmegaConfBaseException, ValueError) as err:
            raise ConfigError(f"{yaml_path}: not a valid YAML config: {err}") from err
        merged = _merge(merged, loaded, str(yaml_path))
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key = item.split("=", 1)[0]
        if "." not in key:
            raise _unknown_key_error(key, "command line")
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {err}") from err
        merged = _merge(merged, dotlist, "command line")
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ValidationError as err:
        raise ConfigError(f"{path or 'config'}: {err.msg.splitlines()[0]}") from err


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_resolved(config: Config, path: str) -> None:
    """Write the resolved config beside a stage's outputs."""
    from bigscene.store.workspace import write_text_atomic

    write_text_atomic(path, to_yaml(config))

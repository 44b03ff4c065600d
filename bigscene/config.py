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
        _check_choice("scene", "matcher", self.matcher, ("auto", "exhaustive", "sequential", "spatial", "vocabtree"))
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
    visibility_margin: float = 0.1  # scene units a block may start past the ray's first surface voxel
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
    """The field each block trains (bigscene.fields)."""

    kind: str = "neus"  # neus | nerf
    # position encoding: a registered Encoding name (hashgrid; a fused kernel registers its own name)
    encoding: str = "hashgrid"
    hash_levels: int = 16
    hash_features: int = 2  # features per level
    hash_table_log2: int = 19  # entries per hashed level = 2**hash_table_log2
    base_resolution: int = 16  # cells per axis of the coarsest level over the block's cube
    finest_resolution: int = 2048  # cells per axis of the finest level
    hidden_dim: int = 64  # SDF / density network width
    num_layers: int = 2  # hidden layers of the SDF / density network
    feature_dim: int = 15  # geometry feature passed from the SDF / density network to the colour network
    color_hidden_dim: int = 64
    color_layers: int = 2  # hidden layers of the colour network
    sh_degree: int = 4  # view directions: spherical harmonics with sh_degree**2 coefficients
    appearance_dim: int = 16  # per-image appearance code (NeRF-W); 0 disables
    # NeuS
    geometric_init: str = "sphere"  # sphere | inside_out (cameras inside the sphere) | plane (ground)
    init_radius: float = 0.5  # sphere init radius, as a fraction of the block's half-extent
    init_ground_height: float = 0.1  # plane init height, as a fraction of the box height from its bottom
    init_variance: float = 0.3  # NeuS variance: inverse std s = exp(10 * variance)
    normals: str = "autograd"  # autograd (exact) | finite_difference (central, Neuralangelo)
    fd_step: float = 1e-3  # finite-difference step, scene units
    # background beyond each ray's far bound
    background: str = "inverted_sphere"  # none | inverted_sphere (NeRF++) | contraction (mip-NeRF 360)
    background_freqs: int = 10  # frequency encoding of the background parametrisation
    background_hidden_dim: int = 64
    sky: bool = True  # a view-direction sky colour behind the background

    def __post_init__(self) -> None:
        _check_choice("model", "kind", self.kind, ("neus", "nerf"))
        _check_choice("model", "geometric_init", self.geometric_init, ("sphere", "inside_out", "plane"))
        _check_choice("model", "normals", self.normals, ("autograd", "finite_difference"))
        _check_choice("model", "background", self.background, ("none", "inverted_sphere", "contraction"))
        for key in ("hash_levels", "hash_features", "base_resolution", "hidden_dim", "num_layers", "color_hidden_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be positive")
        if self.fd_step <= 0:
            raise ConfigError(f"model.fd_step={self.fd_step}: must be positive")
        if self.finest_resolution < self.base_resolution:
            raise ConfigError(
                f"model.finest_resolution={self.finest_resolution}: below base_resolution={self.base_resolution}"
            )


@dataclass
class SamplerConfig:
    """How samples are placed along rays (bigscene.render)."""

    kind: str = "surface_guided"  # uniform | importance | surface_guided
    num_samples: int = 64  # uniform samples per ray (uniform; the coarse pass of importance)
    num_importance: int = 32  # importance samples per ray, added over upsample_steps rounds
    upsample_steps: int = 4  # NeuS up-sampling rounds, inverse std base_inv_s * 2**round
    base_inv_s: float = 64.0
    stratified: bool = True  # jitter samples within their strata while training
    # surface-guided (NeuralRecon-W): samples in occupied sparse voxels, around the cached surface, and uniform
    voxel_samples: int = 32  # per ray, spread over the ray's occupied voxels
    surface_samples: int = 16  # per ray, in [depth - surface_band, depth + surface_band]
    guided_uniform_samples: int = 8  # per ray, uniform in [near, far]
    surface_band: float = 0.05  # half-width of the band around the surface hit, scene units
    voxel_threshold: float = 1.0  # an update keeps voxels with |sdf(centre)| < voxel_threshold * voxel size
    voxel_subdivide: int = 2  # an update splits each voxel into voxel_subdivide**3 children ...
    min_voxel_size: float = 0.01  # ... while the children are no smaller than this (scene units)
    voxel_dilate: int = 1  # an update also re-evaluates neighbours this many voxels away, to follow the surface
    background_samples: int = 32  # samples per ray beyond its far bound, uniform in inverse depth
    # NeuS opacity per interval: from the SDF at its ends (the paper; exact for any spacing) | at its mid-point,
    # ends extrapolated with the gradient (NeuS's code; needs evenly dense samples)
    neus_section: str = "ends"  # ends | mid

    def __post_init__(self) -> None:
        _check_choice("sampler", "kind", self.kind, ("uniform", "importance", "surface_guided"))
        _check_choice("sampler", "neus_section", self.neus_section, ("ends", "mid"))
        for key in ("num_samples", "upsample_steps", "base_inv_s", "voxel_subdivide", "min_voxel_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"sampler.{key}={getattr(self, key)}: must be positive")
        for key in ("num_importance", "voxel_samples", "surface_samples", "guided_uniform_samples", "voxel_dilate"):
            if getattr(self, key) < 0:
                raise ConfigError(f"sampler.{key}={getattr(self, key)}: must not be negative")


@dataclass
class TrainConfig:
    """Optimisation of one block (bigscene.train), and how blocks are placed on devices."""

    steps: int = 20000
    rays_per_batch: int = 4096  # rays of the first step; fixed when target_samples is 0
    lr: float = 1e-2
    ckpt_every: int = 1000  # steps between `last` checkpoints: a killed run loses at most this many
    devices: int = 1  # devices per block; > 1 (or num_nodes > 1) trains one block with Lightning DDP
    num_nodes: int = 1
    seed: int = 0
    max_minutes: float = 0.0  # stop a block's run after this long, checkpointed (0: no limit); a re-run resumes
    # batch: rays per step adapt so that samples per step stay near target_samples
    target_samples: int = 262144  # 0: a fixed rays_per_batch
    max_rays_per_batch: int = 65536
    # schedule
    warmup_steps: int = 500  # linear learning-rate warm-up ...
    lr_final_ratio: float = 0.05  # ... then cosine decay to lr * lr_final_ratio at the last step
    cos_anneal_steps: int = 2000  # NeuS cosine annealing ratio 0 -> 1 over these steps (sampler.neus_section=mid)
    # losses
    rgb_loss: str = "l1"  # l1 | huber
    huber_delta: float = 0.1
    eikonal_weight: float = 0.1
    sfm_weight: float = 0.1  # |sdf| / block half-extent at SfM points (NeuS): a weak pull of the surface to them
    sfm_points: int = 1024  # SfM points per step
    sky_weight: float = 0.0  # background-field opacity of sky rays (the partition's rays that cross no block)
    manhattan_weight: float = 0.0  # Manhattan world: ground normals along z, facades along two horizontal axes
    # surface-guided sampling
    voxel_update_every: int = 1000  # steps between surface-voxel updates (sampler.kind=surface_guided); 0: never
    surface_cache: bool = True  # cache each ray's surface depth (4 bytes a ray of the block, on the device)
    # validation on held-out (test-split) views that see the block
    val_every: int = 1000
    val_views: int = 2
    val_chunk: int = 8192  # rays rendered at once
    # data
    shuffle_buffer: int = 1048576  # rays held for shuffling, per data worker
    num_workers: int = 2  # data worker processes per device
    log_every: int = 50
    # devices and engines
    accelerator: str = "auto"  # auto (GPU when there is one) | cpu | gpu
    precision: str = "auto"  # auto (bf16 autocast on a GPU that has it, else 32) | 32 | bf16-mixed
    engine: str = "ray"  # ray (blocks in parallel, one per GPU, on this machine or --address) | inline
    gpus_per_block: float = 1.0
    cpus_per_block: float = 1.0
    num_cpus: int = 0  # local Ray cluster size; 0 = all cores (ignored with --address)
    max_retries: int = 2  # retries of a block whose worker died, each from its last checkpoint

    def __post_init__(self) -> None:
        _check_choice("train", "rgb_loss", self.rgb_loss, ("l1", "huber"))
        _check_choice("train", "accelerator", self.accelerator, ("auto", "cpu", "gpu"))
        _check_choice("train", "precision", self.precision, ("auto", "32", "bf16-mixed"))
        _check_choice("train", "engine", self.engine, ("ray", "inline"))
        positive = (
            "steps",
            "rays_per_batch",
            "lr",
            "ckpt_every",
            "devices",
            "num_nodes",
            "max_rays_per_batch",
            "huber_delta",
            "val_every",
            "val_chunk",
            "shuffle_buffer",
            "log_every",
            "cpus_per_block",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}={getattr(self, key)}: must be positive")
        non_negative = (
            "max_minutes",
            "target_samples",
            "warmup_steps",
            "cos_anneal_steps",
            "eikonal_weight",
            "sfm_weight",
            "sfm_points",
            "sky_weight",
            "manhattan_weight",
            "voxel_update_every",
            "val_views",
            "num_workers",
            "gpus_per_block",
            "num_cpus",
            "max_retries",
        )
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)}: must not be negative")
        if not 0.0 < self.lr_final_ratio <= 1.0:
            raise ConfigError(f"train.lr_final_ratio={self.lr_final_ratio}: expected a value in (0, 1]")
        if self.max_rays_per_batch < self.rays_per_batch:
            raise ConfigError(
                f"train.max_rays_per_batch={self.max_rays_per_batch}: below rays_per_batch={self.rays_per_batch}"
            )


@dataclass
class MergeConfig:
    """Composing blocks, meshing and rendering the whole scene (bigscene.merge)."""

    voxel_size: float = 0.01  # mesh grid spacing, scene units
    chunk: int = 128  # mesh chunk side in grid nodes; neighbouring chunks share one boundary sample
    # partition_of_unity: smooth weights, 1 in a block's inner box, 0 at its outer box (continuous seams)
    # inverse_distance: Mega-NeRF's point blending; image_space: Block-NeRF's blending of whole renders
    blend: str = "partition_of_unity"
    idw_margin: float = 1.15  # inverse_distance: blocks whose centroid is within this factor of the nearest's
    allow_missing: bool = False  # merge the blocks that are there, naming the absent ones, instead of failing
    device: str = "auto"  # auto: each block loads onto the GPU with most free memory, else the CPU | cpu | cuda:N
    max_loaded_blocks: int = 0  # blocks held on devices at once per process, least recently used unloaded; 0: all
    engine: str = "ray"  # ray | inline (same task functions in this process)
    num_cpus: int = 0  # local Ray cluster size; 0 = all cores (ignored with --address)
    max_in_flight: int = 0  # chunk or tile tasks submitted at once; 0 = twice the CPUs
    max_retries: int = 3
    # meshing
    voxel_budget: int = 2_000_000_000  # most grid nodes one mesh request may evaluate (an estimate is checked)
    seeds: str = "voxels"  # chunks meshing starts from: voxels (partition surface voxels) | probe (SDF at centres)
    colour: bool = True  # vertex colours from the colour network, the surface seen head-on (against its normal)
    # rendering
    chunk_rays: int = 4096  # rays rendered per batch: any image size fits
    render_scale: float = 1.0  # test views rendered at this fraction of their size
    path: str = "orbit"  # camera-path video: orbit | flythrough
    path_frames: int = 24
    path_width: int = 320
    path_height: int = 240
    ortho_pixel: float = 0.0  # orthophoto / DSM pixel, scene units; 0 = the ROI's longer side / 1024
    ortho_tile: int = 256  # pixels per side of an orthophoto tile (one task, one Zarr chunk)
    background_samples: int = 32  # samples per ray of each block's background field
    # evaluation
    eval_views: int = 8  # test views rendered (bigscene render) and scored (bigscene eval); 0 = all
    eval_threshold: float = 0.0  # F-score distance, scene units; 0 = 2 x voxel_size
    eval_max_distance: float = 0.0  # distances are truncated here (outliers, tiling); 0 = 10 x eval_threshold
    eval_spacing: float = 0.0  # mean spacing of surface samples; 0 = eval_threshold / 5
    gt_mesh: str = ""  # ground-truth mesh; "" = WS/gt/mesh.ply when present
    gt_frame: str = "auto"  # frame of the ground truth: auto | scene | input (mapped by the normalisation)
    seam_samples: int = 20000  # seam metrics: points per pair of neighbouring blocks, lines per axis
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("merge", "blend", self.blend, ("partition_of_unity", "inverse_distance", "image_space"))
        _check_choice("merge", "engine", self.engine, ("ray", "inline"))
        _check_choice("merge", "seeds", self.seeds, ("voxels", "probe"))
        _check_choice("merge", "path", self.path, ("orbit", "flythrough"))
        _check_choice("merge", "gt_frame", self.gt_frame, ("auto", "scene", "input"))
        positive = {
            "voxel_size": self.voxel_size,
            "voxel_budget": self.voxel_budget,
            "chunk_rays": self.chunk_rays,
            "render_scale": self.render_scale,
            "path_frames": self.path_frames,
            "path_width": self.path_width,
            "path_height": self.path_height,
            "ortho_tile": self.ortho_tile,
            "background_samples": self.background_samples,
            "seam_samples": self.seam_samples,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"merge.{key}={value}: must be positive")
        if self.chunk < 2:
            raise ConfigError(f"merge.chunk={self.chunk}: a chunk needs at least 2 nodes a side")
        if self.idw_margin < 1.0:
            raise ConfigError(f"merge.idw_margin={self.idw_margin}: must be at least 1")
        non_negative = (
            "max_loaded_blocks",
            "num_cpus",
            "max_in_flight",
            "max_retries",
            "ortho_pixel",
            "eval_views",
            "eval_threshold",
            "eval_max_distance",
            "eval_spacing",
        )
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ConfigError(f"merge.{key}={getattr(self, key)}: must not be negative")


@dataclass
class LoggingConfig:
    """Experiment tracking: one run per block, grouped by scene."""

    tracker: str = "wandb"  # wandb | tensorboard | csv | none
    project: str = "bigscene"
    mode: str = "offline"  # offline | online (W&B)
    group: str = ""  # W&B group of the scene's block runs; empty: the workspace's folder name
    entity: str = ""  # W&B entity (team or user); empty: the default
    dir: str = ""  # where trackers write; empty: <workspace>/logs (a local folder when the workspace is a URL)

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

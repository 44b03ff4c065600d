"""`bigscene merge | mesh | render | eval`: the stage entry points over a trained workspace.

Each reads the partition's block records and the blocks' exported models (WS/blocks/<id>/model.pt), builds
the composite field, and writes WS/merge/<stage>.json plus its section of WS/merge/report.json. `loader`
replaces how a block's field is obtained (analytic fields in tests and benchmarks); by default it is the
trainer's export, loaded lazily onto the device with room.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch
import trimesh

from bigscene.config import Config, save_resolved
from bigscene.engine import make_engine
from bigscene.errors import InputError, WorkspaceError
from bigscene.merge.blocks import BlockBox, BlockField, LazyBlock, ModuleBlock
from bigscene.merge.composite import CompositeField
from bigscene.merge.evaluate import (
    crop_faces,
    geometry_metrics,
    gt_transform,
    seam_band_labeller,
    seam_disagreement,
    seam_jump,
    split_faces,
    view_metrics,
)
from bigscene.merge.grid import Index, MeshGrid
from bigscene.merge.mesh import check_budget, fingerprint, mesh_field, mesh_pieces, probe_seeds
from bigscene.merge.render import RenderSettings, render_view
from bigscene.merge.report import record_stage
from bigscene.merge.views import (
    OrthoGrid,
    camera_path,
    depth_png,
    gif_bytes,
    held_out_views,
    normal_png,
    png_bytes,
    render_ortho,
    rgb_png,
)
from bigscene.scene.geometry import apply_similarity, similarity_scale
from bigscene.scene.model import Scene
from bigscene.store import has_scene, merge_store, read_scene
from bigscene.store.blocks import block_dir, block_json_path, read_voxels, voxels_path
from bigscene.store.workspace import exists, join, read_json

log = logging.getLogger(__name__)

#: (workspace, block box) -> the block's field, or None when the block has no trained model.
BlockLoader = Callable[[str, BlockBox], BlockField | None]


def model_path(workspace: str, block_id: str) -> str:
    """Where the trainer exports a block (bigscene.train.export)."""
    return join(block_dir(workspace, block_id), "model.pt")


@dataclass(frozen=True)
class ExportLoader:
    """Loads one exported block onto a device (picklable: Ray workers load their own copy once)."""

    path: str
    box: BlockBox
    background_samples: int

    def __call__(self, device: torch.device) -> BlockField:
        from bigscene.train.export import load_block  # Lightning comes with training: import only when loading

        log.info("loading block %s onto %s", self.box.id, device)
        return ModuleBlock.from_model(self.box, load_block(self.path, device).model, self.background_samples)


def exported_loader(config: Config) -> BlockLoader:
    """The default loader: the block's model.pt as a LazyBlock (of the config's model.kind), None when the block is
    not (fully) trained."""

    def load(workspace: str, box: BlockBox) -> BlockField | None:
        path = model_path(workspace, box.id)
        status = read_json(join(block_dir(workspace, box.id), "train_status.json")) or {}
        if not exists(path) or status.get("state", "done") != "done":
            return None
        return LazyBlock(
            box,
            ExportLoader(path, box, config.merge.background_samples),
            key=f"{path}@{_stamp(path)}",
            kind=config.model.kind,
            device_name=config.merge.device,
            max_loaded=config.merge.max_loaded_blocks,
        )

    return load


def _stamp(path: str) -> str:
    """Size and modification time of a file: changes when a block is retrained."""
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    return f"{info.get('size')}:{info.get('mtime', info.get('LastModified', ''))}"


def partition_boxes(workspace: str) -> list[BlockBox]:
    """The boxes of a finished partition's blocks."""
    summary = read_json(join(workspace, "partition.json"))
    if summary is None or not summary.get("rays_per_block"):
        raise WorkspaceError(f"{workspace}: no partition output; run `bigscene partition` and `bigscene train` first")
    boxes = []
    for block_id in summary["rays_per_block"]:
        record = read_json(block_json_path(workspace, block_id))
        if record is None:
            raise WorkspaceError(f"{block_json_path(workspace, block_id)}: missing block record; re-run partitioning")
        boxes.append(BlockBox.from_json(record))
    return boxes


@dataclass
class MergeInputs:
    scene: Scene
    field: CompositeField
    present: list[str]
    absent: dict[str, str]  # block id -> why (not trained, training state)
    identity: dict[str, Any]  # what defines the composite: blocks and their model files, blend

    @property
    def roi(self) -> np.ndarray:
        return self.scene.roi if self.scene.roi is not None else self.field.bounds

    def summary(self) -> dict[str, Any]:
        return {"blocks": self.present, "absent": self.absent, "blend": self.field.blend}


def load_inputs(workspace: str, config: Config, loader: BlockLoader | None = None) -> MergeInputs:
    """The scene and the composite of the workspace's trained blocks; WorkspaceError naming the absent ones
    unless merge.allow_missing."""
    workspace = str(workspace)
    if not has_scene(workspace):
        raise WorkspaceError(f"{workspace}: no scene store; run `bigscene ingest`, `sfm` or `synth` first")
    scene = read_scene(workspace)
    load = loader or exported_loader(config)
    fields, absent = [], {}
    for box in partition_boxes(workspace):
        block = load(workspace, box)
        if block is None:
            status = read_json(join(block_dir(workspace, box.id), "train_status.json")) or {}
            state = status.get("state")
            absent[box.id] = (
                f"training not finished (state {state})"
                if state and state != "done"
                else f"no trained model at {model_path(workspace, box.id)}"
            )
        else:
            fields.append(block)
    if absent and (not config.merge.allow_missing or not fields):
        named = "; ".join(f"{b}: {why}" for b, why in absent.items())
        raise WorkspaceError(
            f"{len(absent)} of {len(absent) + len(fields)} blocks are missing or incomplete ({named}); train them "
            f"(`bigscene train -w {workspace}`)"
            + ("" if not fields else " or set merge.allow_missing=true to merge the others")
        )
    if absent:
        log.warning(
            "merging %d blocks without %s: their regions render as background and are not meshed",
            len(fields),
            ", ".join(absent),
        )
    field = CompositeField(fields, config.merge.blend, config.merge.idw_margin)
    stamps = {
        b.box.id: _stamp(model_path(workspace, b.box.id)) if exists(model_path(workspace, b.box.id)) else "-"
        for b in fields
    }
    identity = {"blocks": stamps, "blend": config.merge.blend, "idw_margin": config.merge.idw_margin}
    return MergeInputs(scene, field, [b.box.id for b in fields], absent, identity)


def _record(workspace: str, stage: str, summary: dict[str, Any], config: Config) -> None:
    """The stage's summary and resolved config beside its outputs, and its section of the report."""
    save_resolved(config, merge_store.merge_path(workspace, f"{stage}.config.yaml"))
    record_stage(workspace, stage, summary)


def stage_fingerprint(inputs: MergeInputs, config: Config, **extra: Any) -> str:
    """What a stage's result depends on: the blocks, the merge and sampler settings, and `extra`."""
    doc = {
        "identity": inputs.identity,
        "merge": dataclasses.asdict(config.merge),
        "sampler": dataclasses.asdict(config.sampler),
        "background": config.scene.background,
        **extra,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _finished(workspace: str, stage: str, fingerprint_: str) -> dict[str, Any] | None:
    """The stage's summary when it already ran with this fingerprint (re-running is then a no-op)."""
    done = read_json(merge_store.merge_path(workspace, f"{stage}.json"))
    if done is not None and done.get("fingerprint") == fingerprint_:
        log.info("%s already complete in %s", stage, merge_store.merge_path(workspace))
        return done
    return None


def _seams(inputs: MergeInputs, config: Config) -> dict[str, Any]:
    cfg = config.merge
    near = 2 * cfg.voxel_size
    return {
        "disagreement": seam_disagreement(inputs.field, cfg.seam_samples, near, cfg.seed),
        "jump": seam_jump(inputs.field, cfg.seam_samples, near, 0.01 * cfg.voxel_size, cfg.seed),
    }


def run_merge(
    workspace: str, config: Config, address: str | None = None, loader: BlockLoader | None = None
) -> dict[str, Any]:
    """Load the blocks, build the composite and measure its seams; WS/merge/merge.json."""
    del address  # nothing here is distributed; the signature matches the other stages
    started = time.perf_counter()
    inputs = load_inputs(workspace, config, loader)
    fp = stage_fingerprint(inputs, config)
    done = _finished(str(workspace), "merge", fp)
    if done is not None:
        return done
    summary = {
        "stage": "merge",
        **inputs.summary(),
        "kind": inputs.field.kind,
        "bounds": inputs.field.bounds.tolist(),
        "seams": _seams(inputs, config),
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fp,
    }
    _record(str(workspace), "merge", summary, config)
    return summary


def voxel_seeds(workspace: str, blocks: list[str], grid: MeshGrid) -> set[Index]:
    """Chunks touched by the partition's surface voxels of `blocks`."""
    seeds: set[Index] = set()
    for block_id in blocks:
        if not exists(voxels_path(workspace, block_id)):
            continue
        voxels = read_voxels(voxels_path(workspace, block_id))
        if len(voxels.coords):
            seeds |= grid.chunks_of_boxes(voxels.origin + voxels.coords * voxels.voxel_size, voxels.voxel_size)
    return seeds


def run_mesh(
    workspace: str, config: Config, address: str | None = None, loader: BlockLoader | None = None
) -> dict[str, Any]:
    """Mesh the composite SDF out of core; WS/merge/{sdf.zarr, mesh/tiles, mesh/mesh.ply, mesh.json}."""
    started = time.perf_counter()
    workspace, cfg = str(workspace), config.merge
    inputs = load_inputs(workspace, config, loader)
    if inputs.field.kind != "neus":
        raise WorkspaceError("meshing needs an SDF: the blocks are NeRF density fields (model.kind=nerf)")
    grid = MeshGrid.over(inputs.roi, cfg.voxel_size, cfg.chunk)
    fp = fingerprint(grid, {**inputs.identity, "colour": cfg.colour})
    done = read_json(merge_store.merge_path(workspace, "mesh.json"))
    if done is not None and done.get("fingerprint") == fp and exists(str(done.get("mesh", ""))):
        log.info("mesh already complete in %s", merge_store.mesh_dir(workspace))
        return done
    seeds = voxel_seeds(workspace, inputs.present, grid) if cfg.seeds == "voxels" else set()
    source = cfg.seeds
    if not seeds:
        if cfg.seeds == "voxels":
            log.warning("no surface voxels in the blocks' voxels.zarr; probing the SDF at chunk centres instead")
        seeds, source = probe_seeds(inputs.field, grid), "probe"
    estimate = check_budget(grid, seeds, cfg.voxel_budget)
    with closing(make_engine("merge", cfg.engine, address, cfg.num_cpus, cfg.max_retries, cfg.max_in_flight)) as engine:
        result = mesh_field(workspace, inputs.field, grid, seeds, engine, fp, cfg.colour)
    summary = {
        "stage": "mesh",
        **inputs.summary(),
        "seeds": source,
        "nodes_estimate": estimate,
        **result,
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fp,
    }
    _record(workspace, "mesh", summary, config)
    return summary


def run_render(
    workspace: str, config: Config, address: str | None = None, loader: BlockLoader | None = None
) -> dict[str, Any]:
    """Test views (colour, depth, normal PNGs), a camera-path GIF, and the orthophoto and DSM (Zarr + PNG)."""
    started = time.perf_counter()
    workspace, cfg = str(workspace), config.merge
    inputs = load_inputs(workspace, config, loader)
    fp = stage_fingerprint(inputs, config)
    done = _finished(workspace, "render", fp)
    if done is not None:
        return done
    settings = RenderSettings.from_config(config)
    image_space = cfg.blend == "image_space"
    renders = merge_store.merge_path(workspace, "renders")
    views = held_out_views(inputs.scene, cfg.eval_views, cfg.render_scale)
    rays, seconds = 0, 0.0
    for view in views:
        t0 = time.perf_counter()
        out = render_view(inputs.field, view.camera, view.c2w, settings, image_space)
        seconds += time.perf_counter() - t0
        rays += view.camera.width * view.camera.height
        valid = out["opacity"] > 0.5
        pictures = {"rgb": rgb_png(out["rgb"]), "depth": depth_png(out["depth"], valid)}
        if "normals" in out:
            pictures["normal"] = normal_png(out["normals"], valid)
        for kind, image in pictures.items():
            merge_store.write_bytes_atomic(join(renders, "views", f"{view.name}_{kind}.png"), png_bytes(image))
    frames = []
    for view in camera_path(inputs.roi, cfg.path, cfg.path_frames, cfg.path_width, cfg.path_height):
        t0 = time.perf_counter()
        frames.append(rgb_png(render_view(inputs.field, view.camera, view.c2w, settings, image_space)["rgb"]))
        seconds += time.perf_counter() - t0
        rays += cfg.path_width * cfg.path_height
    merge_store.write_bytes_atomic(join(renders, f"{cfg.path}.gif"), gif_bytes(frames))
    roi = inputs.roi
    pixel = cfg.ortho_pixel or float((roi[1, :2] - roi[0, :2]).max()) / 1024
    with closing(make_engine("merge", cfg.engine, address, cfg.num_cpus, cfg.max_retries, cfg.max_in_flight)) as engine:
        ortho = render_ortho(workspace, inputs.field, OrthoGrid(roi, pixel, cfg.ortho_tile), settings, engine)
    summary = {
        "stage": "render",
        **inputs.summary(),
        "views": len(views),
        "path": {"kind": cfg.path, "frames": len(frames), "file": join(renders, f"{cfg.path}.gif")},
        "rays_per_second": round(rays / seconds, 1) if seconds else None,
        "ortho": ortho,
        "renders": renders,
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fp,
    }
    _record(workspace, "render", summary, config)
    return summary


def mesh_grid(workspace: str) -> MeshGrid:
    """The grid of the stored mesh (WorkspaceError when there is no finished mesh)."""
    attrs = merge_store.sdf_attrs(workspace)
    if attrs is None or read_json(merge_store.merge_path(workspace, "mesh.json")) is None:
        raise WorkspaceError(f"{merge_store.mesh_dir(workspace)}: no finished mesh; run `bigscene mesh` first")
    return MeshGrid(np.array(attrs["origin"]), float(attrs["voxel_size"]), tuple(attrs["shape"]), int(attrs["chunk"]))


def ground_truth_path(workspace: str, config: Config) -> str | None:
    path = config.merge.gt_mesh or join(workspace, "gt", "mesh.ply")
    if exists(path):
        return path
    if config.merge.gt_mesh:
        raise InputError(path, "no such ground-truth mesh (merge.gt_mesh)")
    return None


def _geometry(
    workspace: str, config: Config, inputs: MergeInputs, path: str | None, region: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Geometry of the stored mesh against the ground-truth mesh at `path` (mapped into the scene frame); with
    `region` (2, 3), of both meshes' faces inside that box only."""
    if path is None:
        log.info("no ground-truth mesh (WS/gt/mesh.ply or merge.gt_mesh): geometry is not evaluated")
        return None
    grid = mesh_grid(workspace)
    try:
        with fsspec.open(path, "rb") as f:
            gt = trimesh.load(f, file_type=path.rsplit(".", 1)[-1], process=False)
    except Exception as err:  # trimesh raises many types for a damaged file
        raise InputError(path, f"not a readable mesh ({type(err).__name__}: {err})") from err
    if not isinstance(gt, trimesh.Trimesh) or not len(gt.faces):
        raise InputError(path, "not a triangle mesh with faces")
    transform, frame = gt_transform(gt.bounds, inputs.roi, inputs.scene.world_from_input, config.merge.gt_frame, path)
    cfg = config.merge
    threshold = cfg.eval_threshold or 2 * cfg.voxel_size
    max_distance = cfg.eval_max_distance or 10 * threshold
    spacing = cfg.eval_spacing or threshold / 5
    pred = mesh_pieces(workspace, grid)
    truth = split_faces(apply_similarity(transform, gt.vertices), np.asarray(gt.faces))
    if region is not None:
        pred, truth = crop_faces(pred, region), crop_faces(truth, region)
    metrics = geometry_metrics(
        pred,
        truth,
        threshold,
        max_distance,
        spacing,
        seam_band_labeller(inputs.field),
    )
    by_label = metrics.pop("accuracy_by_label")
    to_input = 1.0 / similarity_scale(inputs.scene.world_from_input)
    return {
        **metrics,
        "accuracy_by_band": {"block interiors": by_label.get(0), "seam bands": by_label.get(1)},
        "ground_truth": path,
        "ground_truth_frame": frame,
        "region": None if region is None else np.asarray(region).tolist(),
        "input_units_per_scene_unit": to_input,
        "chamfer_input_units": metrics["chamfer"] * to_input,
        "threshold_input_units": threshold * to_input,
    }


def run_eval(
    workspace: str, config: Config, address: str | None = None, loader: BlockLoader | None = None
) -> dict[str, Any]:
    """PSNR / SSIM (composite and each block alone), geometry against ground truth, seams; WS/merge/eval.json and
    the report (`bigscene.merge.report.print_report` prints its table)."""
    del address  # evaluation runs in this process
    started = time.perf_counter()
    workspace, cfg = str(workspace), config.merge
    inputs = load_inputs(workspace, config, loader)
    mesh = read_json(merge_store.merge_path(workspace, "mesh.json")) or {}
    gt = ground_truth_path(workspace, config)
    fp = stage_fingerprint(inputs, config, mesh=mesh.get("fingerprint"), gt=gt and _stamp(gt))
    done = _finished(workspace, "eval", fp)
    if done is not None:
        return done
    views = held_out_views(inputs.scene, cfg.eval_views, cfg.render_scale)
    images = (
        view_metrics(inputs.field, views, RenderSettings.from_config(config), cfg.blend == "image_space")
        if views
        else None
    )
    summary = {
        "stage": "eval",
        **inputs.summary(),
        "images": images,
        "geometry": _geometry(workspace, config, inputs, gt) if inputs.field.kind == "neus" else None,
        "seams": _seams(inputs, config),
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": fp,
    }
    _record(workspace, "eval", summary, config)
    return summary


def block_geometry(
    workspace: str, config: Config, block_id: str, loader: BlockLoader | None = None
) -> dict[str, Any] | None:
    """Geometry of the stored mesh against the ground truth inside block `block_id`'s inner box (None without a
    ground-truth mesh): how well a block trained alone (merge.allow_missing) reconstructs the region it owns,
    which the whole-scene figures of `run_eval` would mix with the untrained blocks' missing surface."""
    workspace = str(workspace)
    boxes = {box.id: box for box in partition_boxes(workspace)}
    if block_id not in boxes:
        raise WorkspaceError(f"{workspace}: no block {block_id!r} in the partition (blocks: {', '.join(boxes)})")
    inputs = load_inputs(workspace, config, loader)
    return _geometry(workspace, config, inputs, ground_truth_path(workspace, config), boxes[block_id].inner)

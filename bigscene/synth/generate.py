"""`bigscene synth`: generate a synthetic city workspace, end to end.

Writes, under the workspace WS:
    images/<name>.png                 every view (train, held-out test, novel test) unless render_images=false
    scene.zarr                        cameras, poses, splits, sparse points, ROI (bigscene.store)
    synth/test_depth/<stem>.npy       float32 (H, W) ray distance along unit dirs, 0 where the ray escapes,
    synth/test_normals/<stem>.npy     float32 (H, W, 3) world-space unit normals, 0 where the ray escapes,
    synth/previews/<stem>_{depth,normals}.png   the same as pictures, for test views
    colmap/sparse/0                   the scene as a COLMAP model;  transforms.json: as nerfstudio's
    gt/mesh.ply                       watertight ground-truth surface inside the ROI
    synth.json                        the summary, written last: the completion marker
`load_ground_truth(WS)` rebuilds the exact SDF from the config in synth.json.
Re-running the same config on a complete workspace is a no-op; an interrupted run redoes what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.progress import track

from bigscene.errors import WorkspaceError
from bigscene.scene.colmap import write_colmap
from bigscene.scene.model import ImageRecord, Scene
from bigscene.scene.transforms import write_transforms
from bigscene.store import has_scene, write_scene
from bigscene.store.workspace import read_json, write_json_atomic
from bigscene.synth.capture import View, intrinsics, plan_views, street_network
from bigscene.synth.groundtruth import extract_mesh, write_mesh
from bigscene.synth.layout import generate_layout
from bigscene.synth.points import sample_points
from bigscene.synth.presets import SynthConfig
from bigscene.synth.render import Appearance, RenderSettings, render_view
from bigscene.synth.sdf import CitySDF

log = logging.getLogger(__name__)

SUMMARY = "synth.json"
#: Everything generate writes, relative to the workspace (removed by overwrite).
OUTPUTS = ("images", "scene.zarr", "synth", "gt", "colmap", "transforms.json", SUMMARY)
_MARKER = "synth/config.json"  # the config of the run in progress, so an interrupted run can resume
_DEPTH_CONVENTION = "ray distance along unit ray directions (not z-depth); 0 where the ray escapes"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _occupied(ws: Path) -> list[str]:
    """The outputs of some scene that are present in the workspace."""
    found = []
    for name in OUTPUTS:
        path = ws / name
        if path.is_dir() and any(path.iterdir()) or path.is_file():
            found.append(name)
    return found


def _claim(ws: Path, config: SynthConfig, overwrite: bool) -> dict[str, Any] | None:
    """The finished summary when this config already ran here; else make the workspace ours (refusing a
    different scene unless `overwrite`) and mark the run in progress, so that a re-run resumes it."""
    identity = config.identity()
    summary = read_json(str(ws / SUMMARY))
    if summary is not None and summary.get("fingerprint") == identity and has_scene(ws):
        return summary
    ours = read_json(str(ws / _MARKER)) == identity or (summary is not None and summary.get("fingerprint") == identity)
    occupied = _occupied(ws)
    if occupied and not ours:
        if not overwrite:
            raise WorkspaceError(
                f"{ws}: already holds a different scene ({', '.join(occupied)}); pass --overwrite to replace "
                "it or use another workspace"
            )
        log.info("overwriting %s in %s", ", ".join(occupied), ws)
        for name in occupied:
            path = ws / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (ws / SUMMARY).unlink(missing_ok=True)  # written again, last, when this run completes
    write_json_atomic(str(ws / _MARKER), identity)
    return None


def _save_png(pixels: np.ndarray, path: Path) -> None:
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    Image.fromarray(pixels).save(staging, format="PNG")
    os.replace(staging, path)


def _save_npy(array: np.ndarray, path: Path) -> None:
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(staging, "wb") as f:
        np.save(f, array)
    os.replace(staging, path)


def _depth_preview(depth: np.ndarray) -> np.ndarray:
    """Near is bright, far dark, sky black: (H, W, 3) uint8."""
    hit = depth > 0
    out = np.zeros(depth.shape, dtype=np.float64)
    if hit.any():
        inv = 1.0 / depth[hit]
        lo, hi = inv.min(), inv.max()
        out[hit] = 0.1 + 0.9 * (inv - lo) / max(hi - lo, 1e-12)
    return np.repeat((out * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _normal_preview(normals: np.ndarray) -> np.ndarray:
    return ((normals * 0.5 + 0.5) * 255 * (np.abs(normals).sum(-1, keepdims=True) > 0)).round().astype(np.uint8)


def _appearances(config: SynthConfig, count: int) -> list[Appearance | None]:
    """Per-image exposure and white balance (log-normal around 1), or None when appearance is fixed."""
    if config.appearance_variation <= 0:
        return [None] * count
    rng = np.random.default_rng([config.seed, 8])
    sigma = config.appearance_variation
    out = []
    for _ in range(count):
        wb = np.exp(rng.normal(0.0, sigma / 2, 3))
        out.append(Appearance(float(np.exp(rng.normal(0.0, sigma))), tuple((wb / wb[1]).tolist())))
    return out


def _transients(config: SynthConfig, city: CitySDF, views: list[View]) -> list[torch.Tensor | None]:
    """Per training image: `transients` cars and pedestrians (prism rows (T, 7)) on the streets, kept 4 m
    from that image's camera; None for test images and when transients are off."""
    if config.transients <= 0:
        return [None] * len(views)
    rng = np.random.default_rng([config.seed, 9])
    segments = street_network(city.layout)
    out: list[torch.Tensor | None] = []
    for view in views:
        rows = []
        while view.split == "train" and len(rows) < config.transients:
            a, b = segments[int(rng.integers(len(segments)))]
            xy = a + (b - a) * rng.uniform(0.05, 0.95)
            along_x = abs((b - a)[0]) > abs((b - a)[1])
            xy = xy + rng.uniform(-3.5, 3.5) * (np.array([0.0, 1.0]) if along_x else np.array([1.0, 0.0]))
            if np.linalg.norm(xy - view.c2w[:2, 3]) < 4.0:
                continue
            ground = float(city.layout.ground.height(float(xy[0]), float(xy[1])))
            if rng.random() < 0.6:  # a car
                half = (2.2, 0.9) if along_x else (0.9, 2.2)
                rows.append([xy[0], xy[1], ground - 0.5, ground + 1.5, half[0], half[1], 0.3])
            else:  # a pedestrian
                rows.append([xy[0], xy[1], ground - 0.5, ground + float(rng.uniform(1.6, 1.9)), 0.3, 0.3, 0.3])
        out.append(torch.tensor(rows, dtype=torch.float32) if rows else None)
    return out


def _render_all(
    config: SynthConfig,
    city: CitySDF,
    views: list[View],
    appearances: list[Appearance | None],
    ws: Path,
    settings: RenderSettings,
) -> float:
    """Render every view whose outputs are missing; returns the seconds spent."""
    camera = intrinsics(config)
    images = ws / "images"
    depth_dir, normal_dir, preview_dir = (ws / "synth" / name for name in ("test_depth", "test_normals", "previews"))
    for folder in (images, depth_dir, normal_dir, preview_dir):
        folder.mkdir(parents=True, exist_ok=True)
    transients = _transients(config, city, views)
    started = time.perf_counter()
    for index in track(range(len(views)), description="rendering", transient=True):
        view = views[index]
        stem = Path(view.name).stem
        targets = [images / view.name]
        if view.split == "test":
            targets += [depth_dir / f"{stem}.npy", normal_dir / f"{stem}.npy"]
        if all(t.exists() for t in targets):
            continue
        out = render_view(city, camera, view.c2w, settings, appearances[index], transients[index])
        _save_png(out.rgb, images / view.name)
        if view.split == "test":
            _save_npy(out.depth, depth_dir / f"{stem}.npy")
            _save_npy(out.normals, normal_dir / f"{stem}.npy")
            _save_png(_depth_preview(out.depth), preview_dir / f"{stem}_depth.png")
            _save_png(_normal_preview(out.normals), preview_dir / f"{stem}_normals.png")
    return time.perf_counter() - started


def render_settings(config: SynthConfig) -> RenderSettings:
    """The renderer's settings for a config."""
    return RenderSettings(
        supersample=config.supersample,
        soft_shadows=config.soft_shadows,
        ambient_occlusion=config.ambient_occlusion,
        max_steps=config.max_steps,
        chunk_rays=config.chunk_rays,
        seed=config.seed,
    )


def generate(config: SynthConfig, workspace: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Generate the synthetic city `config` into `workspace`; returns the summary (also in WS/synth.json).

    A workspace holding a different scene is refused (WorkspaceError) unless `overwrite`; the same config,
    already complete, is a no-op returning the existing summary.
    """
    ws = Path(workspace)
    done = _claim(ws, config, overwrite)
    if done is not None:
        log.info("synthetic city already complete in %s", ws)
        return done
    started = time.perf_counter()
    device = resolve_device(config.device)
    layout = generate_layout(config)
    city = CitySDF(layout, device)
    views = plan_views(config, layout)
    camera = intrinsics(config)
    settings = render_settings(config)
    log.info(
        "synthetic city: %d buildings, %d trees, %d views at %dx%d on %s",
        len(layout.buildings),
        len(layout.trees),
        len(views),
        config.width,
        config.height,
        device,
    )
    appearances = _appearances(config, len(views))
    render_seconds = _render_all(config, city, views, appearances, ws, settings) if config.render_images else 0.0

    train = np.array([v.split == "train" for v in views])
    c2w = np.stack([v.c2w for v in views])
    points_started = time.perf_counter()
    points = sample_points(
        city, camera, c2w[train], config.points, config.point_noise, config.pixel_noise, settings, config.seed
    )
    points_seconds = time.perf_counter() - points_started
    scene = Scene(
        cameras={1: camera},
        images=[ImageRecord(v.name, 1, i, v.split) for i, v in enumerate(views)],
        c2w=c2w,
        points=points,
        image_root=str((ws / "images").resolve()),
        roi=layout.roi,
    )
    write_scene(ws, scene)
    write_colmap(scene, ws / "colmap" / "sparse" / "0")
    write_transforms(scene, ws / "transforms.json")

    gt: dict[str, Any] = {"sdf": "bigscene.synth.load_ground_truth(WS)", "voxel": config.gt_voxel}
    if config.gt_mesh:
        mesh_started = time.perf_counter()
        mesh = extract_mesh(city, layout.roi, config.gt_voxel)
        write_mesh(mesh, ws / "gt" / "mesh.ply")
        gt.update(
            mesh="gt/mesh.ply",
            vertices=len(mesh.vertices),
            faces=len(mesh.faces),
            watertight=bool(mesh.is_watertight),
            seconds=round(time.perf_counter() - mesh_started, 3),
        )
    if config.render_images:
        gt.update(
            test_depth="synth/test_depth",
            test_normals="synth/test_normals",
            previews="synth/previews",
            depth=_DEPTH_CONVENTION,
        )

    splits = {s: int(sum(v.split == s for v in views)) for s in ("train", "test")}
    summary = {
        "stage": "synth",
        "seed": config.seed,
        "images": {**splits, "novel": sum(v.kind == "novel" for v in views), "rendered": config.render_images},
        "resolution": [config.width, config.height],
        "buildings": len(layout.buildings),
        "trees": len(layout.trees),
        "points": len(points),
        "roi": layout.roi.tolist(),
        "ground_truth": gt,
        "novel_views": [v.name for v in views if v.kind == "novel"],
        "device": str(device),
        "render_seconds": round(render_seconds, 3),
        "points_seconds": round(points_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": config.identity(),  # the resolved config: load_ground_truth rebuilds the city from it
    }
    if config.appearance_variation > 0:  # per image: exposure and white-balance gains (r, g, b)
        pairs = zip(views, appearances, strict=True)
        summary["appearance"] = {v.name: [a.exposure, *a.white_balance] for v, a in pairs if a is not None}
    write_json_atomic(str(ws / SUMMARY), summary)
    (ws / _MARKER).unlink(missing_ok=True)
    return summary

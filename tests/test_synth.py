"""The synthetic city: rendered depth against the analytic SDF, sparse points against rendered depth,
exports that read back, determinism, a watertight ground truth, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from bigscene.errors import ConfigError, WorkspaceError
from bigscene.scene.cameras import generate_rays
from bigscene.scene.colmap import read_colmap
from bigscene.store import read_scene
from bigscene.synth import (
    Appearance,
    CitySDF,
    generate,
    generate_layout,
    load_ground_truth,
    make_config,
    render_view,
)
from bigscene.synth.capture import intrinsics, plan_views
from bigscene.synth.generate import render_settings
from bigscene.synth.groundtruth import box_sdf, mesh_grid

# A quick city for the determinism and workspace tests: few views, no mesh.
QUICK = {"aerial_stops": 2, "aerial_lines": 1, "novel_views": 1, "points": 100, "gt_mesh": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    ws = tmp_path_factory.mktemp("synth") / "tiny"
    return ws, generate(make_config("tiny"), ws)


def test_summary_and_layout_of_the_workspace(tiny: tuple[Path, dict]) -> None:
    ws, summary = tiny
    assert json.loads((ws / "synth.json").read_text()) == summary
    scene = read_scene(ws)
    names = [im.name for im in scene.images]
    assert summary["images"]["train"] + summary["images"]["test"] == len(names) == len(list((ws / "images").iterdir()))
    assert summary["images"]["novel"] == len(summary["novel_views"]) == 2
    assert all(im.split == "test" for im in scene.images if im.name.startswith("novel_"))
    assert {im.split for im in scene.images} == {"train", "test"}
    for im in scene.images:
        if im.split == "test":
            stem = Path(im.name).stem
            assert (ws / "synth" / "test_depth" / f"{stem}.npy").is_file()
            assert (ws / "synth" / "test_normals" / f"{stem}.npy").is_file()
            assert (ws / "synth" / "previews" / f"{stem}_depth.png").is_file()
    np.testing.assert_allclose(scene.roi, summary["roi"])
    assert summary["buildings"] >= 3 and summary["points"] > 50
    assert (ws / "transforms.json").is_file() and (ws / "gt" / "mesh.ply").is_file()


def test_rendered_depth_lies_on_the_analytic_surface(tiny: tuple[Path, dict]) -> None:
    ws, _ = tiny
    scene = read_scene(ws)
    truth = load_ground_truth(ws)
    checked = 0
    for index in scene.split_indices("test"):
        camera, name = scene.camera_of(index), Path(scene.images[index].name).stem
        depth = np.load(ws / "synth" / "test_depth" / f"{name}.npy")  # (H, W) ray distance, 0 = sky
        normals = np.load(ws / "synth" / "test_normals" / f"{name}.npy")
        origins, dirs = generate_rays(camera, torch.from_numpy(scene.c2w[index]), camera.pixel_grid())
        hit = depth.reshape(-1) > 0
        points = (origins + dirs * torch.from_numpy(depth.reshape(-1, 1))).numpy()[hit]
        sdf = truth(points)
        assert np.abs(sdf).max() < 1e-3, f"{name}: max |sdf| {np.abs(sdf).max():.2e} at rendered depth"
        np.testing.assert_allclose(np.linalg.norm(normals.reshape(-1, 3)[hit], axis=1), 1.0, atol=1e-4)
        checked += int(hit.sum())
    assert checked > 1000


def test_rolling_ground_city_is_a_valid_bound_and_renders_onto_its_surface() -> None:
    config = make_config("small", {"width": 100, "height": 75})
    city = CitySDF(generate_layout(config))
    assert city.ground.amplitude > 0 and city.lipschitz > 1.0
    gen = torch.Generator().manual_seed(0)
    lo, hi = torch.from_numpy(city.layout.roi).float()
    p = lo + (hi - lo) * torch.rand(20000, 3, generator=gen)
    q = p + 0.5 * torch.randn(20000, 3, generator=gen)
    # 1-Lipschitz, as a distance bound must be; and the gridded field never exceeds a step past a surface
    assert ((city.full(p) - city.full(q)).abs() <= (p - q).norm(dim=-1) * (1 + 1e-4) + 1e-5).all()
    assert (city.sdf(p) <= city.full(p) + 1e-5).float().mean() > 0.99
    views = plan_views(config, city.layout)
    camera = intrinsics(config)
    for view in (views[20], next(v for v in views if v.kind == "street")):
        out = render_view(city, camera, view.c2w, render_settings(config))
        origins, dirs = generate_rays(camera, torch.from_numpy(view.c2w), camera.pixel_grid())
        hit = torch.from_numpy(out.mask.reshape(-1))
        points = origins[hit] + dirs[hit] * torch.from_numpy(out.depth.reshape(-1))[hit, None]
        assert hit.float().mean() > 0.3 and city(points).abs().max() < 1e-3


def test_sparse_points_sit_at_the_rendered_depth(tiny: tuple[Path, dict]) -> None:
    ws, summary = tiny
    config = make_config("tiny")
    scene = read_scene(ws)
    city = CitySDF(generate_layout(config))
    sigma = config.point_noise
    xyz = scene.points.xyz  # (P, 3)
    best = np.full((len(xyz), 2), np.inf)  # the two smallest |depth mismatch| per point over training views
    for index in scene.split_indices("train"):
        camera, c2w = scene.camera_of(index), scene.c2w[index]
        depth = render_view(city, camera, c2w, render_settings(config)).depth  # (H, W)
        local = (xyz - c2w[:3, 3]) @ c2w[:3, :3]  # camera frame
        uv = local[:, :2] / local[:, 2:3] * camera.focal + camera.principal_point
        # bilinear depth between the four pixel centres around each projection
        x0, y0 = np.floor(uv[:, 0] - 0.5).astype(int), np.floor(uv[:, 1] - 0.5).astype(int)
        inside = (local[:, 2] > 0) & (x0 >= 0) & (y0 >= 0) & (x0 < camera.width - 1) & (y0 < camera.height - 1)
        i = np.flatnonzero(inside)
        fx, fy = uv[i, 0] - 0.5 - x0[i], uv[i, 1] - 0.5 - y0[i]
        quad = depth[y0[i], x0[i]], depth[y0[i], x0[i] + 1], depth[y0[i] + 1, x0[i]], depth[y0[i] + 1, x0[i] + 1]
        rendered = (quad[0] * (1 - fx) + quad[1] * fx) * (1 - fy) + (quad[2] * (1 - fx) + quad[3] * fx) * fy
        miss = np.abs(rendered - np.linalg.norm(xyz[i] - c2w[:3, 3], axis=1))
        miss[np.min(quad, axis=0) == 0] = np.inf
        stacked = np.sort(np.concatenate([best[i], miss[:, None]], axis=1), axis=1)
        best[i] = stacked[:, :2]
    assert np.all(scene.points.track_length >= 2)
    # each point is seen where it should be in at least two training views (its track says >= 2)
    seen_twice = best[:, 1] < 4 * sigma + 0.05
    assert seen_twice.mean() > 0.9, f"only {seen_twice.mean():.1%} of points agree with the rendered depth"
    assert np.median(best[:, 0]) < 2 * sigma
    assert 0.2 < np.median(scene.points.error) < 2.0  # pixels, as the keypoint noise implies


def test_colmap_export_reads_back_with_identical_poses(tiny: tuple[Path, dict]) -> None:
    ws, _ = tiny
    scene = read_scene(ws)
    back = read_colmap(ws / "colmap" / "sparse" / "0", image_root=ws / "images").scene
    poses = {im.name: c2w for im, c2w in zip(back.images, back.c2w, strict=True)}
    assert set(poses) == {im.name for im in scene.images}
    for im, c2w in zip(scene.images, scene.c2w, strict=True):
        np.testing.assert_allclose(poses[im.name], c2w, atol=1e-6)
    assert len(back.points) == len(scene.points)


def test_ground_truth_mesh_is_watertight_and_on_the_surface(tiny: tuple[Path, dict]) -> None:
    ws, summary = tiny
    mesh = trimesh.load(ws / "gt" / "mesh.ply", process=False)
    assert mesh.is_watertight and summary["ground_truth"]["watertight"]
    voxel = summary["ground_truth"]["voxel"]
    roi = np.array(summary["roi"])
    assert np.all(mesh.vertices >= roi[0] - 1e-9) and np.all(mesh.vertices <= roi[1] + 1e-9)
    _, _, box = mesh_grid(roi, voxel)
    vertices = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    interior = (box_sdf(vertices, box[0], box[1]) < -voxel).numpy()
    sdf = load_ground_truth(ws)(np.asarray(mesh.vertices)[interior])
    assert interior.sum() > 1000 and np.abs(sdf).max() < voxel / 2


def test_same_seed_same_bytes_different_seed_different_city(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    generate(make_config("tiny", QUICK), first)
    generate(make_config("tiny", QUICK), second)
    images = sorted(p.name for p in (first / "images").iterdir())
    assert images and images == sorted(p.name for p in (second / "images").iterdir())
    for name in images:
        assert (first / "images" / name).read_bytes() == (second / "images" / name).read_bytes()
    np.testing.assert_array_equal(read_scene(first).points.xyz, read_scene(second).points.xyz)

    other = make_config("tiny", {**QUICK, "seed": 1})
    assert [b.parts for b in generate_layout(other).buildings] != [
        b.parts for b in generate_layout(make_config("tiny", QUICK)).buildings
    ]
    with pytest.raises(WorkspaceError, match="--overwrite"):
        generate(other, second)
    summary = generate(other, second, overwrite=True)
    assert summary["seed"] == 1
    assert any((first / "images" / name).read_bytes() != (second / "images" / name).read_bytes() for name in images)


def test_street_capture_with_transients_and_appearance_change(tmp_path: Path) -> None:
    config = make_config(
        "tiny",
        {
            "capture": "street",
            "street_stops": 4,
            "street_views": "forward,left",
            "transients": 4,
            "appearance_variation": 0.3,
            "gt_mesh": False,
            "novel_views": 2,
        },
    )
    summary = generate(config, tmp_path)
    scene = read_scene(tmp_path)
    assert summary["images"]["train"] + summary["images"]["test"] == 10
    assert all(im.name.startswith(("street_", "novel_")) for im in scene.images)
    heights = scene.c2w[:, 2, 3]
    np.testing.assert_allclose(heights[[im.name.startswith("street_") for im in scene.images]], 1.7, atol=1e-9)

    city = CitySDF(generate_layout(config))
    camera, c2w = scene.camera_of(0), scene.c2w[0]
    plain = render_view(city, camera, c2w, render_settings(config))
    car = torch.tensor([[*(c2w[:3, 3] + 8.0 * c2w[:3, 2])[:2], -0.5, 1.5, 2.2, 0.9, 0.3]], dtype=torch.float32)
    occluded = render_view(city, camera, c2w, render_settings(config), extras=car)
    assert (occluded.depth < plain.depth - 1.0).mean() > 0.02  # the car stands in front of the scene
    brighter = render_view(city, camera, c2w, render_settings(config), Appearance(exposure=1.5))
    assert brighter.rgb.mean() > plain.rgb.mean() + 5
    np.testing.assert_array_equal(brighter.depth, plain.depth)


def test_same_config_again_is_a_no_op(tiny: tuple[Path, dict]) -> None:
    ws, summary = tiny
    stamp = (ws / "synth.json").stat().st_mtime_ns
    assert generate(make_config("tiny"), ws) == summary
    assert (ws / "synth.json").stat().st_mtime_ns == stamp


def test_a_foreign_workspace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "scene.zarr").mkdir()
    (tmp_path / "scene.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(WorkspaceError, match="different scene.*--overwrite"):
        generate(make_config("tiny", QUICK), tmp_path)


def test_presets_and_overrides() -> None:
    config = make_config("tiny", {"width": "128", "soft_shadows": "true", "aerial_clearance": "20,35.5", "seed": 3})
    assert (config.width, config.soft_shadows, config.aerial_clearance, config.seed) == (128, True, (20.0, 35.5), 3)
    assert make_config("small").lots_per_block == 4 and not make_config("scale").render_images
    with pytest.raises(ConfigError, match="unknown synth preset 'nope'.*tiny.*small.*city.*scale.*sfm"):
        make_config("nope")
    with pytest.raises(ConfigError, match="unknown synth field 'widht'.*width.*supersample"):
        make_config("tiny", {"widht": 10})
    with pytest.raises(ConfigError, match="expected int"):
        make_config("tiny", {"width": "wide"})
    with pytest.raises(ConfigError, match="capture"):
        make_config("tiny", {"capture": "satellite"})


def test_ground_truth_callable_takes_arrays_and_tensors(tiny: tuple[Path, dict]) -> None:
    ws, summary = tiny
    truth = load_ground_truth(ws)
    roi = np.array(summary["roi"])
    meadow = np.array([[roi[1, 0] + 200.0, 0.0, 10.0]])  # far from the city, over flat ground
    assert truth(meadow)[0] == pytest.approx(10.0, abs=1e-4)
    assert torch.allclose(truth(torch.from_numpy(meadow).float()), torch.from_numpy(truth(meadow)))
    with pytest.raises(WorkspaceError, match="synth.json"):
        load_ground_truth(ws / "nowhere")

"""The merge stages on a small two-block workspace of analytic blocks (a ground plane and three buildings), the
trainer's exported blocks through the default loader, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import zarr
from PIL import Image
from skimage.measure import marching_cubes

from bigscene.config import Config, ModelConfig, SamplerConfig, load_config
from bigscene.errors import ConfigError, InputError, WorkspaceError
from bigscene.merge import AnalyticBlock, BlockBox, CompositeField, RenderSettings, render_view, report_table
from bigscene.merge.evaluate import gt_transform
from bigscene.merge.stage import block_geometry, load_inputs, model_path, run_eval, run_merge, run_mesh, run_render
from bigscene.merge.views import look_at
from bigscene.scene import Camera, ImageRecord, Scene
from bigscene.scene.geometry import make_similarity
from bigscene.store import write_scene
from bigscene.store.blocks import block_json_path, voxels_path, write_voxel_stores
from bigscene.store.workspace import write_json_atomic

ROI = np.array([[-20.0, -20.0, -1.0], [20.0, 20.0, 8.0]])
#: buildings (cx, cy, half x, half y, height); the one at x = 0 straddles the seam between the blocks
BUILDINGS = torch.tensor([[-9.0, -9.0, 4.0, 4.0, 6.0], [0.0, 8.0, 3.0, 3.0, 5.0], [10.0, -4.0, 3.0, 5.0, 4.0]])
OVERRIDES = [
    "merge.voxel_size=0.5",
    "merge.chunk=17",
    "merge.engine=inline",
    "merge.eval_views=2",
    "merge.path_frames=2",
    "merge.path_width=24",
    "merge.path_height=18",
    "merge.ortho_pixel=1.0",
    "merge.ortho_tile=16",
    "merge.seam_samples=4000",
    "sampler.num_samples=32",
    "sampler.num_importance=16",
]
CAMERA = Camera.pinhole(20.0, 20.0, 12.0, 9.0, 24, 18)


def town_sdf(x: torch.Tensor) -> torch.Tensor:
    """Exact SDF (N,) of the ground z = 0 united with box buildings standing on it."""
    q = torch.stack(
        [
            (x[:, None, 0] - BUILDINGS[:, 0]).abs() - BUILDINGS[:, 2],
            (x[:, None, 1] - BUILDINGS[:, 1]).abs() - BUILDINGS[:, 3],
            (x[:, None, 2] - BUILDINGS[:, 4] / 2).abs() - BUILDINGS[:, 4] / 2,
        ],
        dim=-1,
    )  # (N, K, 3)
    boxes = q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)
    return torch.minimum(x[:, 2], boxes.amin(dim=1))


def town_colour(x: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [0.5 + 0.4 * torch.sin(x[:, 0] / 4), 0.5 + 0.4 * torch.cos(x[:, 1] / 5), (x[:, 2] / 8).clamp(0, 1)], dim=-1
    )


def boxes() -> list[BlockBox]:
    lo, hi = ROI.copy(), ROI.copy()
    lo[1, 0] = hi[0, 0] = 0.0
    grow = np.array([[-3.0, -3.0, -1.0], [3.0, 3.0, 1.0]])
    return [BlockBox("b000", lo, lo + grow), BlockBox("b001", hi, hi + grow)]


def town_block(workspace: str, box: BlockBox) -> AnalyticBlock:
    return AnalyticBlock(box, town_sdf, town_colour, background=(0.6, 0.7, 0.9))


def config(*overrides: str) -> Config:
    return load_config(None, [*OVERRIDES, *overrides])


def views() -> list[np.ndarray]:
    return [look_at(np.array([30.0, -30.0, 25.0]), np.zeros(3)), look_at(np.array([-25.0, 28.0, 20.0]), np.zeros(3))]


def make_workspace(root: Path, world_from_input: np.ndarray | None = None) -> str:
    """Scene store (two test views whose photos are renders of the town), partition records, surface voxels."""
    ws = root / "ws"
    images = root / "images"
    images.mkdir(parents=True)
    field = CompositeField([town_block(str(ws), b) for b in boxes()])
    settings = RenderSettings.from_config(config())
    for i, c2w in enumerate(views()):
        rgb = render_view(field, CAMERA, c2w, settings)["rgb"]
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(images / f"v{i}.png")
    scene = Scene(
        {1: CAMERA},
        [ImageRecord(f"v{i}.png", 1, i, "test") for i in range(2)],
        np.stack(views()),
        image_root=str(images),
        roi=ROI,
        world_from_input=np.eye(4) if world_from_input is None else world_from_input,
    )
    write_scene(ws, scene)
    write_json_atomic(str(ws / "partition.json"), {"rays_per_block": {b.id: 100 for b in boxes()}})
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(-20, 20, (400, 2)), np.zeros(400)])
    for box in boxes():
        write_json_atomic(
            block_json_path(str(ws), box.id), {"id": box.id, "inner": box.inner.tolist(), "outer": box.outer.tolist()}
        )
        mine = ground[np.all((ground >= box.outer[0]) & (ground <= box.outer[1]), axis=1)]
        write_voxel_stores([(voxels_path(str(ws), box.id), np.floor(mine).astype(np.int32))], np.zeros(3), 1.0, 1, 2)
    return str(ws)


def write_ground_truth(ws: str, transform: np.ndarray | None = None) -> None:
    """The town's surface in the ROI by dense marching cubes at 0.25 (mapped by `transform`), as WS/gt/mesh.ply."""
    axes = [np.arange(ROI[0, a], ROI[1, a] + 1e-9, 0.25) for a in range(3)]
    points = torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)).float()
    values = town_sdf(points).numpy().reshape([len(a) for a in axes])
    verts, faces, _, _ = marching_cubes(values, 0.0, spacing=(0.25,) * 3, gradient_direction="descent")
    verts = verts + ROI[0]
    if transform is not None:
        verts = verts @ transform[:3, :3].T + transform[:3, 3]
    (Path(ws) / "gt").mkdir(exist_ok=True)
    trimesh.Trimesh(verts, faces, process=False).export(Path(ws) / "gt" / "mesh.ply")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, dict]]:
    ws = make_workspace(tmp_path_factory.mktemp("town"))
    write_ground_truth(ws)
    cfg = config()
    summaries = {stage.__name__: stage(ws, cfg, loader=town_block) for stage in (run_merge, run_mesh, run_render)}
    summaries["run_eval"] = run_eval(ws, cfg, loader=town_block)
    return ws, summaries


def test_merge_measures_no_seam_between_blocks_that_agree(staged: tuple[str, dict]) -> None:
    merge = staged[1]["run_merge"]
    assert merge["blocks"] == ["b000", "b001"] and merge["absent"] == {} and merge["kind"] == "neus"
    assert merge["seams"]["disagreement"]["mean"] == 0.0 and merge["seams"]["disagreement"]["points"] > 50
    assert merge["seams"]["jump"]["mean"] < 0.05


def test_mesh_stage_welds_a_crack_free_mesh_and_is_idempotent(staged: tuple[str, dict]) -> None:
    ws, summaries = staged
    mesh = summaries["run_mesh"]
    assert mesh["seeds"] == "voxels" and mesh["chunks"]["seeds"] > 0
    assert mesh["boundary_edges_inside_roi"] == 0 and mesh["nonmanifold_edges"] == 0 and mesh["faces"] > 1000
    loaded = trimesh.load(mesh["mesh"], process=False)
    assert len(loaded.vertices) == mesh["vertices"] and len(loaded.faces) == mesh["faces"]
    tiles = list((Path(ws) / "merge" / "mesh" / "tiles").glob("*.ply"))
    assert len(tiles) == mesh["chunks"]["meshed"]
    again = run_mesh(ws, config(), loader=town_block)
    assert again == mesh  # a finished mesh is not redone


def test_render_stage_writes_views_path_orthophoto_and_dsm(staged: tuple[str, dict]) -> None:
    ws, summaries = staged
    renders = Path(ws) / "merge" / "renders"
    for name in ("v0", "v1"):
        for kind in ("rgb", "depth", "normal"):
            assert (renders / "views" / f"{name}_{kind}.png").is_file()
    gif = Image.open(renders / "orbit.gif")
    assert gif.n_frames == 2 and gif.size == (24, 18)
    assert (renders / "ortho.png").is_file() and (renders / "dsm.png").is_file()
    ortho = zarr.open_group(str(Path(ws) / "merge" / "ortho.zarr"), mode="r")
    dsm = ortho["dsm"][...]
    assert dsm.shape == (40, 40) and ortho["rgb"].shape == (40, 40, 3) and ortho.attrs["complete"]
    row, col = int(20 - (-9.0)), int(-9.0 + 20)  # over the 6 m building at (-9, -9): row 0 is y = 20
    assert dsm[row, col] == pytest.approx(6.0, abs=0.3)
    assert dsm[2, 2] == pytest.approx(0.0, abs=0.3)  # open ground
    assert summaries["run_render"]["ortho"]["tiles"] == 9


def test_eval_reports_images_geometry_and_seams(staged: tuple[str, dict]) -> None:
    ws, summaries = staged
    ev = summaries["run_eval"]
    assert ev["images"]["views"] == 2 and ev["images"]["composite"]["psnr"] > 40
    assert ev["images"]["composite"]["ssim"] > 0.98
    assert set(ev["images"]["blocks_alone"]) == {"b000", "b001"}
    for row in ev["images"]["blocks_alone"].values():
        assert row["psnr"] > 35 and row["composite_psnr"] > 35 and row["pixels"] > 16
    geometry = ev["geometry"]
    assert geometry["ground_truth_frame"] == "scene"
    assert geometry["precision"] > 0.99 and geometry["fscore"] > 0.95 and geometry["chamfer"] < 0.1
    assert geometry["accuracy_by_band"]["seam bands"] is not None
    assert geometry["accuracy_by_band"]["block interiors"] < 0.1
    report = json.loads((Path(ws) / "merge" / "report.json").read_text())
    assert set(report) == {"merge", "mesh", "render", "eval"}
    assert report_table(report).row_count > 10
    for stage in (run_merge, run_render, run_eval):  # finished stages are not redone
        assert stage(ws, config(), loader=town_block) == summaries[stage.__name__]


def test_image_space_blending_renders_every_block_alone_and_blends_the_images() -> None:
    blocks = [town_block("", b) for b in boxes()]
    settings = RenderSettings.from_config(config())
    c2w = views()[0]
    merged = render_view(CompositeField(blocks), CAMERA, c2w, settings)
    blended = render_view(CompositeField(blocks, "image_space"), CAMERA, c2w, settings, image_space=True)
    alone = [render_view(CompositeField([b]), CAMERA, c2w, settings)["rgb"] for b in blocks]
    assert blended["rgb"].shape == merged["rgb"].shape
    assert not np.allclose(blended["rgb"], alone[0]) and not np.allclose(blended["rgb"], alone[1])
    # each pixel is a convex blend of the blocks' renders
    lo, hi = np.minimum(alone[0], alone[1]), np.maximum(alone[0], alone[1])
    assert np.all(blended["rgb"] >= lo - 1e-5) and np.all(blended["rgb"] <= hi + 1e-5)


# bad input and the trainer's exported blocks


def test_missing_blocks_are_named_and_allow_missing_merges_the_others(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with pytest.raises(WorkspaceError) as err:
        run_merge(ws, config())  # the default loader: nothing trained yet
    assert "b000" in str(err.value) and "b001" in str(err.value) and "model.pt" in str(err.value)
    (Path(ws) / "blocks" / "b001" / "train_status.json").write_text(json.dumps({"state": "training"}))

    def only_b000(workspace: str, box: BlockBox) -> AnalyticBlock | None:
        return town_block(workspace, box) if box.id == "b000" else None

    with pytest.raises(WorkspaceError) as err:
        run_merge(ws, config(), loader=only_b000)
    assert "1 of 2 blocks" in str(err.value) and "b001: training not finished (state training)" in str(err.value)
    assert "merge.allow_missing=true" in str(err.value)
    summary = run_merge(ws, config("merge.allow_missing=true"), loader=only_b000)
    assert summary["blocks"] == ["b000"] and list(summary["absent"]) == ["b001"]


def test_bad_merge_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="merge.blend='average': expected one of partition_of_unity"):
        config("merge.blend=average")
    with pytest.raises(ConfigError, match="merge.chunk=1"):
        config("merge.chunk=1")


def test_voxel_size_over_the_budget_is_refused_with_the_estimate(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    with pytest.raises(ConfigError) as err:
        run_mesh(ws, config("merge.voxel_size=0.01", "merge.chunk=128"), loader=town_block)
    assert "merge.voxel_size=0.01" in str(err.value) and "grid nodes" in str(err.value)
    assert "merge.voxel_budget=2,000,000,000" in str(err.value)


def test_ground_truth_frames() -> None:
    world_from_input = make_similarity(0.1, np.eye(3), np.array([5.0, -3.0, 0.0]))
    bounds_input = (ROI - [5.0, -3.0, 0.0]) / 0.1  # the ROI as seen in the input frame
    transform, frame = gt_transform(bounds_input, ROI, world_from_input, "auto", "gt.ply")
    assert frame == "input" and np.allclose(transform, world_from_input)
    assert gt_transform(ROI, ROI, world_from_input, "auto", "gt.ply")[1] == "scene"
    with pytest.raises(InputError) as err:
        gt_transform(ROI * 1000 + 1e5, ROI, world_from_input, "auto", "gt.ply")
    assert "gt.ply" in str(err.value) and "units cannot be matched" in str(err.value)
    with pytest.raises(InputError):
        gt_transform(bounds_input, ROI, world_from_input, "scene", "gt.ply")


def test_ground_truth_in_the_input_frame_is_evaluated_through_the_normalisation(tmp_path: Path) -> None:
    world_from_input = make_similarity(0.5, np.eye(3), np.array([1.0, 2.0, 0.0]))
    ws = make_workspace(tmp_path, world_from_input)
    write_ground_truth(ws, np.linalg.inv(world_from_input))  # stored in the input frame
    cfg = config("merge.eval_views=0", "merge.voxel_size=1.0")
    run_mesh(ws, cfg, loader=town_block)
    geometry = run_eval(ws, cfg, loader=town_block)["geometry"]
    assert geometry["ground_truth_frame"] == "input" and geometry["fscore"] > 0.9
    assert geometry["chamfer_input_units"] == pytest.approx(geometry["chamfer"] * 2.0)


def test_block_geometry_scores_one_block_merged_alone_on_its_own_region(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    write_ground_truth(ws)

    def only_b000(workspace: str, box: BlockBox) -> AnalyticBlock | None:
        return town_block(workspace, box) if box.id == "b000" else None

    cfg = config("merge.allow_missing=true", "merge.eval_views=0", "merge.voxel_size=1.0")
    run_mesh(ws, cfg, loader=only_b000)
    whole = run_eval(ws, cfg, loader=only_b000)["geometry"]
    block = block_geometry(ws, cfg, "b000", loader=only_b000)
    assert block["region"] == boxes()[0].inner.tolist() and block["fscore"] > 0.9
    assert whole["region"] is None and whole["recall"] < 0.7  # b001's surface is missing from the whole scene
    with pytest.raises(WorkspaceError, match="no block 'b009'"):
        block_geometry(ws, cfg, "b009", loader=only_b000)


def test_exported_blocks_load_lazily_and_merge(tmp_path: Path) -> None:
    export = pytest.importorskip("bigscene.train.export")
    from bigscene.render import SparseVoxels
    from bigscene.train.model import BlockModel

    ws = make_workspace(tmp_path)
    model_cfg = ModelConfig(
        hash_levels=4,
        hash_table_log2=10,
        finest_resolution=64,
        hidden_dim=16,
        color_hidden_dim=16,
        appearance_dim=4,
        background_hidden_dim=16,
    )
    voxels = SparseVoxels(torch.zeros(3), 1.0, torch.zeros((1, 3), dtype=torch.long))
    for box in boxes():
        model = BlockModel(model_cfg, SamplerConfig(kind="importance"), box.inner, box.outer, 2, voxels)
        export.export_block(model, box.id, 2, 10, None, "test", model_path(ws, box.id))
    cfg = config("merge.device=cpu")
    summary = run_merge(ws, cfg)
    assert summary["blocks"] == ["b000", "b001"] and summary["kind"] == "neus"
    mesh = run_mesh(ws, config("merge.device=cpu", "merge.voxel_size=2.0", "merge.seeds=probe"))
    assert mesh["boundary_edges_inside_roi"] == 0 and mesh["nonmanifold_edges"] == 0
    field = load_inputs(ws, cfg).field  # trained fields, background fields and appearance codes render
    small = Camera.pinhole(6.0, 6.0, 4.0, 3.0, 8, 6)
    view = render_view(field, small, views()[0], RenderSettings(num_samples=16, num_importance=8))
    assert view["rgb"].shape == (6, 8, 3) and np.isfinite(view["rgb"]).all() and "normals" in view
    (Path(model_path(ws, "b001"))).write_bytes(b"not a model")
    with pytest.raises(InputError) as err:
        run_merge(ws, cfg)
    assert "b001" in str(err.value) and "model.pt" in str(err.value)

"""The composite field, out-of-core meshing and the geometry metrics, on analytic SDFs (the synthetic city).

Real Zarr stores; the inline engine, and one Ray run (2 CPUs) where the engine matters.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from bigscene.config import MergeConfig
from bigscene.engine import InlineEngine, RayEngine
from bigscene.errors import ConfigError
from bigscene.merge import (
    AnalyticBlock,
    BlockBox,
    CompositeField,
    MeshGrid,
    geometry_metrics,
    mesh_field,
    partition_of_unity,
)
from bigscene.merge import mesh as mesh_module
from bigscene.merge.blocks import CACHE, LazyBlock
from bigscene.merge.evaluate import crop_faces
from bigscene.merge.mesh import check_budget, chunk_surface, fingerprint, probe_seeds
from bigscene.merge.weights import falloff
from bigscene.synth import CitySDF, generate_layout, make_config

TESTS = Path(__file__).resolve().parent
VOXEL, CHUNK = 1.5, 9  # the tiny city (88 m x 88 m x 21 m) in 8 x 8 x 2 chunks


@cache
def city() -> CitySDF:
    return CitySDF(generate_layout(make_config("tiny")), "cpu")


def roi() -> np.ndarray:
    return city().layout.roi


def split_boxes(box: np.ndarray, overlap: float, axis: int = 0) -> list[BlockBox]:
    """Two blocks halving `box` along `axis`, their outer boxes grown by `overlap` (scene units) every way."""
    mid = box.mean(axis=0)[axis]
    lo, hi = box.copy(), box.copy()
    lo[1, axis], hi[0, axis] = mid, mid
    grow = np.array([[-overlap] * 3, [overlap] * 3])
    return [BlockBox("b000", lo, lo + grow), BlockBox("b001", hi, hi + grow)]


def quad_boxes(box: np.ndarray, overlap: float) -> list[BlockBox]:
    """2 x 2 blocks over box's ground plane."""
    boxes = []
    for half in split_boxes(box, overlap, axis=0):
        boxes += [BlockBox(f"{half.id}{q.id[-1]}", q.inner, q.outer) for q in split_boxes(half.inner, overlap, axis=1)]
    return boxes


def city_field(blend: str = "partition_of_unity") -> CompositeField:
    """Two blocks that both hold the exact city SDF."""
    colour = lambda x: torch.sigmoid(x / 10.0)  # noqa: E731 (a smooth colour of position)
    return CompositeField([AnalyticBlock(b, city(), colour) for b in split_boxes(roi(), 6.0)], blend)


def grid_points(grid: MeshGrid) -> torch.Tensor:
    axes = [grid.origin[a] + np.arange(grid.shape[a]) * grid.voxel for a in range(3)]
    return torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)).float()


def mesh_city(ws: str, engine: object, colour: bool = False) -> dict:
    field = city_field()
    grid = MeshGrid.over(roi(), VOXEL, CHUNK)
    return mesh_field(ws, field, grid, probe_seeds(field, grid), engine, fingerprint(grid, {"test": 1}), colour)


# composite


def test_two_blocks_holding_one_sdf_compose_to_it_exactly() -> None:
    field = city_field()
    rng = np.random.default_rng(0)
    box = roi()
    x = torch.from_numpy(box[0] + rng.random((20000, 3)) * (box[1] - box[0])).float()
    band = x.clone()
    band[:, 0] = torch.from_numpy(rng.uniform(-6.0, 6.0, len(x))).float()  # all in the overlap band
    for points in (x, band):
        assert torch.equal(field.sdf(points), city()(points))
        weights, covered = field.weights(points)
        assert bool(covered.all())
        assert float((weights.sum(dim=1) - 1).abs().max()) < 1e-6
    assert float(field.weights(band)[0].min(dim=1).values.max()) > 0.4  # both blocks really contribute there


def test_weights_sum_to_one_over_the_roi_for_a_2x2_layout() -> None:
    boxes = quad_boxes(roi(), 4.0)
    inner = torch.tensor(np.stack([b.inner for b in boxes])).float()
    outer = torch.tensor(np.stack([b.outer for b in boxes])).float()
    box = roi()
    axes = [torch.linspace(float(box[0, a]), float(box[1, a]), n) for a, n in zip(range(3), (97, 97, 9), strict=True)]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    weights, covered = partition_of_unity(x, inner, outer)
    assert bool(covered.all())
    assert float((weights.sum(dim=1) - 1).abs().max()) < 1e-6
    raw = falloff(x, inner, outer)
    in_inner = ((x[:, None] >= inner[None, :, 0]) & (x[:, None] <= inner[None, :, 1])).all(-1)
    assert bool((raw[in_inner] == 1).all())  # 1 in the inner box ...
    on_outer = torch.tensor([[boxes[0].outer[1, 0], 0.0, 5.0]]).float()
    assert float(falloff(on_outer, inner[:1], outer[:1])) == 0.0  # ... 0 at the outer box


def test_partition_of_unity_blends_continuously_where_inverse_distance_jumps() -> None:
    boxes = split_boxes(roi(), 6.0)
    colours = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    line = torch.stack([torch.linspace(-10, 10, 4001), torch.zeros(4001), torch.full((4001,), 5.0)], -1)
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(len(line), 3)
    steps = {}
    for blend in ("partition_of_unity", "inverse_distance"):
        blocks = [
            AnalyticBlock(b, lambda x, k=k: x[:, 2] - 2.0 - k, lambda x, c=c: torch.tensor(c).expand(len(x), 3))
            for k, (b, c) in enumerate(zip(boxes, colours, strict=True))
        ]
        out = CompositeField(blocks, blend).evaluate(line, dirs)
        steps[blend] = (float(out.value.diff().abs().max()), float(out.rgb.diff(dim=0).abs().max()))
    assert steps["partition_of_unity"][0] < 0.01 and steps["partition_of_unity"][1] < 0.01
    assert steps["inverse_distance"][0] > 0.3 and steps["inverse_distance"][1] > 0.3


# meshing


def test_chunked_mesh_equals_one_dense_marching_cubes(tmp_path: Path) -> None:
    summary = mesh_city(str(tmp_path), InlineEngine(0), colour=True)
    grid = MeshGrid.over(roi(), VOXEL, CHUNK)
    values = city()(grid_points(grid)).numpy().reshape(grid.shape)
    verts, faces, _, _ = marching_cubes(values, 0.0, gradient_direction="descent")
    dense = grid.world(verts)
    mesh = trimesh.load(summary["mesh"], process=False)
    assert summary["chunks"]["meshed"] > 8 and summary["chunks"]["with_surface"] > 8  # many tiles, many seams
    assert len(mesh.vertices) == len(dense) and len(mesh.faces) == len(faces)
    assert cKDTree(dense).query(mesh.vertices)[0].max() < 1e-4
    assert cKDTree(mesh.vertices).query(dense)[0].max() < 1e-4
    assert len(np.unique(np.round(mesh.vertices, 3), axis=0)) == len(mesh.vertices)  # welded: no duplicates
    assert summary["boundary_edges_inside_roi"] == 0 and summary["nonmanifold_edges"] == 0
    assert summary["boundary_edges"] > 0  # the ground is cut by the ROI
    edges = mesh.edges_sorted
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert int((uses == 1).sum()) == summary["boundary_edges"]  # the streamed count agrees with the mesh
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    stored = mesh_module.merge_store.sdf_array(str(tmp_path))[...]
    evaluated = np.isfinite(stored)
    assert evaluated.any() and np.allclose(stored[evaluated], values[evaluated])


def test_sphere_mesh_is_closed_and_faces_outward(tmp_path: Path) -> None:
    box = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = CompositeField([AnalyticBlock(b, lambda x: x.norm(dim=-1) - 0.6) for b in split_boxes(box, 0.3)])
    grid = MeshGrid.over(box, 0.05, 12)
    summary = mesh_field(str(tmp_path), field, grid, probe_seeds(field, grid), InlineEngine(0), "s", colour=False)
    mesh = trimesh.load(summary["mesh"], process=False)
    assert summary["boundary_edges"] == 0 and summary["nonmanifold_edges"] == 0
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.02)  # positive: outward


def test_uncovered_cubes_are_not_marched() -> None:
    x = np.stack(np.meshgrid(*[np.linspace(-1, 1, 21)] * 3, indexing="ij"), -1)
    values = (np.linalg.norm(x, axis=-1) - 0.6).astype(np.float32)
    covered = x[..., 0] <= 0.0  # the x > 0 half is outside every block
    surface = chunk_surface(values, covered)
    assert len(surface.faces) and surface.verts[:, 0].max() <= 10.0  # index 10 is x = 0
    full = chunk_surface(values, np.ones_like(covered))
    assert len(full.faces) > 1.8 * len(surface.faces)


def test_chunk_loop_holds_a_bounded_number_of_chunks(tmp_path: Path) -> None:
    mesh_module.GAUGE.peak = 0
    engine = InlineEngine(0)
    summary = mesh_city(str(tmp_path / "inline"), engine)
    assert mesh_module.GAUGE.peak == 1 and engine.peak_in_flight == 1  # one chunk volume at a time
    assert summary["peak_chunks_in_process"] == 1
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        ray_engine = RayEngine(None, 2, 1, max_in_flight=3)
        ray_summary = mesh_city(str(tmp_path / "ray"), ray_engine)
    finally:
        if started:
            ray.shutdown()
    assert 1 <= ray_engine.peak_in_flight <= 3  # never more than max_in_flight chunks submitted
    assert mesh_module.GAUGE.peak == 1  # the driver itself never held a chunk
    for key in ("vertices", "faces", "boundary_edges", "nonmanifold_edges"):
        assert ray_summary[key] == summary[key]


def test_killed_meshing_redoes_only_the_missing_chunks(tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    script = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_merge as t; "
        "from bigscene.engine import InlineEngine; t.mesh_city(sys.argv[1], InlineEngine(0))"
    )
    driver = subprocess.Popen([sys.executable, "-c", script, ws], env={**os.environ, "OMP_NUM_THREADS": "1"})
    markers = Path(ws) / "merge" / "mesh" / "chunks"
    deadline = time.monotonic() + 90
    while driver.poll() is None and time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 6:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = len(list(markers.glob("*.json")))
    assert finished >= 6 and not (Path(ws) / "merge" / "mesh" / "mesh.ply").exists()
    rerun = mesh_city(ws, InlineEngine(0))
    assert rerun["chunks"]["reused"] == finished
    assert rerun["chunks"]["computed"] == rerun["chunks"]["meshed"] - finished
    clean = mesh_city(str(tmp_path / "clean"), InlineEngine(0))
    for key in ("vertices", "faces", "boundary_edges"):
        assert rerun[key] == clean[key]


def test_voxel_budget_error_gives_the_estimate() -> None:
    grid = MeshGrid.over(roi(), 0.01, 128)
    seeds = set(grid.all_chunks()[:1000])
    estimate = sum(int(np.prod(grid.size(c))) for c in seeds)
    with pytest.raises(ConfigError) as err:
        check_budget(grid, seeds, MergeConfig().voxel_budget)
    assert "merge.voxel_size=0.01" in str(err.value) and f"about {estimate:,} grid nodes" in str(err.value)
    assert check_budget(grid, set(list(seeds)[:10]), MergeConfig().voxel_budget) <= 10 * 128**3


# geometry metrics


def plane(size: float = 10.0, n: int = 21, z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    u = np.linspace(0, size, n)
    gx, gy = np.meshgrid(u, u, indexing="ij")
    vertices = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], -1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return vertices, np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)])


def test_chamfer_and_fscore_of_a_mesh_against_itself_and_a_shifted_copy() -> None:
    vertices, faces = plane()
    same = geometry_metrics([(vertices, faces)], [(vertices, faces)], threshold=0.05, max_distance=0.5, spacing=0.1)
    assert same["chamfer"] == 0.0 and same["fscore"] == 1.0 and same["points"]["pred"] > 5000
    d = 0.2
    shifted = vertices + [0.0, 0.0, d]
    far = geometry_metrics(
        [(shifted, faces)], [(vertices, faces)], threshold=0.05, max_distance=0.5, spacing=0.1, tile=2.5
    )  # 16 tiles
    assert far["chamfer"] == pytest.approx(d, abs=1e-9) and far["fscore"] == 0.0
    near = geometry_metrics([(shifted, faces)], [(vertices, faces)], threshold=0.3, max_distance=0.5, spacing=0.1)
    assert near["fscore"] == 1.0


def test_cropping_both_meshes_to_a_box_scores_that_region_alone() -> None:
    vertices, faces = plane()
    half = np.array([[0.0, 0.0, -1.0], [5.0, 10.0, 1.0]])
    [(_, kept)] = crop_faces([(vertices, faces)], half)
    assert len(kept) == len(faces) // 2 and (vertices[kept].mean(axis=1)[:, 0] < 5.0).all()
    whole = geometry_metrics([(vertices, kept)], [(vertices, faces)], threshold=0.05, max_distance=0.5, spacing=0.1)
    region = geometry_metrics(
        crop_faces([(vertices, kept)], half),
        crop_faces([(vertices, faces)], half),
        threshold=0.05,
        max_distance=0.5,
        spacing=0.1,
    )
    assert whole["recall"] < 0.6 and region["fscore"] == 1.0


# lazy blocks

LOADS: list[str] = []


def height(x: torch.Tensor) -> torch.Tensor:
    return x[:, 2]


@dataclass(frozen=True)
class CountingLoader:
    """Loads an analytic block and records that it did (picklable, as Ray tasks need)."""

    box: BlockBox

    def __call__(self, device: torch.device) -> AnalyticBlock:
        LOADS.append(self.box.id)
        return AnalyticBlock(self.box, height, device=device)


def test_lazy_blocks_load_once_per_process_within_a_bound_and_pickle_without_weights() -> None:
    CACHE.clear()
    LOADS.clear()
    boxes = split_boxes(roi(), 6.0)
    lazy = [LazyBlock(b, CountingLoader(b), key=b.id, kind="neus", device_name="cpu", max_loaded=1) for b in boxes]
    field = CompositeField(lazy)
    assert field.kind == "neus" and LOADS == []  # nothing loads until used
    x = torch.tensor([[-30.0, 0.0, 3.0], [30.0, 0.0, 3.0]])
    assert torch.equal(field.sdf(x), x[:, 2])
    assert LOADS == ["b000", "b001"] and len(CACHE) == 1  # at most max_loaded blocks held: b000 was unloaded
    field.sdf(x[:1])
    field.sdf(x[:1])
    assert LOADS == ["b000", "b001", "b000"]  # reloaded after eviction, then cached
    restored = pickle.loads(pickle.dumps(lazy[0]))  # what a Ray task receives: the recipe, not the weights
    assert torch.equal(restored.geometry(x[:1]), x[:1, 2]) and LOADS == ["b000", "b001", "b000"]
    wrong = LazyBlock(boxes[0], CountingLoader(boxes[0]), key="other", kind="nerf", device_name="cpu")
    with pytest.raises(ConfigError, match="holds a neus model but model.kind=nerf"):
        wrong.get()
    CACHE.clear()

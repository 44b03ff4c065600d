"""Merging on the `small` synthetic city, with analytic blocks (the exact city SDF; trained blocks are not needed
to measure the merger): out-of-core meshing throughput and peak memory as the grid grows 8x, composite render
throughput against one block alone, and partition-of-unity against inverse-distance blending of 2 x 2 blocks
whose SDFs are perturbed per block (as independently trained blocks disagree), scored against the exact mesh.

Every meshing run is a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time

import numpy as np
import torch

from benchmarks.table import BenchRow, print_table
from bigscene.engine import InlineEngine
from bigscene.merge import AnalyticBlock, BlockBox, CompositeField, MeshGrid, RenderSettings, mesh_field, render_rays
from bigscene.merge.evaluate import geometry_metrics, seam_band_labeller, seam_disagreement, seam_jump
from bigscene.merge.mesh import mesh_pieces, probe_seeds
from bigscene.merge.views import camera_path
from bigscene.scene import generate_rays
from bigscene.synth import CitySDF, generate_layout, make_config

PRESET = "small"
CHUNK = 33
SCALE_VOXELS = (1.0, 0.5)  # 8x the grid nodes
BLEND_VOXEL = 0.5
BLEND_SIDE = 40.0  # metres: blends are compared on a square around the junction of the 4 blocks
OVERLAP = 4.0  # metres each block's outer box grows past its inner box


def city() -> CitySDF:
    return CitySDF(generate_layout(make_config(PRESET)), "cpu")


def quad_boxes(roi: np.ndarray, overlap: float) -> list[BlockBox]:
    """2 x 2 blocks over the ROI's ground plane."""
    mid = roi.mean(axis=0)
    boxes = []
    for j in range(2):
        for i in range(2):
            inner = roi.copy()
            inner[1 - i, 0], inner[1 - j, 1] = mid[0], mid[1]
            grow = np.array([[-overlap] * 3, [overlap] * 3])
            boxes.append(BlockBox(f"b{2 * j + i:03d}", inner, inner + grow))
    return boxes


def perturbed(sdf: CitySDF, index: int):  # noqa: ANN201 (an SDF callable)
    """The city SDF with a smooth per-block error: a bias and a slow wave (up to ~0.35 m)."""
    bias = (0.2, -0.2, 0.1, -0.1)[index]

    def fn(x: torch.Tensor) -> torch.Tensor:
        wave = 0.15 * torch.sin(x[:, 0] / 7.0 + index) * torch.cos(x[:, 1] / 5.0 + 2 * index)
        return sdf(x) + bias + wave

    return fn


def _mesh_in_process(voxel: float, queue: multiprocessing.Queue) -> None:
    sdf = city()
    roi = sdf.layout.roi
    field = CompositeField([AnalyticBlock(b, sdf) for b in quad_boxes(roi, OVERLAP)])
    grid = MeshGrid.over(roi, voxel, CHUNK)
    with tempfile.TemporaryDirectory() as ws:
        summary = mesh_field(ws, field, grid, probe_seeds(field, grid), InlineEngine(0), "bench", colour=False)
    queue.put(
        (
            summary["voxels_per_second"],
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            summary["nodes_evaluated"],
        )
    )


def mesh_scaling() -> list[BenchRow]:
    context = multiprocessing.get_context("spawn")
    results = []
    for voxel in SCALE_VOXELS:
        queue = context.Queue()
        process = context.Process(target=_mesh_in_process, args=(voxel, queue))
        process.start()
        results.append(queue.get())
        process.join()
    (rate0, rss0, nodes0), (rate1, rss1, nodes1) = results
    grown = f"{nodes1 / nodes0:.1f}x nodes"
    return [
        BenchRow(
            f"mesh voxels/s, small city, voxel {SCALE_VOXELS[1]} ({grown})",
            rate1,
            f"voxel {SCALE_VOXELS[0]}",
            rate0,
            "voxels/s",
        ),
        BenchRow(
            f"mesh peak RSS, voxel {SCALE_VOXELS[1]} ({grown})",
            rss1,
            f"voxel {SCALE_VOXELS[0]}",
            rss0,
            "MiB",
            higher_is_better=False,
        ),
    ]


def render_rate() -> list[BenchRow]:
    sdf = city()
    roi = sdf.layout.roi
    colour = lambda x: torch.sigmoid(x / 10.0)  # noqa: E731
    composite = CompositeField([AnalyticBlock(b, sdf, colour) for b in quad_boxes(roi, OVERLAP)])
    single = CompositeField([AnalyticBlock(BlockBox("all", roi, roi + [[-1.0] * 3, [1.0] * 3]), sdf, colour)])
    view = camera_path(roi, "orbit", 8, 24, 18)[1]
    origins, dirs = generate_rays(view.camera, torch.from_numpy(view.c2w), view.camera.pixel_grid())
    settings = RenderSettings()
    rates = []
    for field in (composite, single):
        started = time.perf_counter()
        render_rays(field, origins, dirs, settings)
        rates.append(len(origins) / (time.perf_counter() - started))
    return [BenchRow("render rays/s, composite of 2x2 analytic blocks", rates[0], "one block", rates[1], "rays/s")]


def blending() -> list[BenchRow]:
    sdf = city()
    roi = sdf.layout.roi
    boxes = quad_boxes(roi, OVERLAP)
    centre = roi.mean(axis=0)
    window = roi.copy()
    window[:, :2] = [centre[:2] - BLEND_SIDE / 2, centre[:2] + BLEND_SIDE / 2]
    grid = MeshGrid.over(window, BLEND_VOXEL, CHUNK)
    exact = CompositeField([AnalyticBlock(b, sdf) for b in boxes])
    fields = {
        blend: CompositeField([AnalyticBlock(b, perturbed(sdf, i)) for i, b in enumerate(boxes)], blend)
        for blend in ("partition_of_unity", "inverse_distance")
    }
    threshold = BLEND_VOXEL / 2
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, field in {"exact": exact, **fields}.items():
            mesh_field(f"{tmp}/{name}", field, grid, probe_seeds(exact, grid), InlineEngine(0), name, colour=False)
        gt = list(mesh_pieces(f"{tmp}/exact", grid))
        for blend, field in fields.items():
            geometry = geometry_metrics(
                mesh_pieces(f"{tmp}/{blend}", grid),
                gt,
                threshold,
                10 * threshold,
                threshold / 5,
                seam_band_labeller(field),
            )
            scores[blend] = {
                "jump": 1000 * seam_jump(field, 2000, 2 * BLEND_VOXEL, 0.01 * BLEND_VOXEL)["mean"],
                "band": 1000 * geometry["accuracy_by_label"][1],
                "fscore": 100 * geometry["fscore"],
                "disagreement": 1000 * seam_disagreement(field, 4000, 2 * BLEND_VOXEL)["mean"],
            }
    pou, idw = scores["partition_of_unity"], scores["inverse_distance"]
    label = "perturbed analytic blocks"
    return [
        BenchRow(
            f"seam jump of the composite SDF, PoU ({label})",
            pou["jump"],
            "inverse distance",
            idw["jump"],
            "mm",
            higher_is_better=False,
        ),
        BenchRow(
            f"seam-band accuracy, PoU ({label})",
            pou["band"],
            "inverse distance",
            idw["band"],
            "mm",
            higher_is_better=False,
        ),
        BenchRow(f"F-score at {threshold:g} m, PoU ({label})", pou["fscore"], "inverse distance", idw["fscore"], "%"),
        BenchRow(
            f"block disagreement |SDF_a - SDF_b| ({label})",
            pou["disagreement"],
            "same blocks",
            idw["disagreement"],
            "mm",
            higher_is_better=False,
        ),
    ]


def run() -> list[BenchRow]:
    return mesh_scaling() + render_rate() + blending()


if __name__ == "__main__":
    print_table("merging (CPU)", run())

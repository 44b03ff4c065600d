"""Ground truth for a synthetic workspace: a closed mesh of the surface inside the ROI, and the true SDF.

The mesh is marching cubes (scikit-image) of max(city SDF, ROI box SDF), so the city is cut by the ROI box
and closed by it: watertight. The volume is done in blocks of `block` nodes a side; a block is skipped
without evaluating it when the SDF at its centre shows no surface can reach it, so memory is bounded by the
block, not the city, and work follows the surface area.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from bigscene.errors import WorkspaceError
from bigscene.store.workspace import read_json
from bigscene.synth.layout import generate_layout
from bigscene.synth.presets import config_from_identity
from bigscene.synth.sdf import CitySDF

_PHASE = 0.37  # grid nodes sit this fraction of a voxel off the ROI faces, so no face lies on a node
_SNAP = float(1 << 20)  # vertex positions (in voxels) are snapped to this grid to weld block seams


def box_sdf(points: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """Exact SDF (N,) of the axis-aligned box [lo, hi] at points (N, 3)."""
    centre = torch.tensor((lo + hi) / 2, dtype=points.dtype, device=points.device)
    half = torch.tensor((hi - lo) / 2, dtype=points.dtype, device=points.device)
    q = (points - centre).abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def mesh_grid(roi: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node origin (3,), node counts (3,) and the closing box (2, 3): inside the ROI, its faces mid-cell."""
    roi = np.asarray(roi, dtype=np.float64)
    origin = roi[0] - (1.0 + _PHASE) * voxel
    last = np.floor((roi[1] - origin) / voxel - _PHASE).astype(np.int64)  # highest node inside the box
    box = np.stack([roi[0], origin + (last + _PHASE) * voxel])
    return origin, last + 2, box


def extract_mesh(
    city: CitySDF, roi: np.ndarray, voxel: float, block: int = 64, chunk: int = 1 << 18
) -> trimesh.Trimesh:
    """Watertight mesh of the city surface cut and closed by the ROI box, at `voxel` resolution."""
    origin, shape, box = mesh_grid(roi, voxel)
    dev = city.device
    step = block - 1  # blocks share their boundary nodes

    def closed(points: torch.Tensor) -> torch.Tensor:
        return torch.maximum(city.sdf(points), box_sdf(points, box[0], box[1]))

    vertices, faces, count = [], [], 0
    for i0 in range(0, shape[0] - 1, step):
        for j0 in range(0, shape[1] - 1, step):
            for k0 in range(0, shape[2] - 1, step):
                start = np.array([i0, j0, k0])
                size = np.minimum(block, shape - start)
                centre = torch.tensor(origin + (start + (size - 1) / 2) * voxel, dtype=torch.float32, device=dev)
                reach = float(np.linalg.norm((size - 1) / 2) * voxel) + voxel
                if abs(float(closed(centre[None])[0])) > reach:
                    continue
                axes = [torch.arange(n, device=dev, dtype=torch.float64) for n in size]
                grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
                nodes = (torch.from_numpy(origin).to(dev) + (grid + torch.from_numpy(start).to(dev)) * voxel).float()
                values = torch.cat([closed(nodes[s : s + chunk]) for s in range(0, len(nodes), chunk)])
                volume = values.reshape(*size.tolist()).cpu().numpy()
                if volume.min() >= 0 or volume.max() <= 0:
                    continue
                verts, tris, _, _ = marching_cubes(volume, level=0.0)
                vertices.append(verts.astype(np.float64) + start)
                faces.append(tris + count)
                count += len(verts)
    if not vertices:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    verts = np.concatenate(vertices)
    keys = np.round(verts * _SNAP).astype(np.int64)
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    tris = inverse.reshape(-1)[np.concatenate(faces)]
    tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]
    world = origin + verts[first] * voxel
    return trimesh.Trimesh(world, tris, process=False)


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Binary PLY, written aside and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        mesh.export(staging, file_type="ply")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def load_ground_truth(workspace: str | os.PathLike, device: str | torch.device = "cpu") -> CitySDF:
    """The true SDF of a generated workspace, rebuilt from the config kept in its synth.json: call it on
    points (N, 3) (tensor or array) for signed distances (N,)."""
    summary = read_json(str(Path(workspace) / "synth.json"))
    if summary is None or "fingerprint" not in summary:
        raise WorkspaceError(f"{workspace}: no synth.json here; run `bigscene synth` first")
    return CitySDF(generate_layout(config_from_identity(summary["fingerprint"])), device)

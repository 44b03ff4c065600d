"""Honest evaluation of the merged scene: image metrics, geometry against ground truth, and seams.

- Images: PSNR and SSIM of test views rendered through the composite, and of each block rendered alone on
  the pixels whose surface lies in its inner box (with the composite's figures on the same pixels).
- Geometry (Tanks and Temples / Heritage-Recon style): both meshes are sampled at a fixed spacing; accuracy
  is the distance of predicted samples to the ground truth, completeness the reverse; precision and recall
  are the fractions within the threshold, F-score their harmonic mean, Chamfer the mean of the two mean
  distances. Distances are truncated at `max_distance`, which lets the work go tile by tile over the
  ground plane (each tile sees its 3 x 3 neighbourhood), so memory follows a tile, not the meshes.
- Seams: the mean |SDF_a - SDF_b| of neighbouring blocks near the surface in their overlap (how much the
  blocks disagree), the composite's jump where a block starts or stops contributing (zero for a continuous
  blend), and the accuracy of predicted samples in seam bands (two blocks or more) against block interiors.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity

from bigscene.errors import InputError
from bigscene.merge.composite import CompositeField
from bigscene.merge.render import RenderSettings, render_view
from bigscene.merge.views import View
from bigscene.scene import generate_rays
from bigscene.scene.geometry import apply_similarity, similarity_scale
from bigscene.scene.images import load_image
from bigscene.store.merge_store import PointBuckets

# --- images -----------------------------------------------------------------------------------------------


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of images (H, W, 3) in [0, 1], over the pixels of mask (H, W) when given."""
    err = ((pred - target) ** 2).mean(axis=-1)
    mse = float(err[mask].mean() if mask is not None else err.mean())
    return float(-10.0 * math.log10(max(mse, 1e-10)))


def ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM (Gaussian window, sigma 1.5, as NeRF papers report) of images (H, W, 3) in [0, 1], its map
    averaged over mask (H, W) when given."""
    _, full = structural_similarity(
        pred,
        target,
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    per_pixel = full.mean(axis=-1)
    return float(per_pixel[mask].mean() if mask is not None else per_pixel.mean())


def load_target(view: View) -> np.ndarray:
    """The view's photo (H, W, 3) float in [0, 1], resized to its (possibly scaled) camera."""
    pixels = load_image(view.image)
    if pixels.shape[:2] != (view.camera.height, view.camera.width):
        pixels = np.asarray(Image.fromarray(pixels).resize((view.camera.width, view.camera.height), Image.BOX))
    return pixels.astype(np.float32) / 255.0


def view_metrics(
    field_: CompositeField, views: list[View], settings: RenderSettings, image_space: bool = False, min_pixels: int = 16
) -> dict[str, Any]:
    """PSNR / SSIM of the composite on every view, and of each block alone on its own pixels."""
    per_view = []
    blocks: dict[str, list[dict[str, float]]] = {i: [] for i in field_.ids}
    for view in views:
        target = load_target(view)
        merged = render_view(field_, view.camera, view.c2w, settings, image_space)
        per_view.append({"view": view.name, "psnr": psnr(merged["rgb"], target), "ssim": ssim(merged["rgb"], target)})
        owner = surface_owner(field_, view, merged)  # (H, W) index of the block whose inner box holds the surface
        for b, block_id in enumerate(field_.ids):
            mask = owner == b
            if mask.sum() < min_pixels:
                continue
            alone = render_view(field_.only(b), view.camera, view.c2w, settings)
            blocks[block_id].append(
                {
                    "psnr": psnr(alone["rgb"], target, mask),
                    "ssim": ssim(alone["rgb"], target, mask),
                    "composite_psnr": psnr(merged["rgb"], target, mask),
                    "composite_ssim": ssim(merged["rgb"], target, mask),
                    "pixels": int(mask.sum()),
                }
            )
    mean = {k: float(np.mean([v[k] for v in per_view])) for k in ("psnr", "ssim")} if per_view else {}
    return {
        "views": len(views),
        "composite": {**mean, "per_view": per_view},
        "blocks_alone": {
            block_id: {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "pixels"}
            | {"views": len(rows), "pixels": int(sum(r["pixels"] for r in rows))}
            for block_id, rows in blocks.items()
            if rows
        },
    }


def surface_owner(field_: CompositeField, view: View, rendered: dict[str, np.ndarray]) -> np.ndarray:
    """(H, W) index of the block whose inner box holds each opaque pixel's surface point, -1 elsewhere."""
    origins, dirs = generate_rays(view.camera, torch.as_tensor(view.c2w, dtype=torch.float64), view.camera.pixel_grid())
    depth = torch.from_numpy(rendered["depth"].reshape(-1))
    points = origins + dirs * depth[:, None]  # (P, 3)
    inner = field_.inner
    inside = ((points[:, None] >= inner[None, :, 0]) & (points[:, None] <= inner[None, :, 1])).all(dim=-1)  # (P, B)
    owner = torch.where(inside.any(dim=1), inside.float().argmax(dim=1), torch.full_like(depth, -1, dtype=torch.long))
    owner[torch.from_numpy(rendered["opacity"].reshape(-1)) < 0.5] = -1
    return owner.reshape(view.camera.height, view.camera.width).numpy()


# --- geometry ---------------------------------------------------------------------------------------------

#: (vertices (V, 3) float64, faces (F, 3) int) of one piece of a mesh, in the scene frame.
MeshPiece = tuple[np.ndarray, np.ndarray]


def sample_surface(vertices: np.ndarray, faces: np.ndarray, spacing: float, seed: int) -> np.ndarray:
    """Points (P, 3) uniform on the triangles at about one per spacing^2 of area; the same mesh and seed give the
    same points (a mesh against itself is at distance 0)."""
    if not len(faces):
        return np.zeros((0, 3))
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    rng = np.random.default_rng(seed)
    counts = np.floor(area / spacing**2 + rng.random(len(area))).astype(np.int64)
    face = np.repeat(np.arange(len(faces)), counts)
    u, v = rng.random(len(face)), rng.random(len(face))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[face] + u[:, None] * (b[face] - a[face]) + v[:, None] * (c[face] - a[face])


def split_faces(vertices: np.ndarray, faces: np.ndarray, size: int = 1 << 20) -> Iterator[MeshPiece]:
    """A mesh as pieces of at most `size` faces (each piece sampled on its own)."""
    for s in range(0, max(len(faces), 1), size):
        yield vertices, faces[s : s + size]


def crop_faces(pieces: Iterable[MeshPiece], box: np.ndarray) -> Iterator[MeshPiece]:
    """The faces of mesh pieces whose centroid lies in box (2, 3): to score one region (a block trained alone)
    against the ground truth of that region only."""
    for vertices, faces in pieces:
        centroids = vertices[faces].mean(axis=1)  # (F, 3)
        yield vertices, faces[np.all((centroids >= box[0]) & (centroids <= box[1]), axis=1)]


@dataclass
class _Sums:
    count: int = 0
    total: float = 0.0
    within: int = 0
    by_label: dict[int, list[float]] = field(default_factory=dict)  # label -> [count, total distance]

    def add(self, distance: np.ndarray, threshold: float, labels: np.ndarray | None = None) -> None:
        self.count += len(distance)
        self.total += float(distance.sum())
        self.within += int((distance < threshold).sum())
        if labels is not None:
            for label in np.unique(labels):
                sums = self.by_label.setdefault(int(label), [0, 0.0])
                sums[0] += int((labels == label).sum())
                sums[1] += float(distance[labels == label].sum())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


def geometry_metrics(
    pred: Iterable[MeshPiece],
    gt: Iterable[MeshPiece],
    threshold: float,
    max_distance: float,
    spacing: float,
    labeller: Callable[[np.ndarray], np.ndarray] | None = None,
    tile: float | None = None,
    scratch: str | None = None,
) -> dict[str, Any]:
    """Chamfer, accuracy, completeness, precision, recall and F-score at `threshold` (scene units) of mesh pieces
    `pred` against `gt`, tile by tile on the ground plane (`tile`: side, at least max_distance; by default about
    256 x 256 samples). `labeller` maps predicted points (P, 3) to integer labels (P,) whose mean accuracies are
    reported apart (seam bands). `scratch`: where the bucketed samples spill (a temporary directory)."""
    tile = max(max_distance, tile or 256 * spacing)
    with tempfile.TemporaryDirectory(prefix="bigscene-eval-", dir=scratch) as tmp:
        sets = {}
        for name, pieces in (("pred", pred), ("gt", gt)):
            buckets = PointBuckets(tmp, name)
            for i, (vertices, faces) in enumerate(pieces):
                points = sample_surface(vertices, faces, spacing, seed=i)  # same mesh, same samples
                label = labeller(points) if (labeller is not None and name == "pred") else np.zeros(len(points))
                buckets.add(np.floor(points[:, :2] / tile).astype(np.int64), np.column_stack([points, label]))
            buckets.flush()
            sets[name] = buckets
        accuracy, completeness = _Sums(), _Sums()
        for key in sorted(set(sets["pred"].keys()) | set(sets["gt"].keys())):
            for source, target, sums in (("pred", "gt", accuracy), ("gt", "pred", completeness)):
                own = sets[source].read(key, 4)
                if not len(own):
                    continue
                around = np.concatenate(
                    [sets[target].read((key[0] + dx, key[1] + dy), 4) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
                )
                if len(around):
                    distance, _ = cKDTree(around[:, :3]).query(own[:, :3], distance_upper_bound=max_distance)
                    distance = np.minimum(distance, max_distance)
                else:
                    distance = np.full(len(own), max_distance)
                sums.add(distance, threshold, own[:, 3].astype(int) if source == "pred" else None)
    precision = accuracy.within / accuracy.count if accuracy.count else 0.0
    recall = completeness.within / completeness.count if completeness.count else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "threshold": threshold,
        "max_distance": max_distance,
        "spacing": spacing,
        "chamfer": (accuracy.mean + completeness.mean) / 2,
        "accuracy": accuracy.mean,
        "completeness": completeness.mean,
        "precision": precision,
        "recall": recall,
        "fscore": fscore,
        "points": {"pred": accuracy.count, "gt": completeness.count},
        "accuracy_by_label": {label: total / count for label, (count, total) in sorted(accuracy.by_label.items())},
    }


def gt_transform(
    bounds: np.ndarray, roi: np.ndarray, world_from_input: np.ndarray, frame: str, source: str
) -> tuple[np.ndarray, str]:
    """The (4, 4) map of a ground-truth mesh with bounds (2, 3) into the scene frame, and the frame it was in.

    `scene`: as it is; `input`: through the stored normalisation; `auto`: whichever puts it over the ROI.
    InputError when the chosen (or neither) frame puts it over the ROI: its units cannot be matched.
    """
    candidates = {"scene": np.eye(4), "input": np.asarray(world_from_input, dtype=np.float64)}
    overlap = {name: box_iou(_mapped_bounds(bounds, t), roi) for name, t in candidates.items()}
    chosen = max(overlap, key=overlap.get) if frame == "auto" else frame  # type: ignore[arg-type]
    if overlap[chosen] < 0.05:
        scale = similarity_scale(candidates["input"])
        tried = f"in the {frame} frame" if frame != "auto" else "in the scene frame nor through the normalisation"
        raise InputError(
            source,
            f"its bounds {np.round(bounds, 3).tolist()} do not overlap the ROI {np.round(roi, 3).tolist()} {tried} "
            f"(scale {scale:g}): the units cannot be matched; give a ground truth in the scene or the input frame "
            "(merge.gt_frame)",
        )
    return candidates[chosen], chosen


def _mapped_bounds(bounds: np.ndarray, transform: np.ndarray) -> np.ndarray:
    corners = np.array([[bounds[i, 0], bounds[j, 1], bounds[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    mapped = apply_similarity(transform, corners)
    return np.stack([mapped.min(axis=0), mapped.max(axis=0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of boxes (2, 3); flat boxes are thickened so a plane still overlaps."""
    pad = 1e-6 * max(float(np.ptp(np.concatenate([a, b]), axis=0).max()), 1e-12)
    a, b = a + [[-pad] * 3, [pad] * 3], b + [[-pad] * 3, [pad] * 3]
    inter = np.prod(np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None))
    union = np.prod(a[1] - a[0]) + np.prod(b[1] - b[0]) - inter
    return float(inter / union) if union > 0 else 0.0


# --- seams ------------------------------------------------------------------------------------------------


def neighbour_pairs(field_: CompositeField) -> list[tuple[int, int]]:
    """Pairs of blocks whose outer boxes overlap."""
    outer = field_.outer.numpy()
    return [
        (a, b)
        for a in range(len(outer))
        for b in range(a + 1, len(outer))
        if np.all(np.minimum(outer[a, 1], outer[b, 1]) > np.maximum(outer[a, 0], outer[b, 0]))
    ]


def seam_disagreement(field_: CompositeField, samples: int, near: float, seed: int = 0) -> dict[str, Any]:
    """Mean |SDF_a - SDF_b| (NeuS; |log(1 + density)| differences for NeRF) of neighbouring blocks at points of
    their overlap within `near` of the surface (both blocks' |SDF| < near; NeRF: all points)."""
    rng = np.random.default_rng(seed)
    outer = field_.outer.numpy()
    pairs, total, count = {}, 0.0, 0
    for a, b in neighbour_pairs(field_):
        lo, hi = np.maximum(outer[a, 0], outer[b, 0]), np.minimum(outer[a, 1], outer[b, 1])
        points = torch.from_numpy(lo + rng.random((samples, 3)) * (hi - lo)).float()
        fa, fb = (_geometry(field_, i, points) for i in (a, b))
        keep = (fa.abs() < near) & (fb.abs() < near) if field_.kind == "neus" else torch.ones_like(fa, dtype=bool)
        diff = (fa - fb)[keep].abs()
        pairs[f"{field_.ids[a]}|{field_.ids[b]}"] = {
            "mean": float(diff.mean()) if len(diff) else None,
            "points": int(keep.sum()),
        }
        total += float(diff.sum())
        count += len(diff)
    return {"mean": total / count if count else None, "points": count, "near": near, "pairs": pairs}


def _geometry(field_: CompositeField, index: int, points: torch.Tensor) -> torch.Tensor:
    block = field_.blocks[index]
    with torch.no_grad():
        value = block.geometry(points.to(block.device)).float().cpu()
    return value if field_.kind == "neus" else torch.log1p(value)


def seam_jump(
    field_: CompositeField, lines: int, near: float, step: float, seed: int = 0, samples_per_line: int = 128
) -> dict[str, Any]:
    """How much the composite jumps where the set of contributing blocks changes (a block's weight starts or
    stops): along random lines parallel to x and y, every such change is located by bisection (weights only),
    and |f(p + step e) - f(p - step e)| is taken there, for changes within `near` of the surface. A continuous
    blend (partition of unity) gives about 2 step |grad f|; a discontinuous one (inverse distance) the blocks'
    disagreement times its weight jump."""
    rng = np.random.default_rng(seed)
    bounds = field_.bounds
    jumps = []
    for axis in (0, 1):
        starts = bounds[0] + rng.random((lines, 3)) * (bounds[1] - bounds[0])
        t = np.linspace(bounds[0, axis], bounds[1, axis], samples_per_line)
        points = np.repeat(starts[:, None], samples_per_line, axis=1)
        points[..., axis] = t
        flat = torch.from_numpy(points.reshape(-1, 3)).float()
        changes = _signature(field_, flat).reshape(lines, samples_per_line)
        line, k = np.nonzero(changes[:, 1:] != changes[:, :-1])
        if not len(line):
            continue
        covered = (changes[line, k] != 0) & (changes[line, k + 1] != 0)  # not where the blocks' coverage ends
        line, k = line[covered], k[covered]
        lo, hi = points[line, k].copy(), points[line, k + 1].copy()
        signature_lo = changes[line, k]
        for _ in range(24):  # bisect each change to well below `step`
            mid = (lo + hi) / 2
            same = _signature(field_, torch.from_numpy(mid).float()) == signature_lo
            lo[same], hi[~same] = mid[same], mid[~same]
        at = torch.from_numpy((lo + hi) / 2).float()
        offset = torch.zeros(3)
        offset[axis] = step
        with torch.no_grad():
            plus, minus, here = (field_.geometry(q) for q in (at + offset, at - offset, at))
        keep = here.abs() < near if field_.kind == "neus" else torch.ones_like(here, dtype=torch.bool)
        jumps.append((plus - minus)[keep].abs())
    values = torch.cat(jumps) if jumps else torch.zeros(0)
    return {
        "mean": float(values.mean()) if len(values) else None,
        "max": float(values.max()) if len(values) else None,
        "points": len(values),
        "step": step,
    }


def _signature(field_: CompositeField, points: torch.Tensor) -> np.ndarray:
    """(P,) int64 bit mask of the blocks contributing at points (P, 3)."""
    weights, _ = field_.weights(points)
    bits = torch.tensor([1 << b for b in range(weights.shape[1])], dtype=torch.int64)
    return ((weights > 0).long() * bits).sum(dim=1).numpy()


def seam_band_labeller(field_: CompositeField) -> Callable[[np.ndarray], np.ndarray]:
    """Points (P, 3) -> 1 in a seam band (two or more blocks' outer boxes hold it), 0 in a block interior."""

    def label(points: np.ndarray) -> np.ndarray:
        p = torch.from_numpy(points).float()[:, None]
        inside = ((p >= field_.outer[None, :, 0]) & (p <= field_.outer[None, :, 1])).all(dim=-1)
        return (inside.sum(dim=1) >= 2).numpy().astype(np.int64)

    return label

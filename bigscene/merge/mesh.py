"""Out-of-core meshing: the composite SDF on a global grid, chunk by chunk, then welded into one mesh.

Each chunk is one task (`mesh_chunk`): evaluate the composite SDF at the chunk's nodes, store them in
sdf.zarr, run marching cubes (scikit-image), write the chunk's tile and, last, its completion marker. A
task holds one chunk; the driver holds small summaries, so memory is bounded by the chunk size. Meshing
starts from seed chunks (those touched by the partition's surface voxels) and floods: a chunk whose
surface crosses one of its faces adds the neighbour across that face, so the surface is followed to its
end, and every chunk that shares a vertex with another has been meshed. Re-running after a kill skips the
chunks with markers. Points outside every block are masked out of marching cubes (the surface stops there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from bigscene.engine import Engine
from bigscene.errors import ConfigError
from bigscene.merge.composite import CompositeField
from bigscene.merge.grid import Index, MeshGrid
from bigscene.merge.weld import weld_tiles
from bigscene.store import merge_store
from bigscene.store.blocks import remove_tree
from bigscene.store.workspace import read_json, write_json_atomic

log = logging.getLogger(__name__)


class ChunkGauge:
    """How many chunk volumes this process holds at once (now and at its peak): the memory bound, checked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = 0
        self.peak = 0

    def __enter__(self) -> ChunkGauge:
        with self._lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.live -= 1


GAUGE = ChunkGauge()
#: merge.seeds=probe evaluates one point per chunk of the grid; beyond this many chunks it refuses.
MAX_PROBED_CHUNKS = 10_000_000


@dataclass
class MeshShared:
    """What every chunk task needs (sent to Ray workers once per run)."""

    workspace: str
    composite: CompositeField  # evaluated on CPU tensors; each block moves its points to its own device
    grid: MeshGrid
    fingerprint: str
    colour: bool


@dataclass
class ChunkSurface:
    """Marching cubes of one chunk, in the chunk's local node coordinates."""

    verts: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int32
    normals: np.ndarray  # (V, 3) float32 outward unit normals
    crossings: list[tuple[int, int]] = field(default_factory=list)  # (axis, side) faces the surface crosses


def marchable(covered: np.ndarray) -> np.ndarray:
    """(a - 1, b - 1, c - 1) bool: cubes of nodes (a, b, c) whose 8 corners are all covered."""
    cube = covered[:-1, :-1, :-1] & covered[1:, :-1, :-1] & covered[:-1, 1:, :-1] & covered[:-1, :-1, 1:]
    return cube & covered[1:, 1:, :-1] & covered[1:, :-1, 1:] & covered[:-1, 1:, 1:] & covered[1:, 1:, 1:]


#: (8, 3) offsets from a node to the min corners of the 8 cubes around it.
_CUBES_AROUND = np.array([[a, b, c] for a in (-1, 0) for b in (-1, 0) for c in (-1, 0)])


def rim_flags(verts: np.ndarray, cubes: np.ndarray) -> np.ndarray:
    """(V,) bool: vertices (V, 3) in the chunk's node coordinates that touch a cube not marched (a corner outside
    the grid or outside every block), i.e. on the rim of the meshed domain. cubes: `marchable` of the chunk's
    nodes padded by one layer. A vertex inside a grid edge touches the 4 cubes around the edge, one on a node 8."""
    if not len(verts):
        return np.zeros(0, bool)
    lower = np.floor(verts).astype(np.int64)
    frac = verts - lower
    on_edge = frac.max(axis=1) > 0
    along = _CUBES_AROUND[:, frac.argmax(axis=1)].T  # (V, 8) offset of each cube along the vertex's edge
    index = lower[:, None, :] + 1 + _CUBES_AROUND[None]  # (V, 8, 3) padded cube indices
    relevant = ~(on_edge[:, None] & (along == -1))
    return (relevant & ~cubes[index[..., 0], index[..., 1], index[..., 2]]).any(axis=1)


def chunk_surface(values: np.ndarray, covered: np.ndarray) -> ChunkSurface:
    """The zero level set of values (a, b, c) float32, marching only cubes whose 8 corners are covered."""
    inside = (values < 0) & covered
    outside = (values >= 0) & covered
    crossings = []
    for axis in range(3):
        for side in (0, 1):
            face = (slice(None),) * axis + (-1 if side else 0,)
            if inside[face].any() and outside[face].any():
                crossings.append((axis, side))
    empty = ChunkSurface(np.zeros((0, 3)), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.float32), crossings)
    if not (inside.any() and outside.any()):
        return empty
    mask = None
    if not covered.all():
        mask = np.zeros_like(covered)
        mask[1:, 1:, 1:] = marchable(covered)  # scikit-image marches the cube whose far corner the mask marks
        values = np.where(covered, values, 1.0).astype(np.float32)
    try:
        # "descent" winds faces outward for an SDF (negative inside); its normals then point inward
        verts, faces, normals, _ = marching_cubes(values, level=0.0, gradient_direction="descent", mask=mask)
    except ValueError:  # no surface in the marched cubes
        return empty
    return ChunkSurface(verts.astype(np.float64), faces.astype(np.int32), -normals.astype(np.float32), crossings)


def mesh_chunk(ijk: Index, shared: MeshShared) -> dict[str, Any]:
    """One chunk: SDF into sdf.zarr, marching cubes, the tile (npz + PLY), then the marker. Returns the marker."""
    started = time.perf_counter()
    grid, ws = shared.grid, shared.workspace
    start, size = grid.start(ijk), grid.size(ijk)
    with GAUGE, torch.no_grad():
        points = torch.from_numpy(grid.positions(start, size))  # (a b c, 3)
        sample = shared.composite.evaluate(points)
        values = sample.value.float().cpu().numpy().reshape(*size)
        covered = sample.covered.cpu().numpy().reshape(*size)
        # coverage of the nodes one layer around the chunk: where the meshed domain ends (boxes only, no field)
        around = torch.from_numpy(grid.positions(start - 1, size + 2))
        covered_around = shared.composite.weights(around)[1].numpy().reshape(*(size + 2))
        covered_around &= grid.contains(start - 1, size + 2)
        own = [int(size[a]) if ijk[a] == grid.chunks[a] - 1 else int(size[a]) - 1 for a in range(3)]
        stored = np.where(covered, values, np.nan).astype(np.float32)[: own[0], : own[1], : own[2]]
        merge_store.write_sdf_block(merge_store.sdf_array(ws, "r+"), start, stored)
        surface = chunk_surface(values, covered)
        colours = None
        if shared.colour and len(surface.verts):
            world = torch.from_numpy(grid.world(start + surface.verts)).float()
            dirs = -torch.from_numpy(surface.normals)  # look at the surface head-on
            rgb = shared.composite.evaluate(world, dirs).rgb
            colours = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        rim = rim_flags(surface.verts, marchable(covered_around))
        tile = merge_store.Tile(start + surface.verts, surface.faces, colours, rim)
    merge_store.write_tile(merge_store.tile_path(ws, ijk), tile)
    merge_store.write_bytes_atomic(merge_store.tile_path(ws, ijk, "ply"), tile_ply(tile, grid))
    neighbours = [grid.neighbour(ijk, axis, side) for axis, side in surface.crossings]
    marker = {
        "chunk": list(ijk),
        "fingerprint": shared.fingerprint,
        "vertices": len(tile.verts),
        "faces": len(tile.faces),
        "neighbours": [list(n) for n in neighbours if n is not None],
        "nodes": int(np.prod(size)),
        "seconds": round(time.perf_counter() - started, 4),
    }
    write_json_atomic(merge_store.marker_path(ws, ijk), marker)
    return marker


def tile_ply(tile: merge_store.Tile, grid: MeshGrid) -> bytes:
    """The tile as binary PLY in the scene frame."""
    mesh = trimesh.Trimesh(grid.world(tile.verts), tile.faces, vertex_colors=tile.colours, process=False)
    return mesh.export(file_type="ply")


def fingerprint(grid: MeshGrid, field_id: dict[str, Any]) -> str:
    """SHA-256 of the grid and what defines the field (blocks, blend): a mesh made with anything else is stale."""
    doc = {
        "origin": grid.origin.tolist(),
        "voxel": grid.voxel,
        "shape": list(grid.shape),
        "chunk": grid.chunk,
        **field_id,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def check_budget(grid: MeshGrid, seeds: set[Index], budget: int) -> int:
    """The nodes the seed chunks will evaluate; ConfigError with the estimate when over `budget`."""
    estimate = int(sum(int(np.prod(grid.size(c))) for c in seeds))
    if estimate > budget:
        raise ConfigError(
            f"merge.voxel_size={grid.voxel:g} would evaluate about {estimate:,} grid nodes in {len(seeds):,} "
            f"chunks of {grid.chunk}^3 (the whole grid is {' x '.join(map(str, grid.shape))} nodes), over "
            f"merge.voxel_budget={budget:,}; use a larger merge.voxel_size or raise merge.voxel_budget"
        )
    return estimate


def probe_seeds(field: CompositeField, grid: MeshGrid) -> set[Index]:
    """Chunks whose centre SDF says the surface may reach them (exact for a true SDF; a guess for a trained one)."""
    count = int(np.prod(grid.chunks.astype(np.float64)))
    if count > MAX_PROBED_CHUNKS:
        raise ConfigError(
            f"merge.voxel_size={grid.voxel:g} makes {count:,} chunks ({grid.nodes:,} grid nodes), too many to probe; "
            "use a larger merge.voxel_size or merge.chunk, or merge.seeds=voxels"
        )
    chunks = grid.all_chunks()
    reach = grid.half_diagonal() + grid.voxel
    found: set[Index] = set()
    for s in range(0, len(chunks), 4096):
        part = chunks[s : s + 4096]
        with torch.no_grad():
            sample = field.evaluate(torch.from_numpy(grid.centres(part)).float())
        near = (sample.value.abs() <= reach) | ~sample.covered
        found.update(c for c, hit in zip(part, near.tolist(), strict=True) if hit)
    return found


def load_markers(workspace: str, fingerprint_: str) -> dict[Index, dict[str, Any]]:
    """Markers of finished chunks of this fingerprint."""
    markers = {}
    for name in merge_store.list_names(merge_store.merge_path(workspace, "mesh", "chunks"), ".json"):
        ijk = tuple(int(v) for v in name.split("_"))
        doc = read_json(merge_store.marker_path(workspace, ijk))  # type: ignore[arg-type]
        if doc is not None and doc.get("fingerprint") == fingerprint_:
            markers[ijk] = doc  # type: ignore[index]
    return markers


def mesh_field(
    workspace: str,
    field_: CompositeField,
    grid: MeshGrid,
    seeds: set[Index],
    engine: Engine,
    fingerprint_: str,
    colour: bool = True,
) -> dict[str, Any]:
    """Mesh the composite SDF over `grid` from `seeds`, resuming from markers; returns the summary (no report)."""
    started = time.perf_counter()
    sdf_attrs = merge_store.sdf_attrs(workspace)
    if sdf_attrs is None or sdf_attrs.get("fingerprint") != fingerprint_:
        remove_tree(merge_store.mesh_dir(workspace))
    merge_store.open_sdf(workspace, grid.shape, grid.chunk, grid.origin, grid.voxel, fingerprint_)
    done = load_markers(workspace, fingerprint_)
    reused = len(done)
    if reused:
        log.info("%d chunks already meshed; resuming", reused)
    shared = MeshShared(workspace, field_, grid, fingerprint_, colour)
    frontier = (set(seeds) | {tuple(n) for m in done.values() for n in m["neighbours"]}) - set(done)
    computed = rounds = computed_nodes = 0
    while frontier:
        jobs = sorted(frontier)  # type: ignore[type-var]
        rounds += 1
        log.info("meshing %d chunks (round %d)", len(jobs), rounds)
        for index, marker in engine.map(mesh_chunk, jobs, shared):
            done[jobs[index]] = marker
            computed += 1
            computed_nodes += marker["nodes"]
        frontier = {tuple(n) for j in jobs for n in done[j]["neighbours"]} - set(done)  # type: ignore[misc]
    mesh_seconds = time.perf_counter() - started
    stats = weld_tiles(workspace, grid, sorted(done), colour)  # type: ignore[type-var]
    nodes = sum(m["nodes"] for m in done.values())
    return {
        "grid": list(grid.shape),
        "voxel_size": grid.voxel,
        "chunk": grid.chunk,
        "chunks": {
            "seeds": len(seeds),
            "meshed": len(done),
            "flooded": len(set(done) - set(seeds)),
            "computed": computed,
            "reused": reused,
            "with_surface": sum(m["faces"] > 0 for m in done.values()),
            "of_grid": int(np.prod(grid.chunks)),
        },
        "nodes_evaluated": nodes,
        "voxels_per_second": round(computed_nodes / mesh_seconds, 1) if computed else None,
        "peak_chunks_in_process": GAUGE.peak,
        "peak_tasks_in_flight": engine.peak_in_flight,
        **stats,
        "mesh_seconds": round(mesh_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


def mesh_pieces(workspace: str, grid: MeshGrid) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stored mesh tile by tile: (vertices (V, 3) in the scene frame, faces (F, 3)), e.g. for evaluation."""
    for name in merge_store.list_names(merge_store.merge_path(workspace, "mesh", "tiles"), ".npz"):
        ijk = tuple(int(v) for v in name.split("_"))
        tile = merge_store.read_tile(merge_store.tile_path(workspace, ijk))  # type: ignore[arg-type]
        yield grid.world(tile.verts), tile.faces

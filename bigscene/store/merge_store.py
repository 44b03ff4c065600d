"""The layout of `<ws>/merge/`: the chunked global SDF, mesh tiles and markers, orthophoto and DSM, reports.

Layout (schema version 1):
    merge/sdf.zarr/              sdf (X, Y, Z) float32 on the mesh grid, NaN where never evaluated or outside
                                 every block; Zarr chunks of `step` = chunk - 1 nodes, so mesh chunk ijk owns
                                 Zarr chunk ijk (the last chunk along an axis also writes the grid's last layer)
        attrs: schema_version, origin (3,), voxel_size, shape (3,), chunk, fingerprint
    merge/mesh/chunks/i_j_k.json completion marker of a mesh chunk, written after its SDF and tile
    merge/mesh/tiles/i_j_k.npz   the chunk's mesh before welding: verts (V, 3) float64 in global grid units,
                                 faces (F, 3) int32, colours (V, 3) uint8 (or none), rim (V,) bool (vertices
                                 where the meshed domain ends: grid faces, outside every block)
    merge/mesh/tiles/i_j_k.ply   the same tile in the scene frame, for people
    merge/mesh/mesh.ply          all tiles welded into one mesh
    merge/ortho.zarr/            rgb (H, W, 3) uint8 top-down orthophoto, dsm (H, W) float32 surface height
                                 (NaN where empty); chunks are tiles of `tile` pixels; row 0 is the ROI's max y
        attrs: schema_version, origin (2,) the x, y of pixel (0, 0)'s corner, pixel, tile, complete
    merge/eval/points/           surface samples bucketed by evaluation tile (scratch of `bigscene eval`)
    merge/{merge,mesh,render,eval}.json   stage summaries; merge/report.json gathers them
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec
import numpy as np
import zarr

from bigscene.store.workspace import join, write_bytes_atomic

SCHEMA_VERSION = 1
MERGE_DIR = "merge"


def merge_path(workspace: str, *parts: str) -> str:
    return join(workspace, MERGE_DIR, *parts)


def sdf_path(workspace: str) -> str:
    return merge_path(workspace, "sdf.zarr")


def ortho_path(workspace: str) -> str:
    return merge_path(workspace, "ortho.zarr")


def mesh_dir(workspace: str) -> str:
    return merge_path(workspace, "mesh")


def chunk_name(ijk: tuple[int, int, int]) -> str:
    return "_".join(str(int(v)) for v in ijk)


def marker_path(workspace: str, ijk: tuple[int, int, int]) -> str:
    return merge_path(workspace, "mesh", "chunks", f"{chunk_name(ijk)}.json")


def tile_path(workspace: str, ijk: tuple[int, int, int], suffix: str = "npz") -> str:
    return merge_path(workspace, "mesh", "tiles", f"{chunk_name(ijk)}.{suffix}")


def read_bytes(path: str) -> bytes:
    with fsspec.open(path, "rb") as f:
        return f.read()


def list_names(path: str, suffix: str) -> list[str]:
    """Base names (without suffix) of the files ending in `suffix` directly under `path`."""
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return []
    return sorted(name.rsplit("/", 1)[-1][: -len(suffix)] for name in fs.ls(p, detail=False) if name.endswith(suffix))


# --- the global SDF ---------------------------------------------------------------------------------------


def open_sdf(
    workspace: str, shape: tuple[int, int, int], chunk: int, origin: np.ndarray, voxel_size: float, fingerprint: str
) -> zarr.Array:
    """The grid's SDF array, created (NaN everywhere) unless one of the same fingerprint exists."""
    path = sdf_path(workspace)
    try:
        root = zarr.open_group(path, mode="r+")
        if root.attrs.get("fingerprint") == fingerprint and "sdf" in root:
            return root["sdf"]
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        pass
    root = zarr.open_group(path, mode="w")
    step = chunk - 1
    array = root.create_array(
        "sdf", shape=tuple(int(n) for n in shape), dtype=np.float32, chunks=(step, step, step), fill_value=np.nan
    )
    root.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "origin": np.asarray(origin, dtype=np.float64).tolist(),
            "voxel_size": float(voxel_size),
            "shape": [int(n) for n in shape],
            "chunk": int(chunk),
            "fingerprint": fingerprint,
        }
    )
    return array


def write_sdf_block(array: zarr.Array, start: np.ndarray, values: np.ndarray) -> None:
    """Store values (a, b, c) at grid nodes start + [0, a) x [0, b) x [0, c)."""
    region = tuple(slice(int(s), int(s) + n) for s, n in zip(start, values.shape, strict=True))
    array[region] = values


def sdf_array(workspace: str, mode: str = "r") -> zarr.Array:
    """The stored SDF array (mode r+ for a chunk task's write)."""
    return zarr.open_group(sdf_path(workspace), mode=mode)["sdf"]


def sdf_attrs(workspace: str) -> dict | None:
    """The SDF store's attributes (grid, fingerprint), or None when there is none."""
    try:
        return zarr.open_group(sdf_path(workspace), mode="r").attrs.asdict()
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None


# --- mesh tiles -------------------------------------------------------------------------------------------


@dataclass
class Tile:
    """One chunk's mesh before welding."""

    verts: np.ndarray  # (V, 3) float64 global grid coordinates (node units)
    faces: np.ndarray  # (F, 3) int32
    colours: np.ndarray | None  # (V, 3) uint8
    rim: np.ndarray  # (V,) bool: on the rim of the meshed domain (grid faces, the end of the blocks' coverage)


def write_tile(path: str, tile: Tile) -> None:
    buffer = io.BytesIO()
    arrays = {"verts": tile.verts.astype(np.float64), "faces": tile.faces.astype(np.int32), "rim": tile.rim}
    if tile.colours is not None:
        arrays["colours"] = tile.colours.astype(np.uint8)
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def read_tile(path: str) -> Tile:
    with np.load(io.BytesIO(read_bytes(path))) as data:
        colours = data["colours"] if "colours" in data.files else None
        return Tile(data["verts"], data["faces"], colours, data["rim"])


# --- orthophoto and DSM -----------------------------------------------------------------------------------


def open_ortho(workspace: str, height: int, width: int, tile: int, origin: np.ndarray, pixel: float) -> zarr.Group:
    """A fresh orthophoto store: rgb (H, W, 3) uint8 and dsm (H, W) float32 (NaN fill), tiled."""
    root = zarr.open_group(ortho_path(workspace), mode="w")
    root.create_array("rgb", shape=(height, width, 3), dtype=np.uint8, chunks=(tile, tile, 3), fill_value=0)
    root.create_array("dsm", shape=(height, width), dtype=np.float32, chunks=(tile, tile), fill_value=np.nan)
    root.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "origin": np.asarray(origin, dtype=np.float64).tolist(),
            "pixel": float(pixel),
            "tile": int(tile),
            "complete": False,
        }
    )
    return root


def read_ortho(workspace: str) -> zarr.Group:
    return zarr.open_group(ortho_path(workspace), mode="r+")


# --- evaluation point buckets -----------------------------------------------------------------------------


class PointBuckets:
    """Points (P, C) float64 grouped by an integer tile key, spilled to `path/<set>/<key>/<part>.npy` whenever
    `flush_rows` rows are buffered, so bucketing a large point set holds one buffer, not the set."""

    def __init__(self, path: str, name: str, flush_rows: int = 1 << 20) -> None:
        self.root = join(path, name)
        self.flush_rows = flush_rows
        self._buffers: dict[tuple[int, int], list[np.ndarray]] = {}
        self._rows = 0
        self._parts = 0

    def add(self, keys: np.ndarray, points: np.ndarray) -> None:
        """keys (P, 2) int tile indices, points (P, C)."""
        if not len(points):
            return
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        keys, points = keys[order], points[order]
        unique, starts = np.unique(keys, axis=0, return_index=True)
        for key, a, b in zip(unique, starts, [*starts[1:], len(points)], strict=True):
            self._buffers.setdefault((int(key[0]), int(key[1])), []).append(points[a:b])
        self._rows += len(points)
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for (tx, ty), parts in self._buffers.items():
            buffer = io.BytesIO()
            np.save(buffer, np.concatenate(parts))
            write_bytes_atomic(join(self.root, f"{tx}_{ty}", f"{self._parts:06d}.npy"), buffer.getvalue())
        self._parts += 1
        self._buffers, self._rows = {}, 0

    def keys(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in name.split("_")) for name in list_dirs(self.root)]  # type: ignore[misc]

    def read(self, key: tuple[int, int], columns: int) -> np.ndarray:
        """All points of one tile, (P, columns)."""
        parts = [
            np.load(io.BytesIO(read_bytes(join(self.root, f"{key[0]}_{key[1]}", f"{name}.npy"))))
            for name in list_names(join(self.root, f"{key[0]}_{key[1]}"), ".npy")
        ]
        return np.concatenate(parts) if parts else np.zeros((0, columns))


def list_dirs(path: str) -> list[str]:
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return []
    return sorted(e["name"].rsplit("/", 1)[-1] for e in fs.ls(p, detail=True) if e["type"] == "directory")

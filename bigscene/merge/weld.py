"""Welding chunk tiles into one mesh, streamed tile by tile with memory bounded by a tile and its seams.

A marching-cubes vertex lies on one grid edge (or a node); its key is that edge's global id, so the copies
two neighbouring chunks make of a vertex on their shared face get the same key and become one vertex.
Tiles are visited in lexicographic chunk order; a vertex or edge on a chunk face can only be shared with
the chunks that contain it, so it is kept in a small table until the last of those has been visited, then
dropped (a wavefront, not the mesh). Vertices and faces stream into one binary PLY; edge use counts give the
mesh's boundary and non-manifold edges; boundary edges on the rim of the meshed domain (the grid's faces, where
the blocks' coverage ends) are counted apart from those inside it, which would be cracks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np

from bigscene.errors import WorkspaceError
from bigscene.merge.grid import Index, MeshGrid
from bigscene.store import merge_store

#: key suffix of a vertex that sits on a grid node rather than inside an edge.
_ON_NODE = 3
_FACE_RECORD = np.dtype([("count", "u1"), ("indices", "<i4", (3,))])


def vertex_keys(verts: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Global edge ids (V,) int64 of vertices at global grid coordinates verts (V, 3)."""
    lower = np.floor(verts)
    frac = verts - lower
    axis = np.where(frac.max(axis=1) > 0, frac.argmax(axis=1), _ON_NODE)
    node = lower.astype(np.int64)
    linear = (node[:, 0] * shape[1] + node[:, 1]) * shape[2] + node[:, 2]
    return linear * 4 + axis


def chunk_ranges(verts: np.ndarray, ijk: Index, grid: MeshGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex (V, 3), the range [lo, hi] of chunk indices per axis whose nodes hold it (two on a shared face)."""
    start, size, chunks = grid.start(ijk), grid.size(ijk), grid.chunks
    index = np.asarray(ijk, dtype=np.int64)
    local = verts - start
    lo = np.broadcast_to(index, verts.shape).copy()
    hi = lo.copy()
    lo -= (local == 0) & (index > 0)
    hi += (local == size - 1) & (index < chunks - 1)
    return lo, hi


class PlyStream:
    """A binary PLY written in pieces: vertices and faces go to scratch files, the header (counts) last."""

    def __init__(self, path: str, colours: bool) -> None:
        self.path = path
        self.colours = colours
        self._scratch = tempfile.mkdtemp(prefix="bigscene-ply-")
        self._vertices = open(os.path.join(self._scratch, "v"), "wb")  # noqa: SIM115 (closed in close())
        self._faces = open(os.path.join(self._scratch, "f"), "wb")  # noqa: SIM115
        self.vertex_count = 0
        self.face_count = 0
        fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
        if colours:
            fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        self._vertex_record = np.dtype(fields)

    def add_vertices(self, positions: np.ndarray, colours: np.ndarray | None) -> None:
        records = np.empty(len(positions), self._vertex_record)
        records["x"], records["y"], records["z"] = positions.T
        if self.colours:
            rgb = colours if colours is not None else np.full((len(positions), 3), 200, np.uint8)
            records["red"], records["green"], records["blue"] = rgb.T
        self._vertices.write(records.tobytes())
        self.vertex_count += len(positions)

    def add_faces(self, faces: np.ndarray) -> None:
        records = np.empty(len(faces), _FACE_RECORD)
        records["count"] = 3
        records["indices"] = faces
        self._faces.write(records.tobytes())
        self.face_count += len(faces)

    def close(self) -> None:
        self._vertices.close()
        self._faces.close()
        props = "".join(f"property {'float' if n in 'xyz' else 'uchar'} {n}\n" for n in self._vertex_record.names)
        header = (
            "ply\nformat binary_little_endian 1.0\ncomment bigscene welded mesh\n"
            f"element vertex {self.vertex_count}\n{props}"
            f"element face {self.face_count}\nproperty list uchar int vertex_indices\nend_header\n"
        )
        fs, p = fsspec.core.url_to_fs(self.path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        staging = f"{p}.partial"
        with fs.open(staging, "wb") as out:
            out.write(header.encode("ascii"))
            for name in ("v", "f"):
                with open(os.path.join(self._scratch, name), "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        fs.mv(staging, p)
        shutil.rmtree(self._scratch, ignore_errors=True)


@dataclass
class _Seams:
    """Sorted keys (K,) with payload columns, each row final once tile `last` has been visited."""

    keys: np.ndarray
    last: np.ndarray
    values: np.ndarray  # (K,) int64: vertex id (vertex table) or use count (edge table)
    flags: np.ndarray  # (K,) bool: edge on the rim of the meshed domain (edge table)

    @classmethod
    def empty(cls) -> _Seams:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (M,) bool, row (M,)) of keys."""
        if not len(self.keys):
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
        row = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[row] == keys, row

    def add(self, keys: np.ndarray, last: np.ndarray, values: np.ndarray, flags: np.ndarray, summed: bool) -> None:
        """Insert rows; with `summed`, rows of an existing key add their values to it."""
        keys = np.concatenate([self.keys, keys])
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        values = np.concatenate([self.values, values])
        self.values = (
            np.bincount(inverse, weights=values, minlength=len(unique)).astype(np.int64) if summed else values[first]
        )
        self.last = np.concatenate([self.last, last])[first]
        self.flags = np.concatenate([self.flags, flags])[first]
        self.keys = unique

    def pop_before(self, limit: int | None) -> _Seams:
        """Remove and return the rows whose last tile comes before `limit` (all rows when None)."""
        gone = np.ones(len(self.keys), bool) if limit is None else self.last < limit
        out = _Seams(self.keys[gone], self.last[gone], self.values[gone], self.flags[gone])
        keep = ~gone
        self.keys, self.last, self.values, self.flags = (
            self.keys[keep],
            self.last[keep],
            self.values[keep],
            self.flags[keep],
        )
        return out


@dataclass
class _EdgeTally:
    boundary: int = 0
    boundary_inside: int = 0
    nonmanifold: int = 0

    def count(self, uses: np.ndarray, on_rim: np.ndarray) -> None:
        open_edge = uses == 1
        self.boundary += int(open_edge.sum())
        self.boundary_inside += int((open_edge & ~on_rim).sum())
        self.nonmanifold += int((uses > 2).sum())


def weld_tiles(workspace: str, grid: MeshGrid, chunks: Sequence[Index], colours: bool) -> dict[str, int | str]:
    """Weld the tiles of `chunks` into merge/mesh/mesh.ply (with vertex colours when `colours`); returns vertex,
    face and edge counts."""
    order = sorted(chunks, key=lambda c: int(grid.linear(np.array(c))))
    path = merge_store.merge_path(workspace, "mesh", "mesh.ply")
    stream = PlyStream(path, colours)
    seam_vertices, seam_edges, tally = _Seams.empty(), _Seams.empty(), _EdgeTally()
    next_id = degenerate = 0
    for ijk in order:
        here = int(grid.linear(np.array(ijk)))
        seam_vertices.pop_before(here)
        done = seam_edges.pop_before(here)
        tally.count(done.values, done.flags)
        tile = merge_store.read_tile(merge_store.tile_path(workspace, ijk))
        if not len(tile.faces):
            continue
        keys, first_of, inverse = np.unique(vertex_keys(tile.verts, grid.shape), return_index=True, return_inverse=True)
        verts = tile.verts[first_of]  # (V, 3) one per key
        faces = inverse.reshape(-1)[tile.faces]  # (F, 3) into verts
        good = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        degenerate += int((~good).sum())
        faces = faces[good]
        lo, hi = chunk_ranges(verts, ijk, grid)
        seam = (lo != hi).any(axis=1)

        ids = np.empty(len(keys), np.int64)
        found, row = seam_vertices.lookup(keys)
        found &= seam
        ids[found] = seam_vertices.values[row[found]]
        new = ~found
        ids[new] = next_id + np.arange(int(new.sum()))
        next_id += int(new.sum())
        if next_id >= 1 << 31:
            raise WorkspaceError(f"{path}: more than 2^31 vertices do not fit one PLY; use the tiles in mesh/tiles")
        stream.add_vertices(
            grid.world(verts[new]).astype(np.float32), None if tile.colours is None else tile.colours[first_of][new]
        )
        add = new & seam
        seam_vertices.add(keys[add], grid.linear(hi[add]), ids[add], np.zeros(int(add.sum()), bool), summed=False)
        stream.add_faces(ids[faces])

        ends = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # (3F, 2) into verts
        a, b = ids[ends[:, 0]], ids[ends[:, 1]]
        edge_keys = (np.minimum(a, b) << 32) | np.maximum(a, b)
        e_lo = np.maximum(lo[ends[:, 0]], lo[ends[:, 1]])
        e_hi = np.minimum(hi[ends[:, 0]], hi[ends[:, 1]])
        rim = tile.rim[first_of]
        on_rim = rim[ends[:, 0]] & rim[ends[:, 1]]
        shared = (e_lo != e_hi).any(axis=1)
        _, first_edge, uses = np.unique(edge_keys[~shared], return_index=True, return_counts=True)
        tally.count(uses, on_rim[~shared][first_edge])
        seam_edges.add(
            edge_keys[shared],
            grid.linear(e_hi[shared]),
            np.ones(int(shared.sum()), np.int64),
            on_rim[shared],
            summed=True,
        )
    done = seam_edges.pop_before(None)
    tally.count(done.values, done.flags)
    stream.close()
    return {
        "vertices": stream.vertex_count,
        "faces": stream.face_count,
        "boundary_edges": tally.boundary,
        "boundary_edges_inside_roi": tally.boundary_inside,
        "nonmanifold_edges": tally.nonmanifold,
        "degenerate_faces_dropped": degenerate,
        "mesh": path,
    }

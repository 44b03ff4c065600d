"""The Zarr layout of a partitioned workspace: per-block ray stores, surface voxels and block records.

Layout (schema version 3):
    blocks/<id>/block.json       id, inner/outer boxes, centroid, images, ray count, checksum
    blocks/<id>/rays.zarr/       one array per ray column (RAY_COLUMNS), (capacity, ...) chunked along rays:
        origins float32, dirs float32 unit, rgb uint8, near_far float32, image_id int32 (global scene image
        index), pixel uint16 (x, y)
        attrs: schema_version, count, segments [[start, count], ...], checksum, complete (written last)
        Chunks (Blosc-compressed, read one at a time) are grouped in Zarr v3 shards, one file each: a shard
        holds its chunks one after another, then their offsets and sizes.
        The rows are cut into one slot per partition batch (`slot_rows`), and a slot is one shard, as many
        chunks as the largest batch's pixels fill (a batch gives a block at most one ray per pixel): concurrent
        tasks never write the same file, and a batch writes one file per column of each block it reaches, what
        object stores and cluster file systems, where each file costs a round trip, need. A batch writes its
        rays, shuffled, from its slot's start; `segments` lists the non-empty ones in batch order, and a
        store's rays are the segments' rows in that order: logical index i in [0, count) is what readers see
        (`RayStore`). Rows past a segment's count (fill, or what a killed attempt left) are never read.
        A background ray (crossing no block's box: sky) has near == far: an empty foreground segment.
        Shard files are keyed c.<row shard>.0 (c.<row shard> for image_id) beside each column's zarr.json.
    blocks/<id>/voxels.zarr/     coords (V, 3) int32 voxel indices on the global lattice
        attrs: origin (3,), voxel_size, dilation, min_track_length, complete
    partition_work/              scratch of an unfinished partition run, removed when it completes:
        plan.json, batches/<batch>.json (one per finished task: its slot, and per block its ray count and
        checksum; written after its rays)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import fsspec
import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation
from zarr.codecs.bytes import Endian
from zarr.core.buffer import Buffer
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.storage import MemoryStore

from bigscene.errors import InputError
from bigscene.store.crc import crc32c_combine
from bigscene.store.workspace import join, write_json_atomic

if google_crc32c.implementation != "c":
    logging.getLogger(__name__).warning(
        "google-crc32c has no compiled extension here: ray checksums will be slow; reinstall google-crc32c"
    )

T = TypeVar("T")

#: Chunk files named c.<row chunk>.0 beside the array's zarr.json, rather than in a directory per chunk row
#: (c/<row chunk>/0): creating a directory per chunk doubled the file system calls of a write.
_CHUNK_KEYS = {"name": "default", "separator": "."}

#: Zarr's Blosc shuffle names as numcodecs numbers them.
_BLOSC_SHUFFLE = {BloscShuffle.noshuffle: 0, BloscShuffle.shuffle: 1, BloscShuffle.bitshuffle: 2}

SCHEMA_VERSION = 3
BLOCKS_DIR = "blocks"
WORK_DIR = "partition_work"
#: Stores whose small writes (metadata, voxels, finishing records) go at once, on threads: file-system round trips,
#: not bytes, take their time.
METADATA_STORES_IN_FLIGHT = 16

#: Ray columns: name -> (trailing shape, dtype).
RAY_COLUMNS: dict[str, tuple[tuple[int, ...], np.dtype]] = {
    "origins": ((3,), np.dtype(np.float32)),
    "dirs": ((3,), np.dtype(np.float32)),
    "rgb": ((3,), np.dtype(np.uint8)),
    "near_far": ((2,), np.dtype(np.float32)),
    "image_id": ((), np.dtype(np.int32)),
    "pixel": ((2,), np.dtype(np.uint16)),
}


@dataclass
class Rays:
    """A column batch of N rays, in the store's dtypes (see RAY_COLUMNS)."""

    origins: np.ndarray  # (N, 3) float32
    dirs: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    near_far: np.ndarray  # (N, 2) float32
    image_id: np.ndarray  # (N,) int32
    pixel: np.ndarray  # (N, 2) uint16

    def __post_init__(self) -> None:
        for name, (shape, dtype) in RAY_COLUMNS.items():
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=dtype).reshape(-1, *shape))

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, index: np.ndarray | slice) -> Rays:
        return Rays(**{name: getattr(self, name)[index] for name in RAY_COLUMNS})

    @classmethod
    def empty(cls) -> Rays:
        return cls(**{name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in RAY_COLUMNS.items()})

    @classmethod
    def concat(cls, parts: Sequence[Rays]) -> Rays:
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in RAY_COLUMNS})


#: How RayChecksum digests rays; a partition run resumes only batches digested the same way.
CHECKSUM_SCHEME = "crc32c-columns"


class RayChecksum:
    """CRC32C of each column's bytes in ray order (hardware-accelerated, several GB/s), combined with the byte
    counts by SHA-256: equal stores have equal checksums, and a re-run that writes different rays is caught.
    Writes build the same digest from the CRC32Cs their threads take of each chunk (`add`, `SlotWrite.checksums`)."""

    def __init__(self) -> None:
        self._crc = dict.fromkeys(RAY_COLUMNS, 0)
        self._bytes = dict.fromkeys(RAY_COLUMNS, 0)

    def update(self, rays: Rays) -> None:
        for name in RAY_COLUMNS:
            column = getattr(rays, name)
            self._crc[name] = google_crc32c.extend(self._crc[name], column)
            self._bytes[name] += column.nbytes

    def add(self, name: str, crc: int, nbytes: int) -> None:
        """Column `name`'s next `nbytes` bytes, given by their CRC32C."""
        self._crc[name] = crc32c_combine(self._crc[name], crc, nbytes)
        self._bytes[name] += nbytes

    def extend(self, other: RayChecksum) -> None:
        """The rays `other` digested, after these."""
        for name in RAY_COLUMNS:
            self.add(name, other._crc[name], other._bytes[name])

    def hexdigest(self) -> str:
        record = ";".join(f"{name}:{self._crc[name]:08x}:{self._bytes[name]}" for name in RAY_COLUMNS)
        return hashlib.sha256(record.encode()).hexdigest()


def block_dir(workspace: str, block_id: str) -> str:
    return join(workspace, BLOCKS_DIR, block_id)


def rays_path(workspace: str, block_id: str) -> str:
    return join(workspace, BLOCKS_DIR, block_id, "rays.zarr")


def voxels_path(workspace: str, block_id: str) -> str:
    return join(workspace, BLOCKS_DIR, block_id, "voxels.zarr")


def block_json_path(workspace: str, block_id: str) -> str:
    return join(workspace, BLOCKS_DIR, block_id, "block.json")


def work_path(workspace: str, *parts: str) -> str:
    return join(workspace, WORK_DIR, *parts)


def plan_path(workspace: str) -> str:
    return work_path(workspace, "plan.json")


def batch_marker_path(workspace: str, batch: int) -> str:
    return work_path(workspace, "batches", f"{batch:06d}.json")


def remove_tree(path: str) -> None:
    """Delete a directory (local or fsspec URL) if it exists."""
    fs, p = fsspec.core.url_to_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def _compressor(dtype: np.dtype) -> BloscCodec:
    """Byte-shuffled LZ4 (Blosc level 5): on ray columns as small as zstd level 1 (15.6 against 16.2 bytes per ray
    on the partition benchmark's city) and about 4x faster to compress, 5x to decompress."""
    return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle, typesize=dtype.itemsize)


def slot_rows(pixels: Sequence[int], chunk: int) -> int:
    """Rows of each batch's slot in every block's store, and of the stores' shards, for batches of `pixels`
    pixels: the largest batch's, rounded up to whole chunks. Batch b owns rows [b * rows, (b + 1) * rows)."""
    return max((-(-int(n) // chunk) * chunk for n in pixels), default=chunk)


def create_ray_store(path: str, capacity: int, chunk: int, shard: int) -> None:
    """An empty, unfinished ray store of `capacity` rows in chunks of `chunk` rows, `shard` rows (a multiple of
    `chunk`) to a file: metadata only until slots are written."""
    if shard <= 0 or chunk <= 0 or shard % chunk:
        raise ValueError(f"{path}: shards of {shard} rows must hold whole chunks of {chunk} rows")
    chunk_rows = max(1, min(chunk, capacity))  # a small store's one chunk no larger than the store
    root = zarr.open_group(path, mode="w", attributes={"schema_version": SCHEMA_VERSION, "complete": False})
    for name, (shape, dtype) in RAY_COLUMNS.items():
        root.create_array(
            name,
            shape=(capacity, *shape),
            dtype=dtype,
            chunks=(chunk_rows, *shape),
            shards=(chunk_rows * (shard // chunk), *shape),
            compressors=_compressor(dtype),
            fill_value=0,
            chunk_key_encoding=_CHUNK_KEYS,
        )


def create_ray_stores(paths: Sequence[str], capacity: int, chunk: int, shard: int) -> None:
    """`create_ray_store` at each path: Zarr makes the first, the others get copies of its metadata documents,
    METADATA_STORES_IN_FLIGHT stores at a time (a partition creates one per block, and each takes a directory
    and a file per column: their latency, not their bytes, takes the time)."""
    if not paths:
        return
    create_ray_store(paths[0], capacity, chunk, shard)
    fs, template = fsspec.core.url_to_fs(paths[0])
    documents = {posixpath.relpath(name, template): fs.cat_file(name) for name in fs.find(template)}

    def replicate(path: str) -> None:
        remove_tree(path)
        store_fs, root = fsspec.core.url_to_fs(path)
        for key in sorted(documents, key=posixpath.dirname):  # the group's zarr.json first
            target = posixpath.join(root, key)
            store_fs.makedirs(posixpath.dirname(target), exist_ok=True)
            store_fs.pipe_file(target, documents[key])

    _for_each_store(replicate, [(path,) for path in paths[1:]])


def _for_each_store(work: Callable[..., T], items: Iterable[tuple]) -> list[T]:
    """`work(*item)` for each item, METADATA_STORES_IN_FLIGHT at a time on threads; the results in item order, the
    first error raised once every item has run."""
    with ThreadPoolExecutor(METADATA_STORES_IN_FLIGHT, "stores") as pool:
        return [done.result() for done in [pool.submit(work, *item) for item in items]]


@dataclass(frozen=True)
class _Column:
    """Where one ray column's shards go and how they are encoded, read from the array's Zarr metadata."""

    name: str
    fs: fsspec.AbstractFileSystem
    directory: str  # the array's directory on fs
    metadata: ArrayV3Metadata
    chunk: int  # rows of a chunk
    shard: int  # rows of a shard (one file)
    codec: numcodecs.Blosc  # a chunk's

    @property
    def capacity(self) -> int:
        return self.metadata.shape[0]

    def shard_path(self, index: int) -> str:
        key = self.metadata.encode_chunk_key((index,) + (0,) * (len(self.metadata.shape) - 1))
        return posixpath.join(self.directory, key)


@functools.lru_cache(maxsize=64)
def _array_metadata(document: bytes) -> ArrayV3Metadata:
    """A Zarr array's metadata from its zarr.json. Cached: every block's store has the same column documents, and
    parsing one costs more than reading it."""
    return ArrayV3Metadata.from_dict(json.loads(document))


def _open_columns(path: str) -> list[_Column]:
    """The ray columns of the store at `path`, in RAY_COLUMNS order, from their Zarr metadata documents (read
    directly: a task opens every block's store, and Zarr's own open costs several times more)."""
    fs, root = fsspec.core.url_to_fs(path)
    columns = []
    for name in RAY_COLUMNS:
        directory = posixpath.join(root, name)
        metadata = _array_metadata(fs.cat_file(posixpath.join(directory, "zarr.json")))
        chunk, shard, codec = _sharded_codecs(metadata, RAY_COLUMNS[name][1], f"{path}/{name}")
        columns.append(_Column(name, fs, directory, metadata, chunk, shard, codec))
    if len({(c.chunk, c.shard, c.capacity) for c in columns}) > 1:  # a write job covers a chunk of every column
        layouts = ", ".join(f"{c.name} {c.capacity} rows in chunks of {c.chunk}, shards of {c.shard}" for c in columns)
        raise ValueError(f"{path}: its columns are not chunked alike ({layouts}); re-run the partition")
    return columns


def _is_little_endian_bytes(codec: object) -> bool:
    return isinstance(codec, BytesCodec) and codec.endian in (None, Endian.little)


def _sharded_codecs(metadata: ArrayV3Metadata, dtype: np.dtype, where: str) -> tuple[int, int, numcodecs.Blosc]:
    """Rows of a chunk and of a shard of an array of `dtype` (ray columns, voxel coordinates), and the Blosc codec
    that encodes its chunks as Zarr does; ValueError unless the array is stored as this module makes its arrays:
    shards of little-endian chunks compressed by Blosc with the dtype's item size, each shard's index at its end,
    little-endian, with a CRC32C."""
    codecs = metadata.codecs
    sharding = codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None
    inner = sharding.codecs if sharding else ()
    if (
        sharding is None
        or len(inner) != 2
        or not _is_little_endian_bytes(inner[0])
        or not isinstance(inner[1], BloscCodec)
        or inner[1].typesize != dtype.itemsize
        or len(sharding.index_codecs) != 2
        or not _is_little_endian_bytes(sharding.index_codecs[0])
        or not isinstance(sharding.index_codecs[1], Crc32cCodec)
        or sharding.index_location != ShardingCodecIndexLocation.end
        or any(c != s for c, s in zip(sharding.chunk_shape[1:], metadata.shape[1:], strict=True))
    ):
        raise ValueError(f"{where}: stored with codecs {codecs}, not as bigscene stores arrays; re-run the partition")
    blosc = inner[1]  # its typesize is the item size, which numcodecs takes from the array it encodes
    codec = numcodecs.Blosc(
        cname=blosc.cname.value, clevel=blosc.clevel, shuffle=_BLOSC_SHUFFLE[blosc.shuffle], blocksize=blosc.blocksize
    )
    return sharding.chunk_shape[0], metadata.chunk_grid.chunk_shape[0], codec


#: A shard index entry of a chunk not stored (offset and size).
_NO_CHUNK = 2**64 - 1


class _Shard:
    """One shard file being written: its chunks are encoded on the writer threads, and the thread that encodes
    the last of them writes the file (the chunks in order, then the index of their offsets and sizes, then the
    index's CRC32C), so a shard's chunks are compressed in parallel and the file is written once, whole."""

    def __init__(self, column: _Column, index: int, chunks: int) -> None:
        self.column = column
        self.index = index
        self._encoded: list[bytes] = [b""] * chunks
        self._left = chunks
        self._lock = threading.Lock()

    def put(self, i: int, rows: np.ndarray) -> None:
        """Encode `rows` (at most a chunk, in the column's dtype) as the shard's i-th chunk, padded with the fill
        value 0 to the whole chunk as Zarr stores it; write the file if it was the last one left."""
        column = self.column
        if len(rows) < column.chunk:
            whole = np.zeros((column.chunk, *rows.shape[1:]), rows.dtype)
            whole[: len(rows)] = rows
            rows = whole
        data = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))  # the bytes codec's order
        self._encoded[i] = column.codec.encode(data)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._write()

    def _write(self) -> None:
        column = self.column
        sizes = np.array([len(chunk) for chunk in self._encoded], dtype=np.uint64)
        index = np.full((column.shard // column.chunk, 2), _NO_CHUNK, dtype="<u8")  # (chunks per shard, 2)
        index[: len(sizes), 0] = np.cumsum(sizes) - sizes
        index[: len(sizes), 1] = sizes
        index_bytes = index.tobytes()
        path = column.shard_path(self.index)
        if posixpath.dirname(path) != column.directory:  # a store whose chunk keys have directories
            column.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with column.fs.open(path, "wb") as f:
            for chunk in self._encoded:
                f.write(chunk)
            f.write(index_bytes)
            f.write(np.array([google_crc32c.value(index_bytes)], dtype="<u4").tobytes())


#: Threads per process that compress and write ray chunks (Blosc releases the GIL). A Ray node runs a task per
#: core, so a few per task overlap compression with the task's own work without oversubscribing the node many-fold.
CHUNK_WRITERS = 4


@functools.cache
def _chunk_writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(CHUNK_WRITERS, os.cpu_count() or 1), "ray-chunks")


def _start_rows(start: int, stores: Sequence[tuple[Sequence[_Column], Rays]]) -> list[Future]:
    """Start writing each (columns, rays) pair's rays to the store's rows [start, start + N), whole shards from a
    shard boundary, one file per column and shard, on CHUNK_WRITERS threads: a job per chunk of rows checksums and
    encodes that chunk of every column (`_put_chunk`; the futures give each column's CRC32C and length, in
    RAY_COLUMNS order). The rays must not change until the futures are done."""
    jobs = []
    for columns, rays in stores:
        shard, capacity, chunk = columns[0].shard, columns[0].capacity, columns[0].chunk
        if start % shard or start + len(rays) > capacity:
            raise ValueError(
                f"{posixpath.dirname(columns[0].directory)}: cannot write {len(rays)} rays from row {start}: a write "
                f"starts on a shard boundary ({shard} rows) and ends within the store's {capacity} rows"
            )
        values = [getattr(rays, column.name) for column in columns]
        for first in range(0, len(rays), shard):
            rows = min(shard, len(rays) - first)
            shards = [_Shard(column, (start + first) // shard, -(-rows // chunk)) for column in columns]
            for i, row in enumerate(range(first, first + rows, chunk)):
                stop = min(row + chunk, first + rows)
                jobs.append((shards, i, [column[row:stop] for column in values]))
    return [_chunk_writers().submit(_put_chunk, shards, i, parts) for shards, i, parts in jobs]


def _put_chunk(shards: Sequence[_Shard], i: int, parts: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Each part's CRC32C and length in bytes, once it is encoded as its shard's i-th chunk (the checksum brings the
    chunk into the cache the compressor then reads it from)."""
    out = []
    for shard, part in zip(shards, parts, strict=True):  # rows of a Rays column: contiguous
        out.append((google_crc32c.value(part), part.nbytes))
        shard.put(i, part)
    return out


@dataclass
class SlotWrite:
    """A `start_slot` write under way: `result()` waits for its chunks and returns each store's RayChecksum, from
    the CRC32Cs its chunk jobs took (`stores`: each store's first job and job count)."""

    chunks: list[Future]
    stores: list[tuple[int, int]]

    def result(self) -> list[str]:
        """Each store's RayChecksum once every chunk is written; if one failed, its error once the others are over
        (`abandon`): no chunk of a failed write is still being written when the caller hears of it."""
        return [checksum.hexdigest() for checksum in self.checksums()]

    def checksums(self) -> list[RayChecksum]:
        """Each store's RayChecksum of its rays, once every chunk is written (errors as `result`)."""
        try:
            chunk_crcs = [chunk.result() for chunk in self.chunks]  # per job: each column's (CRC32C, bytes)
        except BaseException:
            self.abandon()
            raise
        out = []
        for first, count in self.stores:
            checksum = RayChecksum()
            for job in chunk_crcs[first : first + count]:
                for name, (crc, nbytes) in zip(RAY_COLUMNS, job, strict=True):
                    checksum.add(name, crc, nbytes)
            out.append(checksum)
        return out

    def abandon(self) -> None:
        """Cancel the chunks not begun and wait for the others, errors ignored: a failed task's writes must not
        land after its retry's."""
        for chunk in self.chunks:
            chunk.cancel()
        futures.wait(self.chunks)


def start_slot(start: int, stores: Sequence[tuple[str, Rays]]) -> SlotWrite:
    """Start writing each (store path, rays) pair's rays to the store's rows [start, start + N); the rays must not
    change until the write's `result()` returns. The stores come from `create_ray_store`; `start` is a shard
    boundary.

    The chunks are checksummed and encoded with each column's codecs on a thread pool, and each shard written as
    Zarr lays it out: through Zarr's own write path, its per-chunk overhead took four times what compressing and
    writing the chunks does. A shard file is written in place: a killed attempt leaves it only in its own slot,
    unread until a retry rewrites the slot.
    """
    return _write_rows(start, [(_open_columns(path), rays) for path, rays in stores])


def _write_rows(start: int, stores: Sequence[tuple[Sequence[_Column], Rays]]) -> SlotWrite:
    """`_start_rows`, as a SlotWrite."""
    chunks = _start_rows(start, stores)
    counts = [-(-len(rays) // columns[0].chunk) for columns, rays in stores]  # chunk jobs per store
    firsts = np.cumsum([0, *counts], dtype=np.int64)[:-1]
    return SlotWrite(chunks, [(int(first), count) for first, count in zip(firsts, counts, strict=True)])


def write_slot(start: int, stores: Sequence[tuple[str, Rays]]) -> list[str]:
    """`start_slot`, waited for: each store's RayChecksum."""
    return start_slot(start, stores).result()


def store_checksum(checksums: Sequence[str]) -> str:
    """A store's checksum from its segments' (RayChecksum hex digests, in segment order)."""
    return hashlib.sha256("".join(checksums).encode()).hexdigest()


def finish_ray_store(path: str, segments: Sequence[tuple[int, int]], checksums: Sequence[str]) -> dict:
    """Record a store's segments ((start row, ray count), non-empty, in order) and checksum and mark it complete, in
    one atomic replacement of its group's zarr.json (readers see it unfinished or complete, never in between);
    returns `ray_store_info`'s record."""
    return finish_ray_stores([(path, segments, checksums)])[0]


def finish_ray_stores(stores: Sequence[tuple[str, Sequence[tuple[int, int]], Sequence[str]]]) -> list[dict]:
    """`finish_ray_store` for each (path, segments, checksums), METADATA_STORES_IN_FLIGHT at a time (a partition
    finishes one store per block: file-system latency takes the time)."""

    def finish(path: str, segments: Sequence[tuple[int, int]], checksums: Sequence[str]) -> dict:
        fs, root = fsspec.core.url_to_fs(path)
        shard = _array_metadata(fs.cat_file(posixpath.join(root, "image_id", "zarr.json"))).chunk_grid.chunk_shape[0]
        ends = [0] + [start + n for start, n in segments]
        if len(checksums) != len(segments) or any(
            n <= 0 or start % shard or start < end for (start, n), end in zip(segments, ends, strict=False)
        ):
            raise ValueError(f"{path}: segments {segments} must be non-empty, ordered and start on shard boundaries")
        count = sum(n for _, n in segments)
        checksum = store_checksum(checksums)
        group = json.loads(fs.cat_file(posixpath.join(root, "zarr.json")))
        group["attributes"].update(
            count=count, segments=[[int(s), int(n)] for s, n in segments], checksum=checksum, complete=True
        )
        write_json_atomic(join(path, "zarr.json"), group)
        return {"count": count, "checksum": checksum}

    return _for_each_store(finish, stores)


#: Chunks per shard (file) of a store that RayStoreWriter streams: what it buffers.
WRITER_SHARD_CHUNKS = 16


class RayStoreWriter:
    """Stream rays into a new store holding one segment, rows [0, count), writing whole shards of
    WRITER_SHARD_CHUNKS chunks.

    Memory is one shard of buffered rays plus what the caller appends, whatever the store's length.
    """

    def __init__(self, path: str, count: int, chunk: int) -> None:
        self.path = path
        self.count = count
        create_ray_store(path, count, chunk, WRITER_SHARD_CHUNKS * chunk)
        self._columns = _open_columns(path)
        self.shard = self._columns[0].shard
        self._pending: list[Rays] = []
        self._pending_len = 0
        self._written = 0
        self._checksum = RayChecksum()

    def append(self, rays: Rays) -> None:
        self._pending.append(rays)
        self._pending_len += len(rays)
        if self._pending_len >= self.shard:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        buffered = Rays.concat(self._pending)
        whole = len(buffered) if final else len(buffered) - len(buffered) % self.shard
        if self._written + whole > self.count:
            raise ValueError(f"{self.path}: more rays appended than the {self.count} declared")
        out = buffered.take(slice(0, whole))
        self._checksum.extend(_write_rows(self._written, [(self._columns, out)]).checksums()[0])
        self._written += whole
        rest = buffered.take(slice(whole, None))
        self._pending, self._pending_len = [rest], len(rest)

    def close(self) -> str:
        """Write what is buffered, mark the store complete; returns its checksum."""
        self._flush(final=True)
        if self._written != self.count:
            raise ValueError(f"{self.path}: {self._written} rays written, {self.count} declared")
        segments = [(0, self.count)] if self.count else []
        return finish_ray_store(self.path, segments, [self._checksum.hexdigest()] * len(segments))["checksum"]


@dataclass(frozen=True)
class RayStore:
    """A complete ray store as readers see it: `count` rays at logical indices [0, count), kept in `segments`
    (start row, ray count) one after another, in chunks of `chunk` rows."""

    path: str
    count: int
    chunk: int
    checksum: str
    segments: tuple[tuple[int, int], ...]

    def columns(self, names: Sequence[str] = tuple(RAY_COLUMNS)) -> dict[str, zarr.Array]:
        """The named column arrays, indexed by row."""
        root = zarr.open_group(self.path, mode="r")
        return {name: root[name] for name in names}

    def chunk_reader(self, names: Sequence[str] = tuple(RAY_COLUMNS)) -> ChunkReader:
        """A reader of the named columns' rows within one chunk at a time (`pieces`), straight from the shards."""
        return ChunkReader(self.path, names)

    def pieces(self) -> np.ndarray:
        """(P, 3) int64 (start row, stop row, logical start): the rays of every stored chunk, in logical order.

        Each piece lies in one chunk, so reading it reads one chunk per column; together they hold every ray
        once.
        """
        out = []
        logical = 0
        for start, n in self.segments:
            for row in range(start, start + n, self.chunk):
                out.append((row, min(row + self.chunk, start + n), logical + row - start))
            logical += n
        return np.array(out, dtype=np.int64).reshape(-1, 3)

    def ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The row ranges holding logical rays [start, stop), in order."""
        out = []
        logical = 0
        for row, n in self.segments:
            lo, hi = max(start, logical), min(stop, logical + n)
            if lo < hi:
                out.append((row + lo - logical, row + hi - logical))
            logical += n
        return out

    def read(self, start: int = 0, stop: int | None = None) -> Rays:
        """Logical rays [start, stop) (slice semantics over [0, count)), chunk by chunk (`chunk_reader`)."""
        start, stop, _ = slice(start, stop).indices(self.count)
        reader = self.chunk_reader()
        parts = []
        for row, end in self.ranges(start, stop):
            while row < end:
                within = min(end, (row // self.chunk + 1) * self.chunk)  # to the end of row's chunk
                parts.append(Rays(**reader.rows(row, within)))
                row = within
        return Rays.concat(parts)


#: Shard indexes a ChunkReader keeps: 16 bytes per chunk of a slot each (23 kB for 8 images of 12 MP a batch).
READER_INDEXES = 1024

#: What a damaged shard gets a reader to do.
_REPARTITION = "re-run `bigscene partition`"


class ChunkReader:
    """Rows within one chunk of some columns of a complete ray store, read straight from its shards: one ranged read
    and one decode per column, each shard's index read once and kept (READER_INDEXES at most). Through Zarr, each
    read also re-reads and decodes the shard's index, which halved a data worker's throughput.

    Only written slots are read (`RayStore.pieces`, `RayStore.ranges`), so a missing shard, a damaged index or a
    chunk that does not decode is an InputError naming the file, never rows of zeros; a chunk a shard leaves out
    holds the fill value, as Zarr reads it."""

    def __init__(self, path: str, names: Sequence[str]) -> None:
        self.columns = [column for column in _open_columns(path) if column.name in names]
        self._indexes: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def _index(self, column: _Column, shard: int) -> np.ndarray:
        """(chunks per shard, 2) uint64 offset and size of each chunk of a shard (_NO_CHUNK where not stored)."""
        key = (column.name, shard)
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
            return index
        entries = column.shard // column.chunk
        path = column.shard_path(shard)
        try:
            raw = column.fs.cat_file(path, start=-(16 * entries + 4))
        except FileNotFoundError as err:
            raise InputError(path, f"shard file missing from a complete ray store; {_REPARTITION}") from err
        if len(raw) != 16 * entries + 4 or np.frombuffer(raw[-4:], "<u4")[0] != google_crc32c.value(raw[:-4]):
            raise InputError(path, f"shard index is truncated or corrupt; {_REPARTITION}")
        index = np.frombuffer(raw[:-4], "<u8").reshape(entries, 2).astype(np.uint64)
        self._indexes[key] = index
        if len(self._indexes) > READER_INDEXES:
            self._indexes.popitem(last=False)
        return index

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Each column's rows [start, stop), which lie in one chunk (a piece of `RayStore.pieces`)."""
        out = {}
        for column in self.columns:
            shard, row = divmod(start, column.shard)
            chunk, row = divmod(row, column.chunk)
            if not 0 <= start < stop <= column.capacity or row + stop - start > column.chunk:
                raise ValueError(
                    f"{column.directory}: rows [{start}, {stop}) are not within one chunk of the store's "
                    f"{column.capacity} rows"
                )
            shape, dtype = RAY_COLUMNS[column.name]
            whole = column.chunk * int(np.prod(shape))  # values in a chunk
            path = column.shard_path(shard)
            offset, size = (int(v) for v in self._index(column, shard)[chunk])
            if offset == _NO_CHUNK:  # a chunk of the fill value, which Zarr's own writes leave out of a shard
                values = np.zeros(whole, dtype)
            else:
                data = column.fs.cat_file(path, start=offset, end=offset + size)
                try:
                    values = np.frombuffer(column.codec.decode(data), dtype.newbyteorder("<"))
                except RuntimeError as err:  # Blosc's decompression error
                    raise InputError(path, f"chunk {chunk} does not decode ({err}); {_REPARTITION}") from err
            if len(values) != whole:
                raise InputError(path, f"chunk {chunk} decodes to {len(values)} values; {_REPARTITION}")
            out[column.name] = values.reshape(-1, *shape)[row : row + stop - start].astype(dtype, copy=False)
        return out


def open_ray_store(path: str) -> RayStore:
    """The complete ray store at `path`; InputError when it is absent, unfinished or of another schema."""
    try:
        root = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise InputError(path, "no ray store here; run `bigscene partition`") from err
    attrs = root.attrs.asdict()
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            path,
            f"ray store of schema version {attrs.get('schema_version')}, this bigscene reads {SCHEMA_VERSION}; "
            "re-run `bigscene partition`",
        )
    if not attrs.get("complete", False):
        raise InputError(path, "unfinished ray store; re-run `bigscene partition`")
    return RayStore(
        path=path,
        count=int(attrs["count"]),
        chunk=_sharded_codecs(root["image_id"].metadata, RAY_COLUMNS["image_id"][1], path)[0],
        checksum=str(attrs["checksum"]),
        segments=tuple((int(start), int(n)) for start, n in attrs["segments"]),
    )


def ray_store_info(path: str) -> dict | None:
    """`{count, checksum}` of a complete ray store, or None when absent, unfinished or of another schema."""
    try:
        store = open_ray_store(path)
    except InputError:
        return None
    return {"count": store.count, "checksum": store.checksum}


def read_rays(path: str, start: int = 0, stop: int | None = None) -> Rays:
    """Logical rays [start, stop) of a complete block ray store (see `RayStore`)."""
    return open_ray_store(path).read(start, stop)


#: Voxel coordinates per chunk of a voxel store.
VOXEL_CHUNK = 1 << 18


def write_voxel_stores(
    stores: Sequence[tuple[str, np.ndarray]],
    origin: np.ndarray,
    voxel_size: float,
    dilation: int,
    min_track_length: int,
) -> None:
    """Blocks' sparse surface voxels: for each (path, coords (V, 3) int32 indices) a store where voxel ijk spans
    origin + ijk * voxel_size, replacing what is there.

    Zarr makes the documents of one store in memory; each store gets them with its own shape, and its chunks
    encoded as for ray stores, METADATA_STORES_IN_FLIGHT stores at a time (a partition writes a small store per
    block: file-system latency, not bytes, takes the time). The group's zarr.json, which marks the store complete,
    is written last: until then there is no store at the path.
    """
    attributes = {
        "schema_version": SCHEMA_VERSION,
        "origin": np.asarray(origin, dtype=np.float64).tolist(),
        "voxel_size": float(voxel_size),
        "dilation": int(dilation),
        "min_track_length": int(min_track_length),
        "complete": True,
    }
    documents: dict[str, Buffer] = {}
    root = zarr.open_group(MemoryStore(documents), mode="w", attributes=attributes)
    dtype = np.dtype(np.int32)
    root.create_array(
        "coords",
        shape=(0, 3),
        dtype=dtype,
        chunks=(1, 3),
        shards=(1, 3),
        compressors=_compressor(dtype),
        chunk_key_encoding=_CHUNK_KEYS,
    )
    group_document, coords_document = documents["zarr.json"].to_bytes(), documents["coords/zarr.json"].to_bytes()

    def write(path: str, coords: np.ndarray) -> None:
        coords = np.ascontiguousarray(coords, dtype=dtype).reshape(-1, 3)
        remove_tree(path)
        fs, store_root = fsspec.core.url_to_fs(path)
        directory = posixpath.join(store_root, "coords")
        document = json.loads(coords_document)  # the template's, with this store's shape
        chunk = max(1, min(len(coords), VOXEL_CHUNK))
        chunks = -(-len(coords) // chunk)
        document["shape"] = [len(coords), 3]
        document["chunk_grid"]["configuration"]["chunk_shape"] = [chunk * max(1, chunks), 3]  # one shard
        document["codecs"][0]["configuration"]["chunk_shape"] = [chunk, 3]
        data = json.dumps(document).encode()
        metadata = ArrayV3Metadata.from_dict(document)
        column = _Column("coords", fs, directory, metadata, *_sharded_codecs(metadata, dtype, path))
        fs.makedirs(directory, exist_ok=True)
        fs.pipe_file(posixpath.join(directory, "zarr.json"), data)
        shard = _Shard(column, 0, chunks)
        for i in range(chunks):  # the last writes the shard
            shard.put(i, coords[i * chunk : (i + 1) * chunk])
        fs.pipe_file(posixpath.join(store_root, "zarr.json"), group_document)  # last: the store is complete

    _for_each_store(write, stores)


@dataclass
class Voxels:
    """Sparse surface voxels of one block: coords (V, 3) int32 on the lattice origin + ijk * voxel_size."""

    coords: np.ndarray
    origin: np.ndarray
    voxel_size: float

    def centres(self) -> np.ndarray:
        """(V, 3) float64 voxel centres in the scene frame."""
        return self.origin + (self.coords + 0.5) * self.voxel_size


def read_voxels(path: str) -> Voxels:
    root = zarr.open_group(path, mode="r")
    return Voxels(
        root["coords"][...], np.array(root.attrs["origin"], dtype=np.float64), float(root.attrs["voxel_size"])
    )

"""The workspace scene store: written through bigscene.store, read back identically."""

import json
import posixpath
import time
from pathlib import Path

import fsspec
import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from bigscene.errors import InputError, WorkspaceError
from bigscene.scene import Camera, ImageRecord, Scene, SparsePoints
from bigscene.store import SCHEMA_VERSION, blocks, has_scene, read_scene, scene_path, write_scene
from bigscene.store.blocks import (
    RAY_COLUMNS,
    RayChecksum,
    Rays,
    RayStoreWriter,
    create_ray_store,
    create_ray_stores,
    finish_ray_store,
    finish_ray_stores,
    open_ray_store,
    ray_store_info,
    read_rays,
    read_voxels,
    start_slot,
    store_checksum,
    write_slot,
    write_voxel_stores,
)
from bigscene.store.crc import crc32c_combine


def make_scene(num_images: int = 5, num_points: int = 50, seed: int = 0) -> Scene:
    rng = np.random.default_rng(seed)
    cameras = {
        3: Camera("OPENCV", 64, 48, (50.0, 51.0, 32.5, 24.25, -0.1, 0.01, 1e-3, -2e-3)),
        7: Camera("SIMPLE_PINHOLE", 32, 24, (30.0, 16.0, 12.0)),
    }
    images = [
        ImageRecord(f"img_{i:03d}.png", 3 if i % 2 else 7, i, "test" if i == 2 else "train") for i in range(num_images)
    ]
    q, _ = np.linalg.qr(rng.normal(size=(num_images, 3, 3)))
    c2w = np.tile(np.eye(4), (num_images, 1, 1))
    c2w[:, :3, :3] = q * np.sign(np.linalg.det(q))[:, None, None]
    c2w[:, :3, 3] = rng.normal(size=(num_images, 3))
    points = SparsePoints(
        rng.normal(size=(num_points, 3)),
        rng.integers(0, 256, size=(num_points, 3), dtype=np.uint8),
        rng.integers(2, 9, size=num_points).astype(np.int32),
        rng.random(num_points).astype(np.float32),
    )
    transform = np.diag([2.0, 2.0, 2.0, 1.0])
    transform[:3, 3] = [1, 2, 3]
    return Scene(
        cameras,
        images,
        c2w,
        points,
        "/data/images",
        np.array([[-1, -2, -3], [1, 2, 3.0]]),
        transform,
        (0.0, 0.5, 1.0),
    )


def assert_same_scene(a: Scene, b: Scene) -> None:
    assert a.cameras == b.cameras
    assert a.images == b.images
    np.testing.assert_array_equal(a.c2w, b.c2w)
    for name in ("xyz", "rgb", "track_length", "error"):
        np.testing.assert_array_equal(getattr(a.points, name), getattr(b.points, name))
        assert getattr(a.points, name).dtype == getattr(b.points, name).dtype
    np.testing.assert_array_equal(a.roi, b.roi)
    np.testing.assert_array_equal(a.world_from_input, b.world_from_input)
    assert (a.image_root, a.background) == (b.image_root, b.background)


def test_scene_round_trips_identically(tmp_path: Path) -> None:
    scene = make_scene()
    write_scene(tmp_path, scene)
    assert has_scene(tmp_path)
    assert_same_scene(scene, read_scene(tmp_path))


def test_rewrite_replaces_whole_store_and_leaves_no_staging(tmp_path: Path) -> None:
    write_scene(tmp_path, make_scene(5, 50, seed=0))
    second = make_scene(3, 0, seed=1)
    write_scene(tmp_path, second)
    assert_same_scene(second, read_scene(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.zarr"]


def test_missing_store_says_which_stage_to_run(tmp_path: Path) -> None:
    assert not has_scene(tmp_path)
    with pytest.raises(WorkspaceError, match="bigscene ingest"):
        read_scene(tmp_path)


def test_store_without_completion_marker_is_incomplete(tmp_path: Path) -> None:
    write_scene(tmp_path, make_scene())
    root = zarr.open_group(scene_path(tmp_path), mode="r+")
    root.attrs["complete"] = False
    assert not has_scene(tmp_path)
    with pytest.raises(WorkspaceError, match="incomplete"):
        read_scene(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    write_scene(tmp_path, make_scene())
    root = zarr.open_group(scene_path(tmp_path), mode="r+")
    root.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(WorkspaceError, match="newer bigscene"):
        read_scene(tmp_path)


def test_fsspec_memory_url_workspace() -> None:
    scene = make_scene()
    write_scene("memory://bigscene-test-ws", scene)
    assert_same_scene(scene, read_scene("memory://bigscene-test-ws"))


def _random_rays(n: int, seed: int) -> Rays:
    rng = np.random.default_rng(seed)
    return Rays(
        rng.normal(size=(n, 3)),
        rng.normal(size=(n, 3)),
        rng.integers(0, 256, (n, 3)),
        rng.random((n, 2)),
        np.arange(n),
        rng.integers(0, 99, (n, 2)),
    )


def test_block_ray_stores_made_from_a_template_match_a_zarr_made_one(tmp_path: Path) -> None:
    """Stores whose metadata is copied from the first are the stores Zarr makes: same arrays, chunks, shards, codecs
    and attributes; each takes writes on its own; a leftover at a path is replaced."""
    paths = [str(tmp_path / "a" / "rays.zarr"), str(tmp_path / "b" / "c" / "rays.zarr"), str(tmp_path / "d.zarr")]
    zarr.open_group(paths[2], mode="w").create_array("junk", shape=(3,), dtype="i4")
    create_ray_stores(paths, 3 * 1024, 512, 1024)
    reference = str(tmp_path / "reference.zarr")
    create_ray_store(reference, 3 * 1024, 512, 1024)
    expected = zarr.open_group(reference, mode="r")
    for path in paths:
        root = zarr.open_group(path, mode="r")
        assert sorted(root.array_keys()) == sorted(RAY_COLUMNS)
        assert root.attrs.asdict() == expected.attrs.asdict()
        for name in RAY_COLUMNS:
            assert root[name].metadata == expected[name].metadata
    rays = _random_rays(700, seed=0)
    assert expected["dirs"].chunks == (512, 3) and expected["dirs"].shards == (1024, 3)
    finish_ray_store(paths[1], [(1024, 700)], write_slot(1024, [(paths[1], rays)]))
    got = read_rays(paths[1])
    for name in RAY_COLUMNS:
        np.testing.assert_array_equal(getattr(got, name), getattr(rays, name))
    assert ray_store_info(paths[0]) is None and ray_store_info(paths[2]) is None  # untouched, unfinished


def _stored_files(path: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(path)
    return {posixpath.relpath(f, root): fs.cat_file(f) for f in fs.find(root)}


@pytest.mark.parametrize("where", ["file", "memory"])
def test_slot_shards_are_the_files_zarr_writes(tmp_path: Path, where: str) -> None:
    """write_slot encodes chunks and writes shards itself: a slot of 700 rays (a shard of 4 chunks, 2 of them
    written, the second partial) gives the very files Zarr's own write of the same rows gives, on disk and in an
    fsspec memory store; a slot off a shard boundary or past the store's end is refused and writes nothing."""
    base = str(tmp_path) if where == "file" else f"memory://slot-{tmp_path.name}"
    ours, zarrs = f"{base}/ours.zarr", f"{base}/zarrs.zarr"
    create_ray_stores([ours, zarrs], 2 * 2048, 512, 2048)
    rays = _random_rays(700, seed=2)
    write_slot(2048, [(ours, rays)])
    root = zarr.open_group(zarrs, mode="r+")
    for name in RAY_COLUMNS:
        root[name][2048:2748] = getattr(rays, name)
    files = _stored_files(ours)
    assert len(files) == 1 + len(RAY_COLUMNS) * 2  # the group, then each column's metadata and one shard
    assert files == _stored_files(zarrs)
    with pytest.raises(ValueError, match="ours.zarr: cannot write .* shard boundary"):
        write_slot(512, [(ours, rays)])
    with pytest.raises(ValueError, match="within the store"):
        write_slot(4096, [(ours, rays)])
    assert _stored_files(ours) == files


def test_a_store_with_a_directory_per_shard_takes_slots(tmp_path: Path) -> None:
    """A store keyed c/<row shard>/0 (Zarr's default keys; earlier versions wrote those) takes slots that read
    back."""
    path = str(tmp_path / "older.zarr")
    root = zarr.open_group(path, mode="w", attributes={"schema_version": blocks.SCHEMA_VERSION, "complete": False})
    for name, (shape, dtype) in RAY_COLUMNS.items():
        blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=dtype.itemsize)
        root.create_array(
            name,
            shape=(1024, *shape),
            dtype=dtype,
            chunks=(128, *shape),
            shards=(256, *shape),
            compressors=blosc,
            fill_value=0,
        )
    rays = _random_rays(300, seed=5)
    finish_ray_store(path, [(512, 300)], write_slot(512, [(path, rays)]))
    assert (tmp_path / "older.zarr" / "dirs" / "c" / "2" / "0").is_file()
    got = read_rays(path)
    for name in RAY_COLUMNS:
        np.testing.assert_array_equal(getattr(got, name), getattr(rays, name))


@pytest.mark.parametrize("sharded", [True, False])
def test_a_slot_is_not_written_into_a_store_of_other_codecs(tmp_path: Path, sharded: bool) -> None:
    """write_slot encodes chunks itself, so a store whose columns Zarr would encode otherwise (its default codecs;
    or the ray codecs without shards, as schema 2 stored them) is refused, naming the column, with nothing
    written."""
    path = str(tmp_path / "other.zarr")
    root = zarr.open_group(path, mode="w")
    for name, (shape, dtype) in RAY_COLUMNS.items():
        if sharded:
            root.create_array(name, shape=(1024, *shape), dtype=dtype, chunks=(512, *shape), shards=(1024, *shape))
        else:
            blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=dtype.itemsize)
            root.create_array(name, shape=(1024, *shape), dtype=dtype, chunks=(512, *shape), compressors=blosc)
    before = _stored_files(path)
    with pytest.raises(ValueError, match="other.zarr/origins.*not as bigscene stores arrays"):
        write_slot(0, [(path, _random_rays(10, seed=4))])
    assert _stored_files(path) == before


def test_writes_checksum_their_chunks_as_ray_checksum_does(tmp_path: Path) -> None:
    """A slot write's checksums (combined from the CRC32Cs its threads take of each chunk) and RayStoreWriter's are
    RayChecksum's over the same rays, whatever the chunks, however many stores a write has (an exact number of
    chunks, none) and however the rays are fed; a changed byte changes them."""
    rays = _random_rays(2 * blocks.WRITER_SHARD_CHUNKS * 256 + 77, seed=11)  # RayStoreWriter flushes 3 times
    digests = {}
    for n in (len(rays), 1300, 1024, 0):
        digest = RayChecksum()
        for lo, hi in [(0, 100), (100, 612), (612, 613), (613, n)]:  # pieces across chunk boundaries
            digest.update(rays.take(slice(min(lo, n), min(hi, n))))
        digests[n] = digest.hexdigest()
    for chunk in (256, 128, 2048):
        stores = [(str(tmp_path / f"slot{chunk}_{n}.zarr"), rays.take(slice(0, n))) for n in (1300, 1024, 0)]
        for path, _ in stores:
            create_ray_store(path, 2048, chunk, 2048)
        assert write_slot(0, stores) == [digests[1300], digests[1024], digests[0]], chunk
    assert write_slot(0, []) == []  # a range of blocks without rays
    writer = RayStoreWriter(str(tmp_path / "streamed.zarr"), len(rays), 256)
    for lo, hi in [(0, 700), (700, 5000), (5000, len(rays))]:
        writer.append(rays.take(slice(lo, hi)))
    assert writer.close() == store_checksum([digests[len(rays)]])
    changed = rays.take(np.arange(1300))  # a copy
    changed.rgb[5, 0] ^= 1
    path = str(tmp_path / "changed.zarr")
    create_ray_store(path, 2048, 256, 2048)
    assert write_slot(0, [(path, changed)]) != [digests[1300]]


def test_a_store_whose_columns_are_chunked_unlike_is_refused(tmp_path: Path) -> None:
    """A write job covers a chunk of every column: a store whose columns differ in chunks or shards is refused."""
    path = str(tmp_path / "unlike.zarr")
    create_ray_store(path, 2048, 256, 1024)
    document = tmp_path / "unlike.zarr" / "rgb" / "zarr.json"
    metadata = json.loads(document.read_text())
    metadata["chunk_grid"]["configuration"]["chunk_shape"][0] = 2048  # rgb's shard: 2048 rows, others 1024
    document.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="unlike.zarr: its columns are not chunked alike"):
        write_slot(0, [(path, _random_rays(10, seed=4))])


def test_crc32c_combine_gives_the_crc32c_of_the_concatenation() -> None:
    rng = np.random.default_rng(12)
    for first, second in [(0, 0), (5, 0), (0, 7), (1, 1), (1000, 65536 * 12), (333, 4097), (65536 * 3, 12345)]:
        a, b = rng.bytes(first), rng.bytes(second)
        combined = crc32c_combine(google_crc32c.value(a), google_crc32c.value(b), len(b))
        assert combined == google_crc32c.value(a + b), (first, second)


def test_an_abandoned_slot_write_is_over_and_a_rewrite_reads_back(tmp_path: Path) -> None:
    """A failed task abandons its writes under way: when abandon() returns, no chunk of it is still being written
    (none can land after the retry's), and the retry's rewrite of the slot reads back exactly."""
    path = str(tmp_path / "rays.zarr")
    create_ray_store(path, 64 * 256, 256, 64 * 256)
    write = start_slot(0, [(path, _random_rays(64 * 256, seed=3))])
    write.abandon()
    assert len(write.chunks) == 64  # a job per chunk, every column
    assert all(chunk.done() for chunk in write.chunks)
    rays = _random_rays(64 * 256, seed=8)  # the retry's rays differ: a late write of the first would show
    finish_ray_store(path, [(0, len(rays))], write_slot(0, [(path, rays)]))
    got = read_rays(path)
    for name in RAY_COLUMNS:
        np.testing.assert_array_equal(getattr(got, name), getattr(rays, name))


@pytest.mark.parametrize("where", ["file", "memory"])
def test_chunk_reader_reads_what_zarr_reads(tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk reader (training's, and `RayStore.read`'s) reads shards itself: every written chunk's rows, in
    slots partly filled, in an edge shard (the store ends inside it), in part of a chunk and across segments, are
    what Zarr reads, on disk and in an fsspec memory store, with its index cache evicting; rows outside one chunk
    are refused; a chunk a shard leaves out is the fill value, as in Zarr; a slot never written and a shard whose
    index is damaged are errors naming the file, not zeros."""
    monkeypatch.setattr(blocks, "READER_INDEXES", 2)
    base = str(tmp_path) if where == "file" else f"memory://reader-{tmp_path.name}"
    path = f"{base}/rays.zarr"
    create_ray_store(path, 2 * 2048 + 900, 512, 2048)
    first, last = _random_rays(1300, seed=6), _random_rays(900, seed=7)
    finish_ray_store(path, [(0, 1300), (4096, 900)], write_slot(0, [(path, first)]) + write_slot(4096, [(path, last)]))
    store = open_ray_store(path)
    arrays = store.columns()
    ranges = [(0, 512), (512, 1024), (1024, 1300), (4096, 4608), (4608, 4996), (4196, 4396)]
    reader = store.chunk_reader(["dirs", "image_id", "near_far"])
    for start, stop in ranges + ranges[::-1]:
        rows = reader.rows(start, stop)
        assert sorted(rows) == ["dirs", "image_id", "near_far"]
        for name, values in rows.items():
            np.testing.assert_array_equal(values, arrays[name][start:stop], err_msg=f"{name} [{start}, {stop})")
    for start, stop, rows in [(0, None, [(0, 1300), (4096, 4996)]), (1000, 1500, [(1000, 1300), (4096, 4296)])]:
        got = store.read(start, stop)  # logical rays, chunk by chunk across the gap between segments
        for name in RAY_COLUMNS:
            expected = np.concatenate([arrays[name][a:b] for a, b in rows])
            np.testing.assert_array_equal(getattr(got, name), expected, err_msg=f"{name} [{start}, {stop})")
    for start, stop in [(500, 600), (-5, 0), (4996, 5000)]:
        with pytest.raises(ValueError, match="not within one chunk"):
            reader.rows(start, stop)
    with pytest.raises(InputError, match=r"c\.1\.0.*shard file missing"):
        reader.rows(2048, 2560)  # slot 1: never written
    past = reader.rows(1536, 2048)  # past slot 0's rays: a chunk the shard leaves out, the fill value as in Zarr
    assert not past["dirs"].any() and np.array_equal(past["dirs"], arrays["dirs"][1536:2048])
    fs, root = fsspec.core.url_to_fs(path)
    shard = posixpath.join(root, "dirs", "c.2.0")
    damaged = bytearray(fs.cat_file(shard))
    damaged[-10] ^= 0xFF  # in the index's last entry
    fs.pipe_file(shard, bytes(damaged))
    with pytest.raises(InputError, match=r"c\.2\.0.*index is truncated or corrupt"):
        store.chunk_reader(["dirs"]).rows(4096, 4608)


def test_a_failed_slot_write_reports_once_its_other_chunks_are_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one chunk of a write fails, `result()` raises its error only after every other chunk has been
    cancelled or has finished: nothing of the failed write is still being written when the caller hears of it."""
    path = str(tmp_path / "rays.zarr")
    create_ray_store(path, 64 * 256, 256, 64 * 256)
    put = blocks._Shard.put

    def failing_put(self: blocks._Shard, i: int, rows: np.ndarray) -> None:
        if self.column.name == "origins" and i == 0:
            raise OSError("disk full, as a test")
        time.sleep(0.002)
        put(self, i, rows)

    monkeypatch.setattr(blocks._Shard, "put", failing_put)
    write = start_slot(0, [(path, _random_rays(64 * 256, seed=9))])
    with pytest.raises(OSError, match="disk full"):
        write.result()
    assert all(chunk.done() for chunk in write.chunks)


def test_ray_stores_are_compressed(tmp_path: Path) -> None:
    """A camera's rays (one origin, smoothly varying directions, a few colours) take well under half their raw bytes
    on disk, and read back exactly."""
    n = 3 * 4096
    xs, ys = np.meshgrid(np.arange(128), np.arange(n // 128))
    dirs = np.stack([xs.ravel() - 64.0, ys.ravel() - 48.0, np.full(n, 100.0)], axis=1)
    rays = Rays(
        np.tile([1.0, 2.0, 30.0], (n, 1)),
        dirs / np.linalg.norm(dirs, axis=1, keepdims=True),
        np.stack([xs.ravel() % 256, ys.ravel() % 256, np.zeros(n)], axis=1),
        np.tile([0.5, 40.0], (n, 1)),
        np.full(n, 7),
        np.stack([xs.ravel(), ys.ravel()], axis=1),
    )
    path = tmp_path / "rays.zarr"
    create_ray_store(str(path), n, 4096, n)
    finish_ray_store(str(path), [(0, n)], write_slot(0, [(str(path), rays)]))
    raw = sum(getattr(rays, name).nbytes for name in RAY_COLUMNS)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")  # chunks
    assert 0 < stored < raw / 2
    got = read_rays(str(path))
    for name in RAY_COLUMNS:
        np.testing.assert_array_equal(getattr(got, name), getattr(rays, name))


@pytest.mark.parametrize("where", ["file", "memory"])
def test_voxel_stores_written_together_read_back(tmp_path: Path, where: str) -> None:
    """Stores of no voxels, a few, and more than a chunk read back through Zarr, each replacing what was at its
    path; their shards are the files Zarr's own write gives."""
    base = str(tmp_path) if where == "file" else f"memory://voxels-{tmp_path.name}"
    rng = np.random.default_rng(1)
    coords = [rng.integers(-5, 50, (n, 3)).astype(np.int32) for n in (300, 0, blocks.VOXEL_CHUNK + 5)]
    paths = [f"{base}/b{i}/voxels.zarr" for i in range(3)]
    zarr.open_group(paths[0], mode="w").create_array("junk", shape=(3,), dtype="i4")
    write_voxel_stores(list(zip(paths, coords, strict=True)), np.array([1.0, 2.0, 3.0]), 0.5, 1, 3)
    for path, expected in zip(paths, coords, strict=True):
        voxels = read_voxels(path)
        np.testing.assert_array_equal(voxels.coords, expected)
        np.testing.assert_array_equal(voxels.origin, [1.0, 2.0, 3.0])
        root = zarr.open_group(path, mode="r")
        assert list(root.array_keys()) == ["coords"]
        attrs = root.attrs.asdict()
        assert attrs["complete"] and attrs["voxel_size"] == 0.5 and attrs["min_track_length"] == 3
    shards = {k: v for k, v in _stored_files(paths[2]).items() if posixpath.basename(k).startswith("c.")}
    assert len(shards) == 1
    reference = f"{base}/reference.zarr"
    array = zarr.open_group(reference, mode="w").create_array(
        "coords",
        shape=coords[2].shape,
        dtype=np.int32,
        chunks=(blocks.VOXEL_CHUNK, 3),
        shards=(2 * blocks.VOXEL_CHUNK, 3),
        compressors=zarr.open_group(paths[2], mode="r")["coords"].compressors,
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    array[:] = coords[2]
    assert shards == {k: v for k, v in _stored_files(reference).items() if posixpath.basename(k).startswith("c.")}


def test_finishing_checks_segments_and_marks_each_store_complete(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"b{i}" / "rays.zarr") for i in range(3)]
    create_ray_stores(paths, 4 * 512, 256, 512)
    with pytest.raises(ValueError, match="b0.*shard boundaries"):
        finish_ray_stores([(paths[0], [(0, 10), (768, 5)], ["a", "b"])])  # 768 is inside a shard
    assert ray_store_info(paths[0]) is None  # left unfinished
    infos = finish_ray_stores([(paths[1], [(0, 10), (1024, 5)], ["a", "b"]), (paths[2], [(512, 3)], ["c"])])
    assert [info["count"] for info in infos] == [15, 3]
    assert [ray_store_info(p) for p in paths[1:]] == infos

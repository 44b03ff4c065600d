"""Training's parts on their own: the streaming ray loader (real Zarr, real worker processes), schedules, the
adaptive batch, losses, image metrics and exported-model loading errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from bigscene.config import load_config
from bigscene.errors import ConfigError, InputError, WorkspaceError
from bigscene.fields import BackgroundField
from bigscene.render import Rays as RenderRays
from bigscene.store.blocks import (
    RAY_COLUMNS,
    Rays,
    RayStoreWriter,
    create_ray_store,
    finish_ray_store,
    open_ray_store,
    read_rays,
    slot_rows,
    write_slot,
)
from bigscene.train.data import RayStream, ShuffleBuffer
from bigscene.train.export import load_block, read_checkpoint
from bigscene.train.loggers import check_tracker
from bigscene.train.losses import manhattan_loss, rgb_loss, sky_loss
from bigscene.train.metrics import masked_ssim, psnr, ssim_map
from bigscene.train.optim import MIN_RAYS, BatchSizer, RayBudget, cos_anneal_ratio, lr_factor

COUNT, CHUNK = 5000, 512
#: Rays per batch slot of the segmented store (one empty); slots hold 3 chunks each.
SEGMENTS = (700, 0, 1300, 2 * CHUNK + 5)


def index_rays(count: int, seed: int = 0) -> Rays:
    """Rays whose origins encode their index (x = index)."""
    rng = np.random.default_rng(seed)
    index = np.arange(count)
    return Rays(
        origins=np.stack([index, index * 2, -index], axis=1).astype(np.float32),
        dirs=np.tile([0.0, 0.0, -1.0], (count, 1)),
        rgb=rng.integers(0, 256, (count, 3)),
        near_far=np.tile([1.0, 2.0], (count, 1)),
        image_id=index % 7,
        pixel=np.zeros((count, 2)),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Rays]:
    """A real one-segment block ray store whose origins encode each ray's index."""
    rays = index_rays(COUNT)
    path = str(tmp_path_factory.mktemp("store") / "rays.zarr")
    writer = RayStoreWriter(path, COUNT, CHUNK)
    writer.append(rays)
    writer.close()
    return path, rays


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Rays]:
    """A store as partitioning writes it: a slot (a shard) of whole chunks per batch, each filled from its start with
    SEGMENTS[b] rays and garbage after them; its logical rays are the returned ones (x = logical index)."""
    rays = index_rays(sum(SEGMENTS), seed=1)
    rows = slot_rows([2 * CHUNK + 100] * len(SEGMENTS), CHUNK)
    starts = [b * rows for b in range(len(SEGMENTS) + 1)]
    path = str(tmp_path_factory.mktemp("segmented") / "rays.zarr")
    create_ray_store(path, starts[-1], CHUNK, rows)
    segments, checksums, logical = [], [], 0
    garbage = index_rays(rows, seed=2)
    garbage.origins += 10**6
    columns = zarr.open_group(path, mode="r+")
    for start, stop, n in zip(starts, starts[1:], SEGMENTS, strict=False):
        if n:
            checksums += write_slot(start, [(path, rays.take(slice(logical, logical + n)))])
            segments.append((start, n))
            logical += n
        for name in RAY_COLUMNS:
            columns[name][start + n : stop] = getattr(garbage, name)[n : stop - start]  # as a killed attempt may leave
    finish_ray_store(path, segments, checksums)
    return path, rays


def first_pass(stream: RayStream, num_workers: int, batches: int) -> list[dict[str, torch.Tensor]]:
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == batches:
            return out
    raise AssertionError("the stream ended")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_batches_are_store_rays_shuffled_across_chunks(store: tuple[str, Rays], num_workers: int) -> None:
    path, rays = store
    budget = RayBudget(100)
    stream = RayStream(path, budget, max_rays=200, buffer_rays=1024, seed=3)
    batches = first_pass(stream, num_workers, 60)
    ids = torch.cat([b["ray_id"] for b in batches]).numpy()
    for batch in batches[:5]:
        row = batch["ray_id"].numpy()
        assert len(row) == 100
        np.testing.assert_array_equal(batch["origins"].numpy(), rays.origins[row])  # columns stay aligned
        np.testing.assert_array_equal(batch["rgb"].numpy(), rays.rgb[row])
        assert batch["image_id"].dtype == torch.int64
        assert len(np.unique(row // CHUNK)) >= 2  # a batch mixes chunks: the buffer shuffles across them
    # 6,000 rays drawn from 5,000: every ray was seen (each worker owns a disjoint share of the chunks)
    assert len(np.unique(ids)) > 0.9 * COUNT
    assert np.bincount(ids, minlength=COUNT).max() <= 4


def test_stream_follows_the_shared_batch_size_and_shards_over_ranks(store: tuple[str, Rays]) -> None:
    path, _ = store
    budget = RayBudget(64)
    stream = RayStream(path, budget, max_rays=256, buffer_rays=1024, seed=0)
    iterator = iter(stream)
    assert len(next(iterator)["ray_id"]) == 64
    budget.rays = 256
    assert len(next(iterator)["ray_id"]) == 256
    seen = []
    for rank in range(2):
        ranked = RayStream(path, RayBudget(100), max_rays=100, buffer_rays=512, seed=0)
        ranked.set_rank(rank, 2)
        it = iter(ranked)
        seen.append({int(c) for _ in range(20) for c in next(it)["ray_id"].numpy() // CHUNK})
    assert not seen[0] & seen[1]  # DDP ranks read disjoint chunks
    assert seen[0] | seen[1] == set(range(math.ceil(COUNT / CHUNK)))


def test_segmented_store_reads_logical_rays(segmented: tuple[str, Rays]) -> None:
    path, rays = segmented
    store = open_ray_store(path)
    slot = 3 * CHUNK
    assert store.count == len(rays) and store.segments == ((0, 700), (2 * slot, 1300), (3 * slot, 2 * CHUNK + 5))
    whole = read_rays(path)
    for name in RAY_COLUMNS:
        np.testing.assert_array_equal(getattr(whole, name), getattr(rays, name))
    np.testing.assert_array_equal(read_rays(path, 650, 2100).origins, rays.origins[650:2100])  # across segments
    np.testing.assert_array_equal(read_rays(path, -5).origins, rays.origins[-5:])
    assert len(read_rays(path, 2000, 10**6)) == len(rays) - 2000 and len(read_rays(path, 5, 5)) == 0
    pieces = store.pieces()  # (start row, stop row, logical start)
    assert np.all(pieces[:, 0] // CHUNK == (pieces[:, 1] - 1) // CHUNK)  # each piece in one chunk
    logical = np.concatenate([np.arange(first, first + stop - start) for start, stop, first in pieces])
    np.testing.assert_array_equal(logical, np.arange(store.count))  # every ray once, in logical order
    origins = store.columns(["origins"])["origins"]
    for start, stop, first in pieces:
        np.testing.assert_array_equal(origins[start:stop], rays.origins[first : first + stop - start])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_of_a_segmented_store_yields_logical_ray_ids_once_a_pass(
    segmented: tuple[str, Rays], num_workers: int
) -> None:
    path, rays = segmented
    count = len(rays)
    capacity = 512 + CHUNK  # the stream's buffer: buffer_rays plus a chunk
    stream = RayStream(path, RayBudget(100), max_rays=100, buffer_rays=512, seed=1)
    batches = first_pass(stream, num_workers, -(-(4 * count + capacity) // 100))  # four passes and a buffer
    for batch in batches:
        row = batch["ray_id"].numpy()
        np.testing.assert_array_equal(batch["origins"].numpy(), rays.origins[row])  # ray_id is the logical index
        np.testing.assert_array_equal(batch["rgb"].numpy(), rays.rgb[row])
    ids = torch.cat([b["ray_id"] for b in batches]).numpy()
    seen = np.bincount(ids, minlength=count)
    assert len(seen) == count and seen.min() >= 2 and seen.max() <= 8  # no garbage row, none left out
    if num_workers == 0:  # one reader: nothing repeats within its first pass, then each ray once a pass
        first = ids[: count - capacity]
        assert len(np.unique(first)) == len(first)
        assert seen.min() >= 3 and seen.max() <= 5  # 4 or 5 passes read, at most one not yet drawn


def test_shuffle_buffer_pops_what_was_added() -> None:
    template = {"ray_id": np.zeros(0, np.int64), "x": np.zeros((0, 2), np.float32)}
    buffer = ShuffleBuffer(10, template)
    buffer.add({"ray_id": np.arange(6), "x": np.arange(12, dtype=np.float32).reshape(6, 2)})
    buffer.shuffle(np.random.default_rng(0))
    out = buffer.pop(4)
    assert buffer.size == 2 and buffer.capacity == 10
    np.testing.assert_array_equal(out["x"][:, 0], out["ray_id"] * 2)


def test_learning_rate_warms_up_then_decays_to_the_final_ratio() -> None:
    factors = [lr_factor(s, 10, 100, 0.05) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert lr_factor(100, 10, 100, 0.05) == pytest.approx(0.05)
    assert cos_anneal_ratio(0, 50) == 0.0 and cos_anneal_ratio(25, 50) == 0.5 and cos_anneal_ratio(99, 50) == 1.0
    assert cos_anneal_ratio(0, 0) == 1.0


def test_batch_sizer_tracks_samples_per_step() -> None:
    budget = RayBudget(1000)
    sizer = BatchSizer(budget, target_samples=8000, max_rays=4000)
    for _ in range(60):
        rays = budget.rays
        sizer.update(rays, rays * 16)  # 16 samples a ray
    assert budget.rays == pytest.approx(500, rel=0.02)
    sizer.update(budget.rays, budget.rays * 1)
    for _ in range(60):
        sizer.update(budget.rays, budget.rays * 1)
    assert budget.rays == 4000  # clamped at max_rays
    for _ in range(100):
        sizer.update(budget.rays, budget.rays * 10**6)
    assert budget.rays == MIN_RAYS
    fixed = BatchSizer(RayBudget(300), target_samples=0, max_rays=4000)
    assert fixed.update(300, 10**6) == 300


def test_manhattan_prior_is_zero_on_aligned_normals_and_learns_the_axis() -> None:
    up = torch.tensor([[0.0, 0.0, 1.0]])
    facades = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    opacity = torch.ones(3)
    assert float(manhattan_loss(torch.cat([up, facades]), opacity, torch.tensor(0.0))) == pytest.approx(0.0, abs=1e-6)
    turn = math.radians(30)
    rotated = torch.tensor([[math.cos(turn), math.sin(turn), 0.0], [-math.sin(turn), math.cos(turn), 0.0]])
    angle = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam([angle], lr=0.05)
    first = float(manhattan_loss(rotated, opacity[:2], angle).detach())
    for _ in range(100):
        optimiser.zero_grad()
        manhattan_loss(rotated, opacity[:2], angle).backward()
        optimiser.step()
    assert first > 0.1 and float(manhattan_loss(rotated, opacity[:2], angle).detach()) < 0.01
    transparent = manhattan_loss(rotated, torch.zeros(2), angle)
    assert float(transparent.detach()) == 0.0 and transparent.requires_grad  # still joins the graph (DDP)


def test_colour_losses_and_image_metrics() -> None:
    a, b = torch.zeros(4, 3), torch.full((4, 3), 0.5)
    assert float(rgb_loss(a, b)) == pytest.approx(0.5)
    assert float(rgb_loss(a, b, "huber", 0.1)) == pytest.approx(0.1 * (0.5 - 0.05))
    assert float(psnr(a, torch.full((4, 3), 0.1))) == pytest.approx(20.0, rel=1e-5)
    image = torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(0))
    assert float(ssim_map(image, image).mean()) == pytest.approx(1.0, abs=1e-5)
    mask = torch.zeros(24, 32, dtype=torch.bool)
    mask[:, :16] = True
    noisy = image.clone()
    noisy[:, 16:] = 0.0  # outside the mask: ignored
    assert float(masked_ssim(noisy, image, mask)) == pytest.approx(1.0, abs=1e-5)
    assert float(masked_ssim(image * 0.5, image, mask)) < 0.95


def test_config_and_tracker_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.engine"):
        load_config(None, ["train.engine=slurm"])
    with pytest.raises(ConfigError, match="max_rays_per_batch"):
        load_config(None, ["train.rays_per_batch=9000", "train.max_rays_per_batch=8000"])
    if not any(__import__("importlib").util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        with pytest.raises(ConfigError, match="tensorboard.*not installed.*logging.tracker=csv"):
            check_tracker(load_config(None, ["logging.tracker=tensorboard"]).logging)
    with pytest.raises(WorkspaceError, match="no such file"):
        load_block(str(tmp_path / "model.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable model file"):
        load_block(str(junk))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a bigscene block model"):
        load_block(str(tmp_path / "other.pt"))
    with pytest.raises(InputError, match="corrupt checkpoint"):
        read_checkpoint(str(junk), "b000", "f")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(WorkspaceError, match="not a bigscene block checkpoint"):
        read_checkpoint(str(tmp_path / "plain.ckpt"), "b000", "f")


def test_sky_loss_clears_the_background_along_sky_rays() -> None:
    torch.manual_seed(0)
    config = load_config(None, ["model.background_hidden_dim=16", "model.background_freqs=4", "model.appearance_dim=0"])
    background = BackgroundField(config.model, torch.zeros(3), 1.0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    rays = RenderRays(torch.zeros(64, 3), dirs, torch.full((64,), 2.0), torch.full((64,), 2.0))
    optimiser = torch.optim.Adam(background.parameters(), lr=1e-2)
    first = float(sky_loss(background, rays, None, 16).detach())
    for _ in range(30):
        optimiser.zero_grad()
        sky_loss(background, rays, None, 16).backward()
        optimiser.step()
    assert first > 0.01 and float(sky_loss(background, rays, None, 16).detach()) < 0.5 * first

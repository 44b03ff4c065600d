"""Training the tiny synthetic city's 2x2 blocks end to end: real Ray, real Zarr, W&B offline, real Lightning.

One workspace is generated and partitioned per module; tests that change it work on copies.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from bigscene.config import Config, load_config
from bigscene.errors import ConfigError, WorkspaceError
from bigscene.render import SparseVoxels
from bigscene.store import read_scene
from bigscene.store.blocks import RayStoreWriter, rays_path, read_voxels
from bigscene.synth import generate, make_config
from bigscene.train import BlockModel, load_block, model_from_checkpoint, read_checkpoint, run_train
from bigscene.train.blocks import block_fingerprint, read_block
from bigscene.train.views import make_view, select_views
from partitioning import run_partition

#: Bundled config with the toy model and sampler every CPU check trains.
TOY_CONFIG = "cpu_toy"
BLOCKS = ["b000", "b001", "b002", "b003"]
STEPS = 100
SYNTH = {"gt_mesh": False, "width": 48, "height": 36, "ambient_occlusion": False}
PARTITION = ["partition.engine=inline", "partition.chunk_rays=2048", "partition.voxel_size=1.0"]
#: A small model and sampler: a few hundred CPU steps take seconds per block.
SMALL = [
    f"train.steps={STEPS}",
    "train.rays_per_batch=256",
    "train.target_samples=4096",
    "train.max_rays_per_batch=1024",
    "train.ckpt_every=40",
    "train.val_every=40",
    "train.val_views=1",
    "train.warmup_steps=20",
    "train.voxel_update_every=40",
    "train.shuffle_buffer=8192",
    "train.log_every=10",
    "train.num_workers=0",
    "train.engine=inline",
    "logging.tracker=csv",
]


def train_config(*overrides: str) -> Config:
    return load_config(TOY_CONFIG, [*PARTITION, *SMALL, *overrides])


def cli(ws: Path, *overrides: str) -> list[str]:
    """`python -m bigscene.train` on one block with the small config (overrides win)."""
    return [
        sys.executable,
        "-m",
        "bigscene.train",
        "-w",
        str(ws),
        "--blocks",
        "b000",
        "-c",
        TOY_CONFIG,
        *PARTITION,
        *SMALL,
        *overrides,
    ]


def copy_ws(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest


def status(ws: Path, block: str) -> dict:
    try:
        return json.loads((ws / "blocks" / block / "train_status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def ckpt_step(ws: Path, block: str) -> int:
    return int(torch.load(ws / "blocks" / block / "ckpt" / "last.ckpt", weights_only=False)["global_step"])


def wandb_history(run_file: str) -> list[dict[str, float]]:
    """History rows of an offline W&B run file (a LevelDB-style log of wandb Record protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, position, pending, rows = Path(run_file).read_bytes(), 7, b"", []
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                rows.append({k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
    return rows


def when(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("city")
    generate(make_config("tiny", SYNTH), ws)
    run_partition(str(ws), load_config(None, PARTITION))
    return ws


class Killer(threading.Thread):
    """SIGKILLs the process training `block` as soon as it has written its first checkpoint."""

    def __init__(self, ws: Path, block: str) -> None:
        super().__init__(daemon=True)
        self.ws, self.block = ws, block
        self.killed = False

    def run(self) -> None:
        deadline = time.monotonic() + 240
        ckpt = self.ws / "blocks" / self.block / "ckpt" / "last.ckpt"
        while time.monotonic() < deadline:
            doc = status(self.ws, self.block)
            if doc.get("state") == "training" and ckpt.exists():
                os.kill(doc["pid"], signal.SIGKILL)
                self.killed = True
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def trained(city: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Killer]:
    """All four blocks trained on a local Ray instance (2 CPUs, a block per CPU) with W&B offline; b001's
    worker is SIGKILLed mid-way and Ray retries it."""
    ws = copy_ws(city, tmp_path_factory.mktemp("ray"))
    config = train_config("train.engine=ray", "train.num_cpus=2", "logging.tracker=wandb", "train.num_workers=1")
    killer = Killer(ws, "b001")
    killer.start()
    summary = run_train(str(ws), config)
    killer.join(timeout=1)
    return ws, summary, killer


def test_every_block_lowers_its_loss_and_lifts_validation_psnr(trained: tuple[Path, dict, Killer]) -> None:
    ws, summary, _ = trained
    assert summary["done"] == BLOCKS and not summary["failed"]
    assert json.loads((ws / "train.json").read_text())["psnr"] == summary["psnr"]
    for block in BLOCKS:
        record = summary["records"][block]
        assert record["steps"] == STEPS
        assert record["psnr"] > record["psnr_start"] + 1.0, record
        assert record["samples_per_second"] > 0
        if block == "b001":  # killed: W&B's offline writer loses what it had not flushed
            continue
        losses = [row["train/loss"] for run in runs_of(ws, block) for row in wandb_history(run) if "train/loss" in row]
        assert len(losses) >= 8 and np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
        assert list((ws / "blocks" / block / "val").glob("*.png"))


def runs_of(ws: Path, block: str) -> list[str]:
    group = ws.name
    return sorted(glob.glob(str(ws / "logs" / "wandb" / f"offline-run-*-{group}-{block}-*" / "run-*.wandb")))


def test_killed_worker_is_retried_by_ray_from_its_checkpoint(trained: tuple[Path, dict, Killer]) -> None:
    ws, summary, killer = trained
    assert killer.killed
    record = summary["records"]["b001"]
    assert record["attempt"] == 2
    assert 40 <= record["resumed_from"] < STEPS  # from its last checkpoint, not from step 0
    assert record["steps"] == STEPS and ckpt_step(ws, "b001") == STEPS


def test_wandb_offline_runs_hold_the_logged_metrics(trained: tuple[Path, dict, Killer]) -> None:
    ws, _, _ = trained
    for block in BLOCKS:
        runs = runs_of(ws, block)
        assert runs, f"no offline W&B run for {block}"
        keys = {key for run in runs for row in wandb_history(run) for key in row}
        assert {"train/loss", "train/psnr", "val/psnr", "val/ssim", "perf/samples_per_second"} <= keys
    assert len(runs_of(ws, "b001")) == 2  # the retried attempt resumed the same run id


def test_exported_block_renders_like_its_checkpoint(trained: tuple[Path, dict, Killer]) -> None:
    ws, _, _ = trained
    config = train_config()
    spec = read_block(str(ws), "b002")
    exported = load_block(spec.model_path)
    assert exported.block_id == "b002" and exported.steps == STEPS
    scene = read_scene(ws)
    stored = read_voxels(spec.voxels)
    fresh = BlockModel(
        config.model,
        config.sampler,
        spec.inner,
        spec.outer,
        len(scene.images),
        SparseVoxels(torch.from_numpy(stored.origin).float(), stored.voxel_size, torch.from_numpy(stored.coords)),
    )
    checkpoint = read_checkpoint(spec.last_ckpt, "b002", block_fingerprint(spec, config))
    from_ckpt = model_from_checkpoint(checkpoint, fresh).eval()
    assert len(from_ckpt.voxel_coords) == len(exported.model.voxel_coords) != len(stored.coords)  # updated voxels
    view = make_view(scene, select_views(scene, spec.outer, 1)[0], spec.outer)
    a, b = exported.model.render_image(view.rays()), from_ckpt.render_image(view.rays())
    torch.testing.assert_close(a["rgb"], b["rgb"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["depth"], b["depth"], rtol=0, atol=1e-5)


def test_rerunning_a_trained_workspace_is_a_no_op(trained: tuple[Path, dict, Killer]) -> None:
    ws, summary, _ = trained
    before = (ws / "blocks" / "b000" / "ckpt" / "last.ckpt").stat().st_mtime_ns
    again = run_train(str(ws), train_config("logging.tracker=wandb"))
    assert again["done"] == BLOCKS and again["psnr"] == summary["psnr"]
    assert (ws / "blocks" / "b000" / "ckpt" / "last.ckpt").stat().st_mtime_ns == before


def test_sigkill_then_rerun_continues_from_the_checkpoint(city: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = copy_ws(city, tmp_path_factory.mktemp("kill"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a long run (the re-run asks for fewer steps: the step count is not part of what a checkpoint must match)
    process = subprocess.Popen(cli(ws, "train.steps=100000"), env=env, stdout=subprocess.DEVNULL)
    ckpt = ws / "blocks" / "b000" / "ckpt" / "last.ckpt"
    try:
        when(ckpt.exists, 120, "the first checkpoint")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    kept = ckpt_step(ws, "b000")
    assert 40 <= kept < STEPS
    summary = run_train(str(ws), train_config(), blocks=["b000"])
    record = summary["records"]["b000"]
    assert record["resumed_from"] == kept and record["steps"] == STEPS
    newest = sorted((ws / "logs" / "csv" / "b000").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    with open(newest / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps and min(steps) >= kept  # the re-run logged from the checkpoint's step on, not from 0


def test_ddp_over_two_cpu_processes_trains_a_block(city: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = copy_ws(city, tmp_path_factory.mktemp("ddp"))
    overrides = ("train.devices=2", "train.accelerator=cpu", "train.steps=6", "train.val_every=3", "train.ckpt_every=3")
    result = subprocess.run(cli(ws, *overrides), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = status(ws, "b000")
    assert doc["state"] == "done" and doc["world_size"] == 2 and ckpt_step(ws, "b000") == 6
    assert json.loads((ws / "train.json").read_text())["done"] == ["b000"]
    assert load_block(str(ws / "blocks" / "b000" / "model.pt")).steps == 6


# bad input


def test_workspace_without_partition_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no partition output.*bigscene partition"):
        run_train(str(tmp_path), train_config())


def test_unknown_blocks_and_missing_trackers_are_config_errors(city: Path) -> None:
    with pytest.raises(ConfigError, match="no block b999.*b000, b001"):
        run_train(str(city), train_config(), blocks=["b999"])
    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        with pytest.raises(ConfigError, match="tensorboard.*not installed"):
            run_train(str(city), train_config("logging.tracker=tensorboard"))
    with pytest.raises(ConfigError, match="needs train.engine=ray"):
        run_train(str(city), train_config(), address="127.0.0.1:6379")


def test_block_without_rays_fails_alone(city: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = copy_ws(city, tmp_path_factory.mktemp("empty"))
    shutil.rmtree(rays_path(str(ws), "b002"))
    RayStoreWriter(rays_path(str(ws), "b002"), 0, 64).close()
    with pytest.raises(WorkspaceError, match="1 of 2 blocks failed.*b002.*no rays"):
        run_train(str(ws), train_config("train.steps=10"), blocks=["b002", "b003"])
    summary = json.loads((ws / "train.json").read_text())
    assert summary["done"] == ["b003"] and "no rays" in summary["failed"]["b002"]


def test_corrupt_and_foreign_checkpoints_are_refused(
    trained: tuple[Path, dict, Killer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = copy_ws(trained[0], tmp_path_factory.mktemp("ckpt"))
    (ws / "blocks" / "b000" / "ckpt" / "last.ckpt").write_bytes(b"\x00garbage")
    shutil.copy(ws / "blocks" / "b001" / "ckpt" / "last.ckpt", ws / "blocks" / "b002" / "ckpt" / "last.ckpt")
    with pytest.raises(WorkspaceError, match="2 of 3 blocks failed"):
        run_train(str(ws), train_config(f"train.steps={STEPS + 10}"), blocks=["b000", "b002", "b003"])
    summary = json.loads((ws / "train.json").read_text())
    assert "corrupt checkpoint" in summary["failed"]["b000"] and "delete it" in summary["failed"]["b000"]
    assert "a checkpoint of block b001, not b002" in summary["failed"]["b002"]
    assert summary["done"] == ["b003"] and summary["steps"]["b003"] == STEPS + 10
    other = train_config(f"train.steps={STEPS + 10}", "model.hidden_dim=16")
    with pytest.raises(WorkspaceError, match="another model/sampler config.*--overwrite"):
        run_train(str(ws), other, blocks=["b003"])


def test_nan_loss_stops_the_block_keeps_its_last_good_checkpoint_and_others_carry_on(
    city: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = copy_ws(city, tmp_path_factory.mktemp("nan"))
    base = ("sampler.kind=uniform", "sampler.num_samples=16", "train.ckpt_every=10", "train.val_views=0")
    run_train(str(ws), train_config(*base, "train.steps=20"), blocks=["b000", "b001"])
    origins = zarr.open_group(rays_path(str(ws), "b000"), mode="r+")["origins"]
    origins[:] = np.full(origins.shape, np.inf, np.float32)  # every ray now renders NaN
    with pytest.raises(WorkspaceError, match="b000: .*loss became nan at step 20.*last good checkpoint kept.*step 20"):
        run_train(str(ws), train_config(*base, "train.steps=40"), blocks=["b000", "b001"])
    summary = json.loads((ws / "train.json").read_text())
    assert summary["done"] == ["b001"] and summary["steps"] == {"b000": 20, "b001": 40}
    state = torch.load(ws / "blocks" / "b000" / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert status(ws, "b000")["state"] == "failed"


@pytest.mark.parametrize(
    "overrides, logged",
    [
        (
            ("train.sky_weight=0.1", "train.manhattan_weight=0.1", "train.rgb_loss=huber"),
            {"train/sky", "train/manhattan"},
        ),
        (("model.kind=nerf", "sampler.kind=importance", "sampler.num_samples=16", "sampler.num_importance=8"), set()),
    ],
    ids=["neus-optional-losses", "nerf"],
)
def test_optional_losses_and_nerf_blocks_train(
    city: Path, tmp_path_factory: pytest.TempPathFactory, overrides: tuple[str, ...], logged: set[str]
) -> None:
    ws = copy_ws(city, tmp_path_factory.mktemp("variants"))
    config = train_config(*overrides, "train.steps=12", "train.log_every=2", "train.val_every=6")
    record = run_train(str(ws), config, blocks=["b000"])["records"]["b000"]
    assert record["state"] == "done" and record["steps"] == 12 and np.isfinite(record["psnr"])
    with open(next((ws / "logs" / "csv" / "b000").glob("version_*")) / "metrics.csv") as f:
        columns = set(csv.DictReader(f).fieldnames or [])
    assert {"train/rgb", "val/psnr"} | logged <= columns
    assert load_block(str(ws / "blocks" / "b000" / "model.pt")).model.model_config.kind == config.model.kind
